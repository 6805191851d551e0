"""The bulk path: up to 1,000 ballots in one request, each recorded or refused on its own,
and `cardinal import` casting a file through it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from psycopg_pool import PoolTimeout

from api.problems import STORE_WAIT
from domain.ballot import ballot_id
from domain.rules import VoterIds
from infra.bench.stack import free_port
from infra.runtime.voters import VoterKeys
from infra.store import writer as writer_module
from infra.store.writer import GroupCommitWriter
from tests.integration.client import PROBLEM, VotingClient, assert_problem, bearer
from tests.servers import ADMIN, CLIENT, OPERATOR

BATCH = "/api/elections/{}/ballots/batch"


async def _batch(http: httpx.AsyncClient, election_id: str, ballots: list[Any]) -> Any:
    response = await http.post(
        BATCH.format(election_id), json={"ballots": ballots}, headers=bearer(CLIENT)
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


async def _counted(voting: VotingClient, election_id: str, position: int) -> Any:
    return (await voting.results(election_id, min_position=position)).json()


async def _votes(voting: VotingClient, election_id: str) -> dict[str, int]:
    """Each option's votes, once every ballot in the log is counted."""
    events = await voting.audit_events()
    body = await _counted(voting, election_id, max(e["position"] for e in events))
    return {o["id"]: o["votes"] for o in body["options"]}


