"""The Starlette application: routes, error handling, and the services' lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from api.again import read_again
from api.auth import Authenticator
from api.edge import running_edge
from api.middleware import RequestGuard
from api.problems import HANDLERS
from api.ratelimit import quota_address
from api.routes import (
    admin,
    audit,
    auth,
    ballots,
    docs,
    elections,
    health,
    metrics,
    pages,
    results,
    streams,
)
from api.schemas import BATCH_BODY_BYTES
from api.streams import StreamHub, StreamSlots
from infra import batched_metrics
from infra.audit.chain import Signer
from infra.ingest.service import consume_forever, ingester
from infra.runtime.bootstrap import running_services, tune_garbage_collection
from infra.runtime.settings import Settings
from projections.positions import PositionWatcher

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    relay: bool = False,
    projections: Sequence[str] = (),
    ingest: bool = False,
) -> Starlette:
    """The API for these settings, with the workers this process should also run
    (``ingest``: the RabbitMQ ballot consumer too, where AMQP_URL is set).

    Nothing connects until the lifespan starts.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with (
            running_services(settings, relay=relay, projections=projections) as services,
            running_edge(services) as edge,
        ):
            app.state.services = services
            app.state.edge = edge
            # Open streams per client address as the rate limits count one (per process).
            proxies = edge.limits.proxies
            slots = StreamSlots(
                settings.streams_per_client, lambda scope: quota_address(proxies.client(scope))
            )
            app.state.streams = StreamHub(
                _tally_moved(services.positions), slots, lambda: services.writer.health.up
            )
            consuming = None
            if ingest and settings.amqp_url is not None:
                consumer = ingester(settings, services.app, services.voter_keys)
                consuming = asyncio.create_task(consume_forever(consumer), name="ingest")
            tune_garbage_collection()
            metrics_flusher = asyncio.create_task(batched_metrics.flushing(), name="metrics")
            try:
                yield
            finally:
                metrics_flusher.cancel()
                batched_metrics.flush()
                if consuming is not None:
                    consuming.cancel()
                # Together, each bounded (HUB_STOP, REBUILDS_STOP): a rebuild child awaited
                # with no bound held the shutdown as long as it took to go.
                await asyncio.gather(
                    app.state.streams.stop(), _rebuilds_stopped(app.state.rebuilds.values())
                )

    # The hot path: served by RequestGuard directly, and first in the router's list too.
    casting = Route("/api/elections/{election_id}/ballots", ballots.cast, methods=["POST"])
    routes = [
        casting,
        Route("/api/health", read_again(health.health), methods=["GET"]),
        Route("/api/ready", read_again(health.ready), methods=["GET"]),
        Route("/api/elections", elections.create, methods=["POST"]),
        Route("/api/elections", read_again(elections.list_elections), methods=["GET"]),
        Route("/api/elections/stream", read_again(streams.elections_stream), methods=["GET"]),
        Route("/api/elections/{election_id}", read_again(elections.get_election), methods=["GET"]),
        Route("/api/elections/{election_id}/open", elections.open_election, methods=["POST"]),
        Route("/api/elections/{election_id}/close", elections.close_election, methods=["POST"]),
        Route("/api/elections/{election_id}/tokens", elections.issue_tokens, methods=["POST"]),
        Route("/api/elections/{election_id}/withdrawals", ballots.withdraw, methods=["POST"]),
        Route("/api/elections/{election_id}/ballots/batch", ballots.cast_batch, methods=["POST"]),
        Route("/api/elections/{election_id}/results", read_again(results.results), methods=["GET"]),
        Route(
            "/api/elections/{election_id}/results/stream",
            read_again(streams.results_stream),
            methods=["GET"],
        ),
        Route("/api/audit/events", read_again(audit.events), methods=["GET"]),
        Route("/api/audit/checkpoints", read_again(audit.checkpoints), methods=["GET"]),
        Route("/api/audit/public-key", read_again(audit.public_key), methods=["GET"]),
        Route("/api/audit/receipts/{digest}", read_again(audit.receipt), methods=["GET"]),
        Route(
            "/api/elections/{election_id}/events",
            read_again(audit.election_events),
            methods=["GET"],
        ),
        Route("/api/admin/projections", read_again(admin.projections), methods=["GET"]),
        Route("/api/admin/projections/{name}/rebuild", admin.rebuild, methods=["POST"]),
        Route("/metrics", read_again(metrics.metrics), methods=["GET"]),
        Route("/api/auth/login", auth.login, methods=["POST"]),
        Route("/api/auth/refresh", auth.refresh, methods=["POST"]),
        Route("/api/auth/logout", auth.logout, methods=["POST"]),
        *docs.routes(),
        *pages.routes(),
    ]
    middleware = [
        Middleware(
            RequestGuard,
            max_bytes=settings.max_body_bytes,
            hot_route=casting,
            handlers=HANDLERS,
            production=settings.is_production,
            # Up to 1,000 ballots: the bulk path alone takes larger bodies.
            larger={"/api/elections/{election_id}/ballots/batch": BATCH_BODY_BYTES},
        )
    ]
    if settings.allowed_origins:
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.allowed_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            ),
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    # /api/elections/ is not /api/elections: a 404, not a redirect to an absolute URL made
    # from the request's Host header (review helper-41).
    app.router.redirect_slashes = False
    app.state.auth = Authenticator(settings)
    app.state.signer = Signer(settings.audit_key) if settings.audit_key else None
    app.state.rebuilds = {}
    return app


# Seconds a rebuild child is given at shutdown, in all: to go on SIGTERM (it says it was
# interrupted: the old version keeps serving, and it can be run again), then, killed (its
# lock goes with its connection), REAP_WAIT to be reaped.
REBUILDS_STOP = 1.0
REAP_WAIT = 0.1


async def _rebuilds_stopped(children: Iterable[asyncio.subprocess.Process | None]) -> None:
    running = [c for c in children if c is not None and c.returncode is None]
    for child in running:
        child.terminate()
    waits = {asyncio.ensure_future(child.wait()): child for child in running}
    if not waits:
        return
    _, pending = await asyncio.wait(waits, timeout=REBUILDS_STOP - REAP_WAIT)
    for wait in pending:
        log.warning(
            "rebuild process %d did not stop on SIGTERM in time; killing it", waits[wait].pid
        )
        waits[wait].kill()
    if pending:
        await asyncio.wait(pending, timeout=REAP_WAIT)


def _tally_moved(positions: PositionWatcher) -> Callable[[int, float], Awaitable[int]]:
    """The tally's position once past ``seen`` (woken by its NOTIFY), or after ``patience`` s."""

    async def moved(seen: int, patience: float) -> int:
        await positions.wait_for("tally", seen + 1, patience)
        return positions.positions.get("tally", 0)

    return moved
