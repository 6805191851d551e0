"""`cardinal import` end to end: a record refused as read is listed by its line and the
others are cast; a broken file sends nothing; one refusal of the API met on several lines
is one row of the summary (review of the import)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.integration.client import VotingClient
from tests.servers import CLIENT


async def _cardinal(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_cardinal_import_refuses_a_misfit_record_on_its_own_and_a_broken_file_whole(
    voting: VotingClient, api_url: str, tmp_path: Path
) -> None:
    election_id = await voting.open_election("irv")
    command = ("--election", election_id, "--url", api_url, "--token", CLIENT)
    broken = tmp_path / "broken.csv"
    broken.write_text('voter_id,rank1,rank2\nq30,"a,b\nq40,a,b\nq50,b,a\n')
    code, said = await _cardinal("import", str(broken), *command, "--write-in", "skip")
    flat = " ".join(said.split())
    assert code == 1, said
    assert "line 2: a quote opened in the record that starts there is never closed" in flat
    assert "nothing was sent" in flat
    events = [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id and "vote" in (e["data"] or {})
    ]
    assert events == []
    cvr = tmp_path / "cvr.csv"
    cvr.write_text("voter_id,rank1,rank2\nc7,a,b\nc8,a,b,c,Extra\nc9,b,a\n")
    code, said = await _cardinal("import", str(cvr), *command)
    flat = " ".join(said.split())
    assert code == 1, said
    assert "line 3: not sent: 5 cells, where the header has 3" in flat
    events = [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id and "vote" in (e["data"] or {})
    ]
    assert sorted(e["data"]["vote"]["ranking"] for e in events) == [["a", "b"], ["b", "a"]]


async def test_one_refusal_met_on_several_lines_is_one_row_naming_the_field(
    voting: VotingClient, api_url: str, tmp_path: Path
) -> None:
    election_id = await voting.open_election("plurality")
    ballots = tmp_path / "ballots.jsonl"
    extra = ', "extra": 1'
    ballots.write_text(
        "".join(
            f'{{"voter_id": "x{n}", "choice": "a"{extra if n % 2 else ""}}}\n' for n in range(8)
        )
    )
    code, said = await _cardinal(
        "import", str(ballots), "--election", election_id, "--url", api_url, "--token", CLIENT
    )
    assert code == 1, said
    assert "ballots[" not in said
    rows = [line for line in said.splitlines() if "Extra inputs are not permitted" in line]
    table = [row for row in rows if row.startswith("│")]
    assert len(table) == 1, said
    assert table[0].split("│")[2].strip() == "4"
    assert sum("line " in row and ": 422: extra: Extra inputs" in row for row in rows) == 4


async def test_cardinal_import_reads_a_spreadsheets_trailing_commas_and_spaced_quotes(
    voting: VotingClient, api_url: str, tmp_path: Path
) -> None:
    """The merge review's file: a header with a trailing comma made each record "not sent: 4
    cells, where the header has 5" (exit 1, nothing recorded); a record without its trailing
    empty cells, or with a space after a closing quote, was refused too."""
    election_id = await voting.open_election("irv")
    cvr = tmp_path / "hdr.csv"
    cvr.write_text(
        'Precinct,Rank1,Rank2,Rank3,\nP-1,a,b,c\nP-1,b,a,\nP-2,c,,\nP-2,"a" ,c\nP-3,c,b,a,,\n'
    )
    code, said = await _cardinal(
        "import", str(cvr), "--election", election_id, "--url", api_url, "--token", CLIENT,
        "--source", "w1",
    )  # fmt: skip
    assert code == 0, said
    events = [
        e
        for e in await voting.audit_events()
        if (e["data"] or {}).get("election_id") == election_id and "vote" in (e["data"] or {})
    ]
    assert sorted(e["data"]["vote"]["ranking"] for e in events) == [
        ["a", "b", "c"],
        ["a", "c"],
        ["b", "a"],
        ["c"],
        ["c", "b", "a"],
    ]