async def test_a_batch_records_each_ballot_on_its_own(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("plurality", allow_revote=False)
    ballots: list[Any] = [{"voter_id": f"bulk-{n}", "choice": "abc"[n % 3]} for n in range(995)]
    ballots += [
        {"voter_id": "bulk-7", "choice": "b"},  # a second ballot, where revoting is off
        {"voter_id": "bulk-x", "choice": "zzz"},  # not an option
        {"choice": "a"},  # no voter
        {"voter_id": "bulk-y", "choice": 5},  # not even text
        {"voter_id": "bulk-z", "choice": "a", "extra": 1},  # a field no ballot has
    ]
    assert len(ballots) == 1000  # over 64 KiB: the bulk path alone takes a larger body
    results = await _batch(http, election_id, ballots)
    assert len(results) == 1000
    receipts = results[:995]
    assert all(r["status"] == "cast" and r["version"] == 1 for r in receipts)
    assert len({r["ballot_id"] for r in receipts}) == 995
    refused = results[995:]
    assert [r["status"] for r in refused] == [409, 422, 422, 422, 422]
    assert "already cast a ballot" in refused[0]["detail"]
    assert refused[1]["field"] == "ballots[996].choice"
    assert refused[2]["field"] == "ballots[997].voter_id"
    assert refused[3]["field"] == "ballots[998].choice"
    assert refused[4]["field"] == "ballots[999].extra"
    assert refused[4]["errors"][0]["field"] == "ballots[999].extra"  # nested, prefixed too
    body = await _counted(voting, election_id, max(r["position"] for r in receipts))
    assert body["ballots"] == 995
    assert {o["id"]: o["votes"] for o in body["options"]} == {"a": 332, "b": 332, "c": 331}


async def test_a_batch_sent_again_with_its_keys_records_nothing_twice(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("irv")
    ballots = [
        {"voter_id": f"again-{n}", "ranking": ["b", "a"], "idempotency_key": f"k-{n}"}
        for n in range(50)
    ]
    first = await _batch(http, election_id, ballots)
    events = len(await voting.audit_events())
    second = await _batch(http, election_id, ballots)
    assert [r["ballot_id"] for r in second] == [r["ballot_id"] for r in first]
    assert all(r["replayed"] for r in second)
    assert len(await voting.audit_events()) == events


async def test_an_idempotency_key_header_on_a_batch_is_refused_and_records_nothing(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """A client reusing its single-ballot retry code sent a batch twice with one
    Idempotency-Key header: it was ignored, and the second batch revised the first."""
    election_id = await voting.open_election("plurality")
    events = len(await voting.audit_events())
    for _ in range(2):
        response = await http.post(
            BATCH.format(election_id),
            json={"ballots": [{"voter_id": "hdr-1", "choice": "a"}]},
            headers={**bearer(CLIENT), "Idempotency-Key": "same-key"},
        )
        body = assert_problem(response, 422, "ballots[i].idempotency_key")
        assert body["field"] == "Idempotency-Key"
        assert "per ballot" in body["detail"]
    assert len(await voting.audit_events()) == events


async def test_a_voters_ballots_in_one_batch_count_in_order(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("plurality")
    ballots = [{"voter_id": "changes-mind", "choice": c} for c in "abcab"]
    results = await _batch(http, election_id, ballots)
    assert [r["version"] for r in results] == [1, 2, 3, 4, 5]
    body = await _counted(voting, election_id, results[-1]["position"])
    assert {o["id"]: o["votes"] for o in body["options"]} == {"a": 0, "b": 1, "c": 0}


@pytest.mark.parametrize(
    ("fault", "status", "detail"),
    [
        (PoolTimeout("couldn't get a connection after 5.00 sec"), 503, "retry shortly"),
        (RuntimeError("bug"), 500, "it was not recorded"),
    ],
)
async def test_a_fault_on_one_ballot_leaves_its_neighbours_recorded(
    voting: VotingClient,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    fault: Exception,
    status: int,
    detail: str,
) -> None:
    """A revision needs the voter's ballot read back; when that read fails (the pool of
    connections exhausted, or a bug), that ballot alone is refused: the first casts of
    the same request were recorded, and the answer says so, ballot by ballot."""
    election_id = await voting.open_election("plurality", allow_revote=True)
    assert (await _batch(http, election_id, [{"voter_id": "old", "choice": "a"}]))[0][
        "version"
    ] == 1

    async def failing(*_: object) -> None:
        raise fault

    monkeypatch.setattr(GroupCommitWriter, "load_ballot", failing)
    ballots = [{"voter_id": "new-1", "choice": "b"}, {"voter_id": "old", "choice": "c"}]
    new, old = await _batch(http, election_id, ballots)
    monkeypatch.undo()
    assert (new["status"], new["version"]) == ("cast", 1)
    assert old["status"] == status
    assert detail in old["detail"]
    counted = await _counted(voting, election_id, new["position"])
    assert counted["ballots"] == 2  # old's first ballot and new-1's
    assert counted["position"] >= new["position"]


async def test_the_bulk_path_is_for_clients_and_bounded(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id, (token,) = await voting.token_election(tokens=1)
    response = await http.post(
        BATCH.format(election_id), json={"ballots": [{"choice": "a"}]}, headers=bearer(token)
    )
    assert_problem(response, 403, "the bulk path is for API clients")
    open_id = await voting.open_election()
    too_many = [{"voter_id": f"v{n}", "choice": "a"} for n in range(1001)]
    response = await http.post(
        BATCH.format(open_id), json={"ballots": too_many}, headers=bearer(CLIENT)
    )
    assert_problem(response, 422, "ballots")
    response = await http.post(BATCH.format(open_id), json={"ballots": []}, headers=bearer(CLIENT))
    assert_problem(response, 422, "ballots")
    huge = await http.post(
        BATCH.format(open_id),
        content=b'{"ballots": [' + b" " * (5 * 1024 * 1024) + b"]}",
        headers={**bearer(CLIENT), "Content-Type": "application/json"},
    )
    assert huge.status_code == 413
    assert huge.headers["content-type"] == PROBLEM


async def test_a_bulk_body_of_more_values_than_a_batch_holds_is_refused_before_it_is_parsed(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """4 MiB of empty objects (and a lone surrogate, which sends the parse to its lenient
    Python fallback) was parsed and validated on the event loop before its list was found
    too long: 1.3 s to a 422, every other request of the process held meanwhile (the
    hostile review). Its commas are counted first: 413, before it is parsed."""
    open_id = await voting.open_election()
    for tail in (b'],"x":"\\ud800"}', b"]}"):
        response = await http.post(
            BATCH.format(open_id),
            content=b'{"ballots":[' + b",".join([b"{}"] * 1_398_000) + tail,
            headers={**bearer(CLIENT), "Content-Type": "application/json"},
        )
        assert_problem(response, 413, "commas, more than the 128,000")


CVR = """Precinct,Rank1,Rank2,Rank3
P-1,Pizza,Sushi,Tacos
P-1,pizza,overvote,Tacos
P-2,undervote,Sushi,sushi
P-2,Jane Doe,Tacos,
P-3,undervote,undervote,undervote
P-3,Sushi,Pizza,Tacos
"""


async def test_cardinal_import_casts_a_cast_vote_record(
    voting: VotingClient, http: httpx.AsyncClient, api_url: str, tmp_path: Path
) -> None:
    body = {
        "title": "Lunch",
        "method": "irv",
        "options": [
            {"id": "pizza", "label": "Pizza"},
            {"id": "sushi", "label": "Sushi"},
            {"id": "tacos", "label": "Tacos"},
        ],
    }
    created = await http.post("/api/elections", json=body, headers=bearer(ADMIN))
    election_id = created.json()["id"]
    await voting.open(election_id)
    cvr = tmp_path / "minneapolis.csv"
    cvr.write_text(CVR)
    command = ("import", str(cvr), "--election", election_id, "--url", api_url, "--token", CLIENT)
    code, said = await _cardinal(*command)
    assert code == 2
    assert "this CVR names no voter" in " ".join(said.split())
    # "Jane Doe" matches no option: by default nothing is sent, and the name is listed.
    code, said = await _cardinal(*command, "--source", "ward-1")
    flat = " ".join(said.split())
    assert code == 2, said
    assert "1 name matches no option of the election; nothing was sent" in flat
    assert "'Jane Doe': 1 mark" in flat
    assert "--write-in skip" in flat
    assert not [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id
    ]
    for attempt in range(2):  # importing the same file again records nothing twice
        done = await _cardinal(*command, "--source", "ward-1", "--write-in", "skip")
        assert done[0] == 0, done[1]
        assert ("replayed" in done[1]) == (attempt == 1), done[1]
        # ... nor does importing it saved again with Windows line endings.
        cvr.write_bytes(CVR.replace("\n", "\r\n").encode())
    assert "blank (nothing left to rank)" in done[1]
    events = [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id
    ]
    # Overvotes exhaust, undervotes are skipped, a duplicate is skipped, a write-in skipped.
    assert sorted(e["data"]["vote"]["ranking"] for e in events) == sorted(
        [
            ["pizza", "sushi", "tacos"],
            ["pizza"],
            ["sushi"],
            ["tacos"],
            ["sushi", "pizza", "tacos"],
        ]
    )


async def test_cardinal_import_refuses_a_name_that_matches_two_options(
    voting: VotingClient, http: httpx.AsyncClient, api_url: str, tmp_path: Path
) -> None:
    body = {
        "title": "Council",
        "method": "irv",
        "options": [
            {"id": "a", "label": "B"},
            {"id": "b", "label": "A"},
            {"id": "s1", "label": "Smith"},
            {"id": "s2", "label": "Smith"},
        ],
    }
    created = await http.post("/api/elections", json=body, headers=bearer(ADMIN))
    election_id = created.json()["id"]
    await voting.open(election_id)
    cvr = tmp_path / "council.csv"
    cvr.write_text("voter_id,rank1,rank2\nv1,a,b\nv2,Smith,b\n")
    command = ("import", str(cvr), "--election", election_id, "--url", api_url, "--token", CLIENT)
    for write_in in ("refuse", "skip"):  # no --write-in choice says which Smith was meant
        code, said = await _cardinal(*command, "--write-in", write_in)
        flat = " ".join(said.split())
        assert code == 2, said
        assert "1 name matches more than one option of the election; nothing was sent" in flat
        assert "'Smith': 1 mark, matching Smith (s1), Smith (s2)" in flat
    assert not [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id
    ]
    # An id written exactly is that option, whatever another option's label says.
    cvr.write_text("voter_id,rank1,rank2\nv1,a,b\nv2,s2,b\n")
    code, said = await _cardinal(*command)
    assert code == 0, said
    events = [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id
    ]
    assert sorted(e["data"]["vote"]["ranking"] for e in events) == [["a", "b"], ["s2", "b"]]


async def test_cardinal_import_takes_a_name_in_either_unicode_form_as_one_voter(
    voting: VotingClient, api_url: str, tmp_path: Path
) -> None:
    """The election compares voter ids after NFC normalisation, so the import keys them
    so too: a file saved again where names are stored decomposed (NFD, as on macOS) is
    the same ballots, replayed, not a second ballot of each voter or a 409 for it."""
    election_id = await voting.open_election("plurality", allow_revote=False)
    ballots = tmp_path / "ballots.jsonl"
    command = (
        "import",
        str(ballots),
        "--election",
        election_id,
        "--url",
        api_url,
        "--token",
        CLIENT,
    )
    for attempt, name in enumerate(("Jos\u00e9", "Jose\u0301")):
        ballots.write_text(
            orjson.dumps({"voter_id": name, "choice": "a"}).decode() + "\n", encoding="utf-8"
        )
        code, said = await _cardinal(*command)
        assert code == 0, said
        assert ("replayed" in said) == (attempt == 1), said
    events = [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id
    ]
    assert len(events) == 1, events


async def _cardinal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_a_ballot_that_is_not_an_object_is_refused_in_its_place(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("plurality")
    results = await _batch(http, election_id, [5, {"voter_id": "fine", "choice": "a"}, "x"])
    assert results[1]["status"] == "cast"
    for index in (0, 2):
        assert results[index]["status"] == 422
        assert results[index]["field"] == f"ballots[{index}]"
        assert results[index]["detail"] == f"ballots[{index}]: must be a JSON object"


async def test_a_batch_of_invalid_ballots_lists_twenty_issues_in_all(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """Each refused ballot listed its first 20 issues: 1,000 ballots of 21 unknown keys
    each, 168 KB, were answered with 1.65 MB (the merge review of 350b454). The batch has
    one budget of 20 listed issues (api.problems.MAX_ISSUES), as one request has, though
    every refused ballot lists its first; each one's detail and more_errors count the rest."""
    from api.documents import Problem
    from api.problems import MAX_ISSUES

    election_id = await voting.open_election("plurality")
    ballots = [
        {"voter_id": f"v{n}", "choice": "a", **{f"k{k:02d}": 1 for k in range(21)}}
        for n in range(1000)
    ]
    sent = orjson.dumps({"ballots": ballots})
    response = await http.post(
        BATCH.format(election_id),
        content=sent,
        headers={**bearer(CLIENT), "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text[:500]
    results = response.json()["results"]
    assert [r["status"] for r in results] == [422] * 1000
    assert len(results[0]["errors"]) == MAX_ISSUES  # the budget spent on the first
    assert results[0]["more_errors"] == 21 - MAX_ISSUES
    for index, result in enumerate(results[1:], 1):
        assert result["errors"] == [
            {"field": f"ballots[{index}].k00", "message": result["errors"][0]["message"]}
        ]
        assert result["more_errors"] == 20
        assert result["detail"].endswith("(and 20 more problems)")
        Problem.model_validate(result)
    assert sum(len(r["errors"]) for r in results) == MAX_ISSUES + 999
    assert len(response.content) < 2 * len(sent), (len(response.content), len(sent))


async def test_cardinal_import_names_the_line_of_each_refused_ballot(
    voting: VotingClient, api_url: str, tmp_path: Path
) -> None:
    election_id = await voting.open_election("plurality")
    lines = [
        '{"voter_id": "line-1", "choice": "a"}',
        '{"voter_id": "line-2", "choice": "burger"}',
        '{"voter_id": "line-3", "choice": "b"}',
    ]
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text("\n".join(lines) + "\n")
    code, said = await _cardinal(
        "import", str(ballots), "--election", election_id, "--url", api_url, "--token", CLIENT
    )
    assert code == 1, said  # something was refused
    flat = " ".join(said.split())
    assert "refused, by line of ballots.jsonl:" in flat
    assert "line 2: 422:" in flat
    assert "burger" in flat
    assert "line 1:" not in flat
    assert "line 3:" not in flat
    missing = "00000000-0000-0000-0000-000000000000"
    code, said = await _cardinal(
        "import", str(ballots), "--election", missing, "--url", api_url, "--token", CLIENT
    )
    assert code == 1
    assert "the election cannot be read: 404: there is no election" in " ".join(said.split())
    assert "b'" not in said  # a detail a person reads, not a bytes repr


async def test_cardinal_import_says_when_the_api_cannot_be_reached_or_stops_answering(
    voting: VotingClient, tmp_path: Path
) -> None:
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text("".join(f'{{"voter_id": "v{n}", "choice": "a"}}\n' for n in range(30)))
    command = ("import", str(ballots), "--election", str(uuid.uuid4()), "--token", CLIENT)
    code, said = await _cardinal(*command, "--url", f"ftp://127.0.0.1:{free_port()}")
    assert code == 2
    assert "--url must be an http:// or https:// address" in said
    code, said = await _cardinal(*command, "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert "cannot reach the API at http://127.0.0.1:" in said
    assert "Traceback" not in said

    # An API that reads the election but then answers every batch 503 (overloaded, or its
    # store away): the import waits --patience seconds, then stops and says what it left.
    serving: set[asyncio.StreamWriter] = set()

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        serving.add(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                if head.startswith(b"GET"):
                    status, body = b"200 OK", orjson.dumps({"options": [], "status": "open"})
                else:
                    status, body = b"503 Service Unavailable", orjson.dumps({"detail": "busy"})
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                    b"Retry-After: 0\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
        writer.close()
        serving.discard(writer)

    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the request, never answers, until the client leaves
        writer.close()
        hung_up.set()

    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with quiet:
        where = f"http://127.0.0.1:{quiet.sockets[0].getsockname()[1]}"
        code, said = await _cardinal(*command, "--url", where, "--patience", "1")
        await asyncio.wait_for(hung_up.wait(), 10)
    assert code == 1, said
    assert "no answer within 1 s" in " ".join(said.split())

    server = await asyncio.start_server(busy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        code, said = await _cardinal(
            *command, "--url", f"http://127.0.0.1:{port}", "--patience", "1", "--batch", "10"
        )
        for _ in range(100):  # the handlers see the client gone and close their side
            if not serving:
                break
            await asyncio.sleep(0.05)
    flat = " ".join(said.split())
    assert code == 1, said
    assert "stopped: for 1 s the API took none of a batch (503: busy)" in flat
    assert "30 ballots were not sent" in flat
    assert "Run the same import again" in flat


def _without_client_token(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CARDINAL_CLIENT_TOKEN"}
    return {**env, **more}


async def _election_events(voting: VotingClient, election_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id
    ]


async def test_cardinal_import_refuses_a_token_that_cannot_cast_before_sending_anything(
    voting: VotingClient, api_url: str, tmp_path: Path
) -> None:
    """With the admin token, every ballot came back 403 (the admin role may not cast
    ballots), and the summary advised running the same import again with the same token,
    which could only fail again (newcomer review): the import asks the API first (an empty
    batch: refused by role before its body is read), and says in one line which token to
    use, and where the one it used came from."""
    election_id = await voting.open_election("plurality")
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text("".join(f'{{"voter_id": "v{n}", "choice": "a"}}\n' for n in range(5)))
    command = ("import", str(ballots), "--election", election_id, "--url", api_url)
    for token in (ADMIN, OPERATOR):
        code, said = await _cardinal(*command, "--token", token, env=_without_client_token())
        flat = " ".join(said.split())
        assert code == 1, said
        assert "the token from --token cannot cast ballots here: 403:" in flat, said
        assert "it needs the client role" in flat, said
        assert "the import needs the client token, CARDINAL_CLIENT_TOKEN, which " in flat, said
        assert "`. .cardinal/env` sets" in flat, said
        assert "nothing was sent" in flat, said
        assert "Run the same import again" not in flat, said
        assert "refused, by line" not in flat, said
    code, said = await _cardinal(*command, env=_without_client_token(CARDINAL_CLIENT_TOKEN=ADMIN))
    assert code == 1, said
    assert "the token from CARDINAL_CLIENT_TOKEN cannot cast ballots here" in " ".join(said.split())
    assert not await _election_events(voting, election_id)
    # A token the API does not know, and a voter token: which one, from where.
    code, said = await _cardinal(*command, "--token", "not-a-token", env=_without_client_token())
    assert code == 1, said
    assert (
        "the election cannot be read: 401: this token is not recognised (the token from --token)"
    ) in " ".join(said.split())
    token_election, (voter_token,) = await voting.token_election(tokens=1)
    code, said = await _cardinal(
        *command, env=_without_client_token(CARDINAL_CLIENT_TOKEN=voter_token)
    )
    flat = " ".join(said.split())
    assert code == 1, said
    assert "the election cannot be read: 403:" in flat, said
    assert "(the token from CARDINAL_CLIENT_TOKEN, a voter token:" in flat, said
    assert "the import needs the client token" in flat, said
    # A token election takes no import, whatever the token.
    code, said = await _cardinal(
        "import", str(ballots), "--election", token_election, "--url", api_url, "--token", CLIENT
    )
    assert code == 1, said
    assert "takes ballots only from voters holding voter tokens" in " ".join(said.split())
    # No token at all: where one comes from in development.
    code, said = await _cardinal(*command, env=_without_client_token())
    assert code == 2, said
    assert (
        "a client token is needed: set CARDINAL_CLIENT_TOKEN (in development: "
        "`. .cardinal/env`, which `cardinal serve` writes, sets it) or pass --token"
    ) in " ".join(said.split())
    code, said = await _cardinal(*command, "--token", CLIENT)
    assert code == 0, said  # the client token casts them


async def test_cardinal_import_into_an_election_not_open_says_so_once_and_sends_nothing(
    voting: VotingClient, api_url: str, tmp_path: Path
) -> None:
    """Into a draft election, the import printed a 409 (not opened yet) for each ballot and
    nothing said how to open it (newcomer review): one line says so, before anything is
    sent; for a closed one, that it is closed."""
    draft = str((await voting.create_election("plurality"))["id"])
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text("".join(f'{{"voter_id": "v{n}", "choice": "a"}}\n' for n in range(5)))
    command = ("import", str(ballots), "--url", api_url, "--token", CLIENT, "--election")
    code, said = await _cardinal(*command, draft)
    flat = " ".join(said.split())
    assert code == 1, said
    assert flat == (  # that alone, in one line (wrapped to the terminal's width)
        f"the election {draft} is a draft, not open yet: open it with POST "
        f"/api/elections/{draft}/open and the admin token (CARDINAL_ADMIN_TOKEN), then "
        "import; nothing was sent"
    ), said
    # With the admin token too: both are said at once.
    code, said = await _cardinal(*command[:-3], "--token", ADMIN, "--election", draft)
    flat = " ".join(said.split())
    assert code == 1, said
    assert "is a draft, not open yet" in flat, said
    assert "cannot cast ballots here: 403:" in flat, said
    assert not await _election_events(voting, draft)
    await voting.open(draft)
    await voting.close(draft)
    code, said = await _cardinal(*command, draft)
    flat = " ".join(said.split())
    assert code == 1, said
    assert f"the election {draft} is closed: it takes no more ballots; nothing was sent" in flat
    assert "409" not in flat, said


async def test_cardinal_import_advises_running_again_only_where_that_may_pass(
    tmp_path: Path,
) -> None:
    """A whole request refused with a 4xx (a proxy's 413, a token refused mid-import) was
    counted as a refusal "that says nothing about" the ballots, with the advice to run the
    same import again with the same token: it would be refused again. A 5xx may pass."""
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text(
        '{"voter_id": "v1", "choice": "a"}\n{"voter_id": "v2", "choice": "a"}\n'
        '{"voter_id": "v1", "choice": "b"}\n'
    )
    refusal: tuple[bytes, dict[str, Any]] = (
        b"403 Forbidden",
        {"title": "Forbidden", "detail": "not for this token"},
    )

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                sent = await reader.readexactly(int(length.group(1)) if length else 0)
                if head.startswith(b"GET"):
                    status, document = b"200 OK", {"options": [], "status": "open"}
                elif orjson.loads(sent) == {"ballots": []}:  # the import's check of the token
                    status, document = b"422 Unprocessable Entity", {"detail": "ballots: empty"}
                else:
                    status, document = refusal
                body = orjson.dumps(document)
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/problem+json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
        writer.close()

    server = await asyncio.start_server(api, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    command = ("import", str(ballots), "--election", "e", "--url", url, "--token", CLIENT)
    async with server:
        code, said = await _cardinal(*command, "--concurrency", "1")
        flat = " ".join(said.split())
        assert code == 1, said
        assert "refused, by line of ballots.jsonl:" in flat, said
        assert "403: not for this token" in flat, said
        assert "1 ballot was not sent (1 of them held back" in flat, said
        assert "says nothing about them" not in flat, said
        assert "Run the same import again" not in flat, said
        assert "the import would be refused the same way again" in flat, said
        refusal = b"502 Bad Gateway", {"detail": "upstream failed"}
        code, said = await _cardinal(*command, "--concurrency", "1")
        flat = " ".join(said.split())
        assert code == 1, said
        assert "502: upstream failed" in flat, said
        assert "refused for a reason that says nothing about them" in flat, said
        assert "Run the same import again with the same token to send them" in flat, said


async def test_a_batch_is_in_the_log_in_an_order_of_chance(
    voting: VotingClient, http: httpx.AsyncClient, database_url: str
) -> None:
    """Recorded in the request's order, a batch listing voters in a known order (a roll)
    let whoever reads the log pair the roll with the entries (review helper-39); so did
    the entries' timestamps, stamped in the request's order before the shuffle (review
    helper-75)."""
    election_id = await voting.open_election("plurality")
    roll = [f"roll-{n:03}" for n in range(40)]
    results = await _batch(
        http, election_id, [{"voter_id": v, "choice": "abc"[n % 3]} for n, v in enumerate(roll)]
    )
    positions = [r["position"] for r in results]
    assert len(set(positions)) == 40
    assert positions != sorted(positions)  # (one chance in 40! of failing)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await conn.execute(
            "SELECT notification_id, state FROM cardinal_events WHERE notification_id = ANY(%s)",
            (positions,),
        )
        stamped = {p: orjson.loads(state)["timestamp"] for p, state in await rows.fetchall()}
    in_request_order = [stamped[p] for p in positions]
    assert len(set(in_request_order)) == 40
    assert in_request_order != sorted(in_request_order)  # (one chance in 40!)


def _rank_correlation(xs: list[Any], ys: list[Any]) -> float:
    """Spearman's rank correlation of two lists of distinct values: 1 when ``ys`` follows
    the order of ``xs``, near 0 when it has nothing to do with it."""
    n = len(xs)
    rank_x = {x: r for r, x in enumerate(sorted(xs))}
    rank_y = {y: r for r, y in enumerate(sorted(ys))}
    squares = sum((rank_x[x] - rank_y[y]) ** 2 for x, y in zip(xs, ys, strict=True))
    return 1 - 6 * squares / (n * (n * n - 1))


async def _stamps(database_url: str, positions: list[int]) -> list[str]:
    """The timestamps of the entries at these positions, in the same order."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await conn.execute(
            "SELECT notification_id, state FROM cardinal_events WHERE notification_id = ANY(%s)",
            (positions,),
        )
        stamped = {p: orjson.loads(state)["timestamp"] for p, state in await rows.fetchall()}
    return [stamped[p] for p in positions]


async def test_revisions_in_a_batch_are_in_the_log_in_an_order_of_chance(
    voting: VotingClient, http: httpx.AsyncClient, database_url: str
) -> None:
    """A revision's entry shares its stream with the voter's first one, so revisions
    recorded (and stamped) in the request's order let whoever reads the log and holds the
    roll pair each voter with their ballot: the reviewer's batch revising 40 voters in roll
    order came out nearly sorted. Revisions of ballots cast in an earlier request, and
    those following their voter's first ballot in the same request, are placed by chance.
    (Recorded in the request's order, the rank correlation is near 1; by chance, with 200
    voters its standard deviation is 0.07, so 0.5 is seven of them away.)"""
    election_id = await voting.open_election("plurality", allow_revote=True)
    roll = [f"rev-{n:03}" for n in range(200)]
    firsts = await _batch(http, election_id, [{"voter_id": v, "choice": "a"} for v in roll])
    assert all(r["status"] == "cast" for r in firsts)
    revised = await _batch(http, election_id, [{"voter_id": v, "choice": "b"} for v in roll])
    assert all(r["status"] == "revised" for r in revised), revised[:3]
    assert [r["ballot_id"] for r in revised] == [r["ballot_id"] for r in firsts]
    positions = [r["position"] for r in revised]
    assert abs(_rank_correlation(list(range(200)), positions)) < 0.5
    stamps = await _stamps(database_url, positions)
    assert len(set(stamps)) == 200
    assert abs(_rank_correlation(list(range(200)), stamps)) < 0.5

    # Each voter's first ballot and its revision in one request, the roll in order twice.
    roll = [f"two-{n:03}" for n in range(200)]
    both = await _batch(
        http, election_id, [{"voter_id": v, "choice": c} for c in "ab" for v in roll]
    )
    assert [r["status"] for r in both] == ["cast"] * 200 + ["revised"] * 200
    positions = [r["position"] for r in both[200:]]
    assert all(p > f["position"] for p, f in zip(positions, both, strict=False))
    assert abs(_rank_correlation(list(range(200)), positions)) < 0.5
    stamps = await _stamps(database_url, positions)
    assert abs(_rank_correlation(list(range(200)), stamps)) < 0.5
    body = await _counted(voting, election_id, max(positions))
    assert {o["id"]: o["votes"] for o in body["options"]} == {"a": 0, "b": 400, "c": 0}


async def test_a_voter_may_have_at_most_16_ballots_in_one_batch(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """Each of a voter's later ballots in a batch is a commit and a read of all its
    entries: 1,000 of one voter took over 30 s (review helper-41)."""
    election_id = await voting.open_election("plurality")
    ballots = [{"voter_id": "keen", "choice": "abc"[n % 3]} for n in range(20)]
    results = await _batch(http, election_id, ballots)
    assert [r["version"] for r in results[:16]] == list(range(1, 17))
    assert [r["status"] for r in results[16:]] == [422] * 4
    assert "more than 16 ballots of this voter" in results[16]["detail"]
    # The field at fault is named (it was not): each refused ballot's voter_id.
    assert [r["field"] for r in results[16:]] == [f"ballots[{n}].voter_id" for n in range(16, 20)]
    body = await _counted(voting, election_id, results[15]["position"])
    assert {o["id"]: o["votes"] for o in body["options"]} == {"a": 1, "b": 0, "c": 0}


async def test_cardinal_import_records_a_voters_ballots_in_file_order(
    voting: VotingClient, api_url: str, tmp_path: Path
) -> None:
    # Each voter's second ballot (b) lies in the batch after its first (a). A proxy in
    # front of the API lets later requests overtake earlier ones: it holds each batch until
    # every connection importing has one waiting, then forwards them newest first. Were a
    # voter's b in flight beside its a (two connections taking batches from one queue), b
    # would be recorded first and then revised by a.
    election_id = await voting.open_election("plurality", allow_revote=True)
    voters = 10
    lines = [f'{{"voter_id": "v{n}", "choice": "{c}"}}\n' for n in range(voters) for c in "ab"]
    ballots = tmp_path / "changes.jsonl"
    ballots.write_text("".join(lines))
    positions: list[int] = []
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as api:
        proxy = _Overtaking(api, connections=2, positions=positions)
        server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
        async with server:
            where = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            code, said = await _cardinal(
                "import", str(ballots), "--election", election_id, "--url", where,
                "--token", CLIENT, "--batch", "1", "--concurrency", "2",
            )  # fmt: skip
    assert code == 0, said
    assert proxy.overtaken > 0  # requests were held side by side, and reordered
    body = await _counted(voting, election_id, max(positions))
    assert {o["id"]: o["votes"] for o in body["options"]} == {"a": 0, "b": voters, "c": 0}


def _checks_the_token(body: bytes) -> bool:
    """Whether a POST is the import's check of its token (an empty batch), before it sends
    a ballot: the proxies below pass it on as it comes."""
    return bool(body) and orjson.loads(body) == {"ballots": []}


class _Overtaking:
    """An HTTP/1.1 proxy that holds each POST until every connection that has posted (at
    least ``connections`` of them, and not yet closed) has one waiting, then forwards the
    waiting ones to the API newest first, one at a time."""

    def __init__(self, api: httpx.AsyncClient, *, connections: int, positions: list[int]):
        self.api = api
        self.connections = connections
        self.positions = positions
        self.posting: set[asyncio.StreamWriter] = set()  # connections that have posted
        self.posted = 0  # how many ever have
        self.held: list[tuple[bytes, bytes, asyncio.Future[bytes]]] = []
        self.overtaken = 0  # requests forwarded before one that came in earlier

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                if head.startswith(b"POST") and not _checks_the_token(body):
                    if writer not in self.posting:
                        self.posting.add(writer)
                        self.posted += 1
                    answer = asyncio.get_running_loop().create_future()
                    self.held.append((head, body, answer))
                    await self._release()
                    writer.write(await answer)
                else:
                    writer.write(await self._forward(head, body))
                await writer.drain()
        finally:
            self.posting.discard(writer)
            writer.close()
            await self._release()

    async def _release(self) -> None:
        if not self.held or self.posted < self.connections or len(self.held) < len(self.posting):
            return
        waiting, self.held = self.held[::-1], []
        self.overtaken += len(waiting) - 1
        for head, body, answer in waiting:
            answer.set_result(await self._forward(head, body))

    async def _forward(self, head: bytes, body: bytes) -> bytes:
        method, path = head.split(b" ")[:2]
        token = re.search(rb"(?i)authorization: *([^\r]*)", head)
        reply = await self.api.request(
            method.decode(),
            path.decode(),
            content=body,
            headers={
                "Content-Type": "application/json",
                **({"Authorization": token.group(1).decode()} if token else {}),
            },
        )
        if method == b"POST" and reply.status_code == 200:
            self.positions.extend(r["position"] for r in reply.json()["results"] if "position" in r)
        return (
            f"HTTP/1.1 {reply.status_code} -\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(reply.content)}\r\n\r\n"
        ).encode() + reply.content


async def test_a_reused_key_in_a_batch_names_the_ballots_field(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """It was named ``ballots[1].Idempotency-Key``, a field no ballot has (review
    helper-41)."""
    election_id = await voting.open_election("plurality")
    results = await _batch(
        http,
        election_id,
        [
            {"voter_id": "i1", "choice": "a", "idempotency_key": "K1"},
            {"voter_id": "i1", "choice": "b", "idempotency_key": "K1"},
        ],
    )
    assert results[1]["status"] == 422
    assert results[1]["field"] == "ballots[1].idempotency_key"


async def test_a_ballots_key_follows_the_idempotency_key_headers_rule_and_words(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """A ballot's idempotency_key and the Idempotency-Key header were checked by two rules
    (a client developer's review), a key too long refused in pydantic's words. Now one
    rule, in one wording: the ballot's own, wider one (no control character, no lone
    surrogate), so that a key taken in bulk before (a zero-width space, a no-break space,
    an emoji with a joiner) is taken still, and answered as a replay; the ballot alone is
    refused."""
    election_id = await voting.open_election("plurality")
    events = len(await voting.audit_events())
    good = [
        "k" * 255,
        "zero\u200bwidth",
        "no\u00a0break",
        "line\u2028sep",
        "\U0001f468\u200d\U0001f469",
    ]
    bad = ["", "k" * 256, "tab\tkey", "c1\x85key", "del\x7f"]
    sent = [
        {"voter_id": f"key-ok-{n}", "choice": "a", "idempotency_key": k} for n, k in enumerate(good)
    ] + [{"voter_id": f"key-{n}", "choice": "a", "idempotency_key": k} for n, k in enumerate(bad)]
    results = await _batch(http, election_id, sent)
    for n in range(len(good)):
        assert results[n]["version"] == 1, (good[n], results[n])
    rule = (
        "must be 1-255 characters, with no control character (U+0000-U+001F, U+007F-U+009F) "
        "and no lone surrogate"
    )
    for n, refused in enumerate(results[len(good) :], len(good)):
        assert refused["status"] == 422, (sent[n], refused)
        assert refused["field"] == f"ballots[{n}].idempotency_key", refused
        assert refused["detail"] == f"ballots[{n}].idempotency_key: {rule}", refused
    assert len(await voting.audit_events()) == events + len(good)
    again = await _batch(http, election_id, sent[: len(good)])
    assert all(item.get("replayed") for item in again), again
    assert len(await voting.audit_events()) == events + len(good)
    header = await http.post(
        f"/api/elections/{election_id}/ballots",
        json={"voter_id": "by-header", "choice": "a"},
        headers={**bearer(CLIENT), "Idempotency-Key": "k" * 256},
    )
    assert assert_problem(header, 422, "Idempotency-Key")["detail"] == f"Idempotency-Key {rule}"
    header = await http.post(
        f"/api/elections/{election_id}/ballots",
        json={"voter_id": "by-header", "choice": "a"},
        headers=[(k.encode(), v.encode()) for k, v in bearer(CLIENT).items()]
        + [(b"idempotency-key", "no\u00a0break".encode("latin-1"))],
    )
    assert header.status_code == 201, header.text
    # The contract says so too.
    contract = (await http.get("/openapi.json")).json()
    batch = contract["paths"]["/api/elections/{election_id}/ballots/batch"]["post"]
    body = batch["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = contract["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    # (the items are a ballot or anything else: each is validated on its own)
    ballot = body["properties"]["ballots"]["items"]["anyOf"][0]
    key = ballot["properties"]["idempotency_key"]["anyOf"][0]
    assert (key["minLength"], key["maxLength"]) == (1, 255)
    assert not re.match(key["pattern"], bad[2])
    assert all(re.match(key["pattern"], k) for k in good)


async def test_cardinal_import_does_not_keep_the_files_order_between_requests(
    voting: VotingClient, api_url: str, database_url: str, tmp_path: Path
) -> None:
    """The API places a request's ballots by chance, but not one request's among another's:
    an import that cut its requests in file order, on lanes dealt by a hash of the voter,
    let whoever holds the file's order (a roll) and reads the log narrow each voter to the
    entries of a few requests. The file's voters now go in an order of chance, first
    ballots and revisions alike (in file order, the rank correlation is near 1; by chance,
    with 300 voters its standard deviation is 0.06)."""
    election_id = await voting.open_election("plurality", allow_revote=True)
    roll = [f"roll-{n:03}" for n in range(300)]
    keys = VoterKeys("s" * 40)  # the test server's secret: to find each voter's entries
    streams = [
        ballot_id(
            uuid.UUID(election_id),
            keys.for_voter_id(uuid.UUID(election_id), v, VoterIds.NFC).ballot_key,
        )
        for v in roll
    ]
    for version, choice in ((1, "a"), (2, "b")):
        ballots = tmp_path / f"{choice}.jsonl"
        ballots.write_text("".join(f'{{"voter_id": "{v}", "choice": "{choice}"}}\n' for v in roll))
        code, said = await _cardinal(
            "import", str(ballots), "--election", election_id, "--url", api_url,
            "--token", CLIENT, "--batch", "10", "--concurrency", "2",
        )  # fmt: skip
        assert code == 0, said
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            rows = await conn.execute(
                "SELECT originator_id, notification_id FROM cardinal_events"
                " WHERE originator_id = ANY(%s) AND originator_version = %s",
                (streams, version),
            )
            placed: dict[uuid.UUID, int] = dict(await rows.fetchall())
        positions = [placed[stream] for stream in streams]
        assert abs(_rank_correlation(list(range(300)), positions)) < 0.5
    body = await _counted(voting, election_id, max(positions))
    assert {o["id"]: o["votes"] for o in body["options"]} == {"a": 0, "b": 300, "c": 0}


async def test_cardinal_import_sends_at_most_16_ballots_of_a_voter_in_one_request(
    voting: VotingClient, api_url: str, tmp_path: Path
) -> None:
    """The API refuses a voter's 17th and later ballots of one request (422): sent in one
    batch of 1,000, they could never be recorded, and the 16th counted (review helper-47)."""
    election_id = await voting.open_election("plurality", allow_revote=True)
    ballots = tmp_path / "keen.jsonl"
    ballots.write_text(
        "".join(f'{{"voter_id": "keen", "choice": "{"ab"[n % 2]}"}}\n' for n in range(19))
        + '{"voter_id": "keen", "choice": "c"}\n'
    )
    code, said = await _cardinal(
        "import", str(ballots), "--election", election_id, "--url", api_url, "--token", CLIENT
    )
    assert code == 0, said
    events = [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id
    ]
    assert len(events) == 20
    assert await _votes(voting, election_id) == {"a": 0, "b": 0, "c": 1}


async def test_cardinal_import_sends_no_later_ballot_of_a_voter_whose_earlier_one_failed(
    voting: VotingClient,
    http: httpx.AsyncClient,
    api_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A voter's ballot refused for a reason that says nothing about it (a fault, 500)
    holds back their later one (503, "send both again, in order"). Sent again alone, the
    later one was recorded, and the next run recorded the earlier one after it, as a
    revision: the older vote counted (review helper-47)."""
    election_id = await voting.open_election("plurality", allow_revote=True)
    await _batch(http, election_id, [{"voter_id": "mover", "choice": "a"}])
    lines = [
        '{"voter_id": "mover", "choice": "b"}',  # a revision: it reads the ballot back
        '{"voter_id": "other", "choice": "a"}',
        '{"voter_id": "mover", "choice": "c"}',  # the vote that is to count
    ]
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text("\n".join(lines) + "\n")
    command = ("import", str(ballots), "--election", election_id, "--url", api_url)
    reading = GroupCommitWriter.load_ballot
    faults = 0

    async def failing_once(self: GroupCommitWriter, ballot_id: uuid.UUID) -> Any:
        nonlocal faults
        if faults == 0:
            faults += 1
            raise RuntimeError("bug")
        return await reading(self, ballot_id)

    monkeypatch.setattr(GroupCommitWriter, "load_ballot", failing_once)
    code, said = await _cardinal(*command, "--token", CLIENT)
    monkeypatch.undo()
    votes = [
        e["data"]["vote"]["choice"]
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id
    ]
    assert sorted(votes) == ["a", "a"]  # mover's first ballot, other's: not mover's c
    flat = " ".join(said.split())
    assert code == 1, said
    assert faults == 1
    assert "line 1: 500:" in flat
    assert "line 3" not in flat
    assert "1 ballot was not sent" in flat
    assert "Run the same import again with the same token" in flat
    code, said = await _cardinal(*command, "--token", CLIENT)
    assert code == 0, said
    assert await _votes(voting, election_id) == {"a": 1, "b": 0, "c": 1}


@pytest.mark.parametrize("answer", [b"502 Bad Gateway", b"413 Payload Too Large"])
async def test_cardinal_import_sends_no_later_ballot_after_a_request_failed(
    voting: VotingClient, api_url: str, tmp_path: Path, answer: bytes
) -> None:
    """A whole request refused by a proxy (502, review helper-47; 413, review helper-50)
    settled its ballots as refused, and the import went on to send their voters' later
    ballots."""
    election_id = await voting.open_election("plurality", allow_revote=True)
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text('{"voter_id": "v", "choice": "a"}\n{"voter_id": "v", "choice": "b"}\n')
    command = ("import", str(ballots), "--election", election_id, "--token", CLIENT)
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as api:
        proxy = _FirstPostFails(api, connections=1, positions=[])
        proxy.answer = answer
        server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
        async with server:
            where = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            code, said = await _cardinal(*command, "--url", where, "--batch", "1")
    assert not [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id
    ]
    flat = " ".join(said.split())
    assert code == 1, said
    assert f"line 1: {answer[:3].decode()}:" in flat
    assert "1 ballot was not sent" in flat
    code, said = await _cardinal(*command, "--url", api_url)
    assert code == 0, said
    assert await _votes(voting, election_id) == {"a": 0, "b": 1, "c": 0}


class _FirstPostFails(_Overtaking):
    """A proxy that answers the first POST itself, 502, as a gateway whose upstream
    failed does, and forwards the rest (one at a time, in order, with one connection)."""

    failed = False
    answer = b"502 Bad Gateway"

    async def _forward(self, head: bytes, body: bytes) -> bytes:
        if head.startswith(b"POST") and not self.failed and not _checks_the_token(body):
            self.failed = True
            page = self.answer[4:]
            return (
                b"HTTP/1.1 " + self.answer + b"\r\nContent-Type: text/plain\r\n"
                b"Content-Length: " + str(len(page)).encode() + b"\r\n\r\n" + page
            )
        return await super()._forward(head, body)


async def test_cardinal_import_holds_a_voters_later_lines_behind_a_refused_one(
    voting: VotingClient, api_url: str, tmp_path: Path
) -> None:
    """An earlier line refused as invalid let the voter's later line be recorded; once
    corrected, it was recorded after it, and the older vote counted (review helper-50)."""
    election_id = await voting.open_election("plurality", allow_revote=True)
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text('{"voter_id": "v", "choice": "zz"}\n{"voter_id": "v", "choice": "b"}\n')
    command = ("import", str(ballots), "--election", election_id, "--token", CLIENT)
    code, said = await _cardinal(*command, "--url", api_url)
    flat = " ".join(said.split())
    assert code == 1, said
    assert "1 of them held back behind an earlier line of their voter that was refused" in flat
    assert await _votes(voting, election_id) == {"a": 0, "b": 0, "c": 0}
    ballots.write_text('{"voter_id": "v", "choice": "a"}\n{"voter_id": "v", "choice": "b"}\n')
    code, said = await _cardinal(*command, "--url", api_url)
    assert code == 0, said
    assert await _votes(voting, election_id) == {"a": 0, "b": 1, "c": 0}


class _StoreCalls:
    """Counts the API's reads on the ballot path (each a statement on a lookup thread) and
    its appends (each a place in a group commit) while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lookups = 0
        self.appends = 0
        lookup, append_events = GroupCommitWriter._lookup, GroupCommitWriter.append_events

        async def counted_lookup(writer: GroupCommitWriter, *args: Any) -> Any:
            self.lookups += 1
            return await lookup(writer, *args)

        async def counted_append(writer: GroupCommitWriter, *args: Any, **kwargs: Any) -> Any:
            self.appends += 1
            return await append_events(writer, *args, **kwargs)

        monkeypatch.setattr(GroupCommitWriter, "_lookup", counted_lookup)
        monkeypatch.setattr(GroupCommitWriter, "append_events", counted_append)


async def test_a_batch_sent_again_gets_its_receipts_from_one_read(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each retry in a batch took the single-ballot path: its first cast appended again (a
    conflict), its ballot read back, its entry looked up: three round trips a ballot, and
    `cardinal import` run again went at 1,100 ballots/s against 6,200 for its first run.
    Sent again, a batch (a voter's revisions in it too) now costs one read, and gets the
    very receipts it got the first time; so after the close."""
    election_id = await voting.open_election("plurality", allow_revote=True)
    ballots: list[Any] = [
        {"voter_id": f"again-{n}", "choice": "abc"[n % 3], "idempotency_key": f"k-{n}"}
        for n in range(300)
    ]
    ballots += [
        {"voter_id": "again-7", "choice": "c", "idempotency_key": "k-7-later"},
        {"voter_id": "again-7", "choice": "a", "idempotency_key": "k-7-last"},
    ]
    first = await _batch(http, election_id, ballots)
    assert [first[7]["version"], first[300]["version"], first[301]["version"]] == [1, 2, 3]
    entries = len(await voting.audit_events())
    calls = _StoreCalls(monkeypatch)
    again = await _batch(http, election_id, ballots)
    monkeypatch.undo()
    assert again == [{**r, "replayed": True} for r in first]
    assert calls.lookups == 1  # the ballots (the election is this process's own)
    assert calls.appends == 0
    # After the close, each voter's first ballot of the batch is told from one read too
    # (a voter's later ones take the single-ballot path, which answers a retry there).
    await voting.close(election_id)
    calls = _StoreCalls(monkeypatch)
    again = await _batch(http, election_id, ballots[:300])
    monkeypatch.undo()
    assert again == [{**r, "replayed": True} for r in first[:300]]
    assert calls.lookups <= 2, calls.lookups  # the closed election read again, the ballots
    assert calls.appends == 0
    assert len(await voting.audit_events()) == entries + 1  # the close


async def test_a_batch_of_new_ballots_retries_revisions_and_conflicts_answers_each(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the retries are answered from the batch's one read: a revision, a key used for
    another ballot, a second ballot where revoting is off still take the single-ballot
    path, and a voter's ballots still count in the batch's order."""
    revoting = await voting.open_election("plurality", allow_revote=True)
    once = await voting.open_election("plurality", allow_revote=False)

    def ballot(voter: str, choice: str, key: str | None = None) -> dict[str, Any]:
        return {"voter_id": voter, "choice": choice, **({"idempotency_key": key} if key else {})}

    earlier = [ballot(f"r{n}", "a", f"kr{n}") for n in range(10)]
    earlier += [ballot("rev", "a", "k-rev"), ballot("mis", "a", "k-mis")]
    earlier += [ballot("chain", "a", "kc1")]
    before = await _batch(http, revoting, earlier)
    before_once = await _batch(http, once, [ballot("x", "a", "kx"), ballot("y", "a", "ky")])

    mixed = [ballot(f"new-{n}", "b", f"kn{n}") for n in range(3)]
    mixed += earlier[:10]  # retries
    mixed += [
        ballot("rev", "b"),  # a revision (no key)
        ballot("mis", "b", "k-mis"),  # the key of another ballot: refused
        ballot("chain", "a", "kc1"),  # a retry, then a revision, then the retry again
        ballot("chain", "b", "kc2"),
        ballot("chain", "a", "kc1"),
        ballot("rev", "c", "k-rev-2"),  # the voter's second of the batch: revises again
    ]
    calls = _StoreCalls(monkeypatch)
    results = await _batch(http, revoting, mixed)
    monkeypatch.undo()
    assert [(r["status"], r["version"], r["replayed"]) for r in results[:3]] == [
        ("cast", 1, False)
    ] * 3
    assert results[3:13] == [{**r, "replayed": True} for r in before[:10]]
    rev, mis, chain_1, chain_2, chain_3, rev_2 = results[13:]
    assert (rev["status"], rev["version"], rev["replayed"]) == ("revised", 2, False)
    assert (mis["status"], mis["field"]) == (422, "ballots[14].idempotency_key")
    assert chain_1 == {**before[12], "replayed": True}
    assert (chain_2["status"], chain_2["version"], chain_2["replayed"]) == ("revised", 2, False)
    assert chain_3 == {**before[12], "replayed": True}
    assert (rev_2["status"], rev_2["version"]) == ("revised", 3)
    # One read for the retries; the rest went as before: rev (2 casts, 2 reads), mis (a
    # cast and a read), chain's revision (a cast and a read) and its later retry (a cast,
    # a read of the ballot and one of the entry).
    assert calls.lookups == 1 + 2 + 1 + 1 + 2
    votes = await _votes(voting, revoting)
    assert votes == {"a": 10 + 1, "b": 3 + 1, "c": 1}  # r*, mis; new-*, chain; rev

    conflicts = [ballot("x", "a", "kx"), ballot("y", "b", "ky-2"), ballot("z", "b", "kz")]
    replay, refused, new = await _batch(http, once, conflicts)
    assert replay == {**before_once[0], "replayed": True}
    assert refused["status"] == 409
    assert "already cast a ballot" in refused["detail"]
    assert (new["status"], new["version"], new["replayed"]) == ("cast", 1, False)


async def test_a_batchs_retries_wait_on_a_hung_store_no_longer_than_a_lookup(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's one read is bounded as each single read is (LOOKUP_WAIT): past it,
    the retries alone are answered 503 (sent again later) and hold back their voters'
    later ballots; first casts and revisions of the same request stand."""
    election_id = await voting.open_election("plurality", allow_revote=True)
    await _batch(
        http,
        election_id,
        [
            {"voter_id": "retry", "choice": "a", "idempotency_key": "k1"},
            {"voter_id": "reviser", "choice": "a"},
        ],
    )
    reading = GroupCommitWriter._load_ballots

    def hung(writer: GroupCommitWriter, ballot_ids: list[uuid.UUID]) -> Any:
        time.sleep(1.5)  # (on the lookup's own thread)
        return reading(writer, ballot_ids)

    monkeypatch.setattr(writer_module, "LOOKUP_WAIT", 0.3)
    monkeypatch.setattr(GroupCommitWriter, "_load_ballots", hung)
    started = time.monotonic()
    retry, later, revised, new = await _batch(
        http,
        election_id,
        [
            {"voter_id": "retry", "choice": "a", "idempotency_key": "k1"},
            {"voter_id": "retry", "choice": "b", "idempotency_key": "k2"},
            {"voter_id": "reviser", "choice": "b"},
            {"voter_id": "newcomer", "choice": "b"},
        ],
    )
    took = time.monotonic() - started
    monkeypatch.undo()
    assert took < 1.2, took
    assert retry["status"] == 503
    assert "retry shortly, with the same Idempotency-Key" in retry["detail"]
    assert later["status"] == 503
    assert "send both again, in order" in later["detail"]
    # When to send them again, as a single ballot's Retry-After says it (review: the items
    # said nothing); the one held back waits as long as its voter's earlier one.
    assert retry["retry_after"] == STORE_WAIT, retry
    assert later["retry_after"] == STORE_WAIT, later
    assert "retry_after" not in revised
    assert "retry_after" not in new
    assert (revised["status"], revised["version"]) == ("revised", 2)
    assert (new["status"], new["version"]) == ("cast", 1)


@pytest.mark.parametrize("number", ["1.0", "1e0", "-0.0", "-2.0", "2.5"])
async def test_a_batch_takes_a_whole_number_written_with_a_fraction_as_one_ballot_does(
    voting: VotingClient, http: httpx.AsyncClient, number: str
) -> None:
    """JSON has one number type: POST .../ballots took {"o0": 1.0} as the score 1 while the
    bulk path refused it with a per-ballot 422 (review: hostile client). Each path answers
    the same: a whole number is a whole number however it is written, 2.5 is not."""
    election_id = await voting.open_election("score", min_score=-3, max_score=3)
    single = await http.post(
        f"/api/elections/{election_id}/ballots",
        content=b'{"voter_id": "one", "scores": {"a": %s}}' % number.encode(),
        headers={**bearer(CLIENT), "Content-Type": "application/json"},
    )
    batch = await http.post(
        BATCH.format(election_id),
        content=b'{"ballots": [{"voter_id": "many", "scores": {"a": %s}}]}' % number.encode(),
        headers={**bearer(CLIENT), "Content-Type": "application/json"},
    )
    assert batch.status_code == 200, batch.text
    [result] = batch.json()["results"]
    if number == "2.5":
        assert single.status_code == 422, single.text
        assert result["status"] == 422
        assert result["field"] == "ballots[0].scores.a"
    else:
        assert single.status_code == 201, single.text
        assert result["status"] == "cast", result
