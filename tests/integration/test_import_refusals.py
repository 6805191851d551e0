"""`cardinal import` end to end: one refusal of the API met on several lines is one row
of the summary, naming the field, not the ballot's place in its request (review of the
import)."""

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
