"""A real uvicorn server in the test's event loop, spoken to over TCP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
