"""The reference for `cardinal bench http --reference`: what HTTP and JSON alone allow.

A bare Starlette endpoint at the ballot path that parses the JSON body and answers 201 with
a receipt-sized JSON document, recording nothing. Served the way the real API is (uvicorn
with uvloop and httptools, the same number of processes sharing the port), and driven by
the same load generator in the same run, it gives the ceiling the ballot path is measured
against: the ratio is the share of that ceiling the real path reaches.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[2]


async def ballot(request: Request) -> Response:
    """Parse the ballot, answer as the real endpoint does, record nothing."""
    body = orjson.loads(await request.body())
    receipt = {
        "ballot_id": str(uuid.uuid4()),
        "election_id": request.path_params["election_id"],
        "status": "cast",
        "version": 1,
        "position": 0,
        "hash": "0" * 64,
        "replayed": False,
        "voter": bool(body.get("voter_id")),
    }
    return Response(orjson.dumps(receipt), status_code=201, media_type="application/json")


app = Starlette(routes=[Route("/api/elections/{election_id}/ballots", ballot, methods=["POST"])])


def serve(port: int, processes: int, log: Path) -> list[subprocess.Popen[bytes]]:
    """Start ``processes`` uvicorn processes of the bare app sharing ``port``."""
    started = []
    with log.open("ab") as out:
        for _ in range(processes):
            started.append(
                subprocess.Popen(  # noqa: S603 - our own module
                    [sys.executable, "-m", "infra.bench.bare", str(port)],
                    cwd=ROOT,
                    env=os.environ.copy(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    return started


def _main(port: int) -> None:
    import uvicorn

    shared = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    shared.bind(("127.0.0.1", port))
    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=[shared])


if __name__ == "__main__":
    _main(int(sys.argv[1]))
