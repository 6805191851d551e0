"""A real uvicorn server in the test's event loop, spoken to over TCP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from api.app import create_app
from api.protocol import server_config
from api.server import DrainingServer
from infra.runtime.settings import Settings

ADMIN = "test-admin-token"
OPERATOR = "test-operator-token"
AUDITOR = "test-auditor-token"
CLIENT = "test-client-token"
# A fixed Ed25519 seed: the tests check signatures against its public key.
TEST_AUDIT_KEY = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
ADMIN_EMAIL = "admin@example.org"
ADMIN_PASSWORD = "correct horse battery staple"
JWT_KEY = "j" * 40
READ_MODELS_WITHIN = 30.0  # seconds: generous, the machine is shared


def settings_for(database_url: str, **overrides: object) -> Settings:
    settings = Settings(
        database_url=database_url,
        env="test",
        secret="s" * 40,
        audit_key=TEST_AUDIT_KEY,
        role_tokens={
            "admin": (ADMIN,),
            "operator": (OPERATOR,),
            "auditor": (AUDITOR,),
            "client": (CLIENT,),
        },
        super_admin_email=ADMIN_EMAIL,
        super_admin_password=ADMIN_PASSWORD,
        jwt_secret_key=JWT_KEY,
    )
    return settings.with_overrides(**overrides) if overrides else settings


@asynccontextmanager
async def running_api(
    settings: Settings,
    projections: tuple[str, ...] = ("tally", "catalog", "statistics"),
    **config: Any,
) -> AsyncIterator[str]:
    """Serve the API (and the projections, reading the store) on a free local port, with
    uvicorn configured as `cardinal serve` does (``config`` overrides any of it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = DrainingServer(
        server_config(
            settings,
            create_app(settings, projections=projections),
            **{"log_level": "warning", **config},
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces the start-up error
            await asyncio.sleep(0.01)
        await _read_models_exposed(settings.database_url or "", projections, task)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _read_models_exposed(
    database_url: str, projections: tuple[str, ...], serving: asyncio.Task[None]
) -> None:
    """Until each projection's first version is exposed: before that, a results read is a
    503 "Read model not ready" (a second or so on a fresh database)."""
    deadline = asyncio.get_running_loop().time() + READ_MODELS_WITHIN
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        while True:
            try:
                cursor = await conn.execute(
                    "SELECT count(*) FROM projections "
                    "WHERE name = ANY(%s) AND active_version IS NOT NULL",
                    (list(projections),),
                )
            except psycopg.errors.UndefinedTable:
                return  # not migrated (a test of that): no read model comes before it is
            row = await cursor.fetchone()
            if row is not None and row[0] == len(projections):
                return
            if serving.done():
                serving.result()
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the read models {projections} were not set up in time")
            await asyncio.sleep(0.02)
