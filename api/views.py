"""How aggregates look in responses."""

from __future__ import annotations

from typing import Any

from domain.application import Receipt
from domain.election import Election
from domain.rules import Eligibility


def election_view(election: Election) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(election.id),
        "title": election.title,
        "status": election.status.value,
        **election.rules.to_json(),
        "created_at": election.created_on.isoformat(),
        "version": election.version,
    }
    if election.rules.eligibility is Eligibility.TOKENS:
        view["tokens_issued"] = len(election.voter_keys)
    return view


def receipt_view(receipt: Receipt, election_id: str, status: str) -> dict[str, Any]:
    return {
        "ballot_id": str(receipt.id),
        "election_id": election_id,
        "status": status,
        "version": receipt.version,
        "position": receipt.position,
        "hash": receipt.digest,
        "replayed": receipt.replayed,
    }
