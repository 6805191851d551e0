"""A voter as the service knows them: two digests of their identity, and nothing else.

Both are keyed with the server secret by infra (``infra.runtime.voters``), so the domain sees only
opaque strings:

- ``credential`` is what an electorate lists. A token election's ``TokensIssued`` event
  records the credentials of the tokens it issued (sorted, so their order says nothing of
  the order the tokens were handed out in), and eligibility is checked against them.
- ``ballot_key`` names the voter's ballot: its id is ``uuid5(election_id, ballot_key)``.

Nothing that is written down or served leads from one to the other: without the secret,
no reader of the log (not the admin who handed out the tokens, not the auditor who reads
every entry) can tell which ballot a credential, a token or a voter id cast.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Voter:
    credential: str
    ballot_key: str
