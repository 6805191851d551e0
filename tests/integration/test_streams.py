"""The results streams (Server-Sent Events), conditional GETs and public results."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import orjson
import pytest
import uvicorn

from api import streams
from api.app import create_app
from api.protocol import server_config
from api.server import DrainingServer
from infra.runtime.settings import Settings
from tests.integration.client import VotingClient, assert_problem, bearer
from tests.servers import (
    ADMIN,
    AUDITOR,
    CLIENT,
    _read_models_exposed,
    running_api,
    settings_for,
)

WAIT = 20.0  # generous: the machine is shared


class Events:
    """The events (and comment lines) of one open stream, read as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, timeout: float = WAIT) -> tuple[int, dict[str, Any]]:  # noqa: ASYNC109
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> tuple[int, dict[str, Any]]:
        event_id, data = None, None
        async for line in self.lines:
            if line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                data = orjson.loads(line[6:])
            elif line == "" and data is not None:
                assert event_id is not None
                return event_id, data
        raise AssertionError("the stream ended")

    async def until(
        self,
        check: Any,
        timeout: float = WAIT,  # noqa: ASYNC109
    ) -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(max(0.1, deadline - time.monotonic()))
            if check(event[1]):
                return event


@asynccontextmanager
async def stream(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Events]:
    async with http.stream("GET", path, headers=headers or {}, timeout=WAIT) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Events(response)


async def test_the_stream_sends_what_results_serves_as_ballots_arrive(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("approval", live_results_step=1)
    path = f"/api/elections/{election_id}/results"
    async with stream(http, path + "/stream", bearer(AUDITOR)) as events:
        position, first = await events.next()
        assert first["ballots"] == 0
        assert position == first["position"]
        cast = await voting.cast(election_id, {"approve": ["a", "b"]}, "v1")
        assert cast.status_code == 201
        position, document = await events.until(lambda d: d["ballots"] == 1)
        assert position == document["position"] >= cast.json()["position"]
        served = await voting.results(election_id, AUDITOR, min_position=position)
        assert served.json() == document


async def test_last_event_id_resumes_with_the_current_snapshot(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("plurality", live_results_step=1)
    cast = await voting.cast(election_id, {"choice": "a"}, "v1")
    await voting.results(election_id, min_position=cast.json()["position"])
    headers = {**bearer(ADMIN), "Last-Event-ID": "1"}
    async with stream(http, f"/api/elections/{election_id}/results/stream", headers) as events:
        position, document = await events.next()
    assert document["ballots"] == 1
    assert position >= cast.json()["position"]


async def test_readers_see_stepped_results_on_the_stream(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("plurality", live_results_step=3)
    path = f"/api/elections/{election_id}/results"
    async with stream(http, path + "/stream", bearer(CLIENT)) as events:
        _, first = await events.next()
        assert first["stepped"] is True
        assert first["ballots"] == 0
        for n in range(3):
            assert (await voting.cast(election_id, {"choice": "b"}, f"v{n}")).status_code == 201
        position, document = await events.until(lambda d: d["ballots"] == 3)
    assert document["stepped"] is True
    served = await http.get(path, headers=bearer(CLIENT))
    assert served.json()["position"] == position == document["position"]


async def test_results_answer_conditional_gets(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election = await voting.create_election("plurality", live_results_step=1)
    election_id = election["id"]
    opened = await voting.open(election_id)
    path = f"/api/elections/{election_id}/results"
    # As of the open: a read taken before the projection had it would rightly change.
    first = await voting.results(election_id, AUDITOR, opened["position"])
    assert "warning" not in first.headers
    tag = first.headers["etag"]
    again = await http.get(path, headers={**bearer(AUDITOR), "If-None-Match": tag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == tag
    cast = await voting.cast(election_id, {"choice": "c"}, "v1")
    moved = await http.get(
        path,
        params={"min_position": cast.json()["position"]},
        headers={**bearer(AUDITOR), "If-None-Match": tag},
    )
    assert moved.status_code == 200
    assert moved.headers["etag"] != tag


async def test_if_none_match_star_is_304_while_the_results_exist(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """RFC 9110 13.1.2: "*" matches any current representation, so a GET holding it is
    answered 304 whenever the results exist, and with a 404 where there are none."""
    election_id = await voting.open_election("plurality")
    path = f"/api/elections/{election_id}/results"
    held = await http.get(path, headers={**bearer(AUDITOR), "If-None-Match": "*"})
    assert held.status_code == 304
    assert held.content == b""
    assert held.headers["etag"].startswith('"')
    missing = await http.get(
        "/api/elections/00000000-0000-4000-8000-000000000000/results",
        headers={**bearer(AUDITOR), "If-None-Match": "*"},
    )
    assert missing.status_code == 404


async def test_public_results_are_read_without_a_token(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    public = await voting.open_election("plurality", public_results=True, live_results_step=1)
    private = await voting.open_election("plurality")
    hidden = await voting.open_election(
        "plurality", public_results=True, results_visibility="after_close"
    )
    # The election document is not public (README: results, stream and page are), and the
    # 401 says which token it needs and where a public election's results are.
    unread = await http.get(f"/api/elections/{public}")
    detail = assert_problem(unread, 401, "a role's token or a voter token issued for")["detail"]
    assert "public_results makes only its results" in detail
    assert (await http.get(f"/api/elections/{public}/results")).status_code == 200
    assert (await http.get(f"/api/elections/{private}/results")).status_code == 401
    assert (await http.get(f"/api/elections/{private}/results/stream")).status_code == 401
    assert (await http.get(f"/api/elections/{hidden}/results")).status_code == 403
    assert (await http.get(f"/api/elections/{hidden}/results/stream")).status_code == 403
    election = (await http.get(f"/api/elections/{private}", headers=bearer(ADMIN))).json()
    assert election["public_results"] is False
    async with stream(http, f"/api/elections/{public}/results/stream") as events:
        _, document = await events.next()
        assert document["stepped"] is False  # step 1: exact for everyone
    closed = await voting.close(hidden)
    after = {"min_position": closed["position"]}
    assert (await http.get(f"/api/elections/{hidden}/results", params=after)).status_code == 200


async def test_the_overview_stream_follows_opens_and_closes(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    async with stream(http, "/api/elections/stream", bearer(ADMIN)) as events:
        await events.next()
        election = await voting.create_election("borda", public_results=True, live_results_step=1)
        await voting.open(election["id"])

        def entry(document: dict[str, Any]) -> dict[str, Any] | None:
            found = [e for e in document["elections"] if e["id"] == election["id"]]
            return found[0] if found else None

        await events.until(lambda d: (e := entry(d)) is not None and e["status"] == "open")
        await voting.cast(election["id"], {"ranking": ["a", "b", "c"]}, "v1")
        await events.until(lambda d: (e := entry(d)) is not None and e["ballot_entries"] == 1)
        await voting.close(election["id"])
        await events.until(lambda d: (e := entry(d)) is not None and e["final"])
    private = await voting.open_election("plurality")
    async with stream(http, "/api/elections/stream") as events:
        _, document = await events.next()
    ids = {e["id"] for e in document["elections"]}
    assert election["id"] in ids
    assert private not in ids


async def test_the_public_overview_does_not_tick_with_ballots_it_does_not_show(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """Its position was the tally's: an anonymous viewer saw every ballot of every
    election, private ones too, and each ballot of a public election counted in steps
    (review helper-30)."""
    public = await voting.create_election("plurality", public_results=True, live_results_step=10)
    await voting.open(public["id"])
    private = (await voting.create_election("plurality"))["id"]
    opened = await voting.open(private)
    # The tally's overview row of an election appears (and the public overview moves)
    # when the tally applies its Created entry: a slow tally would tick the stream with
    # that creation, not a ballot. Both elections are in the tally before it opens.
    for election_id in (public["id"], private):
        caught_up = await voting.results(election_id, min_position=opened["position"])
        assert "warning" not in caught_up.headers
    async with stream(http, "/api/elections/stream") as events:
        await events.until(
            lambda d: any(e["id"] == public["id"] and e["status"] == "open" for e in d["elections"])
        )
        last = None
        for n in range(3):
            await voting.cast(private, {"choice": "a"}, f"private-{n}")
            last = await voting.cast(public["id"], {"choice": "a"}, f"public-{n}")
        assert last is not None
        await voting.results(public["id"], min_position=last.json()["position"])
        with pytest.raises(TimeoutError):
            await events.next(timeout=streams.IDLE_REFRESH + 2.0)


async def test_heartbeats_keep_an_idle_stream_alive(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "HEARTBEAT", 0.2)
    election_id = await voting.open_election("plurality")
    async with stream(
        http, f"/api/elections/{election_id}/results/stream", bearer(ADMIN)
    ) as events:
        await events.next()
        deadline = time.monotonic() + WAIT
        while ": heartbeat" not in events.comments:  # (an event may come first: the
            assert time.monotonic() < deadline  # tally reaching the Opened entry)
            with contextlib.suppress(TimeoutError):
                await events.next(timeout=0.5)
    assert ": heartbeat" in events.comments


async def test_a_reader_that_does_not_read_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "SEND_TIMEOUT", 0.2)
    hung_up: list[bool] = []
    stalled = asyncio.Event()

    async def send(message: MutableMapping[str, Any]) -> None:
        await stalled.wait()  # a client whose socket buffer is full

    sent = await streams._send({streams.HANGUP: lambda: hung_up.append(True)}, send, b"x")
    assert sent is False
    assert hung_up == [True]


async def test_streams_end_when_the_server_shuts_down(database_url: str) -> None:
    voting_http = None
    async with running_api(settings_for(database_url), projections=("tally",)) as url:
        voting_http = httpx.AsyncClient(base_url=url, timeout=WAIT)
        voting = VotingClient(voting_http)
        election_id = (await voting.create_election("plurality"))["id"]
        opened = int((await voting.open(election_id))["position"])
        # (Once the tally has the Opened entry, where the document is dated: its event,
        # sent after the first one, would otherwise be read after the shutdown.)
        await voting.results(election_id, ADMIN, min_position=opened)
        response = await voting_http.send(
            voting_http.build_request(
                "GET", f"/api/elections/{election_id}/results/stream", headers=bearer(ADMIN)
            ),
            stream=True,
        )
        events = Events(response)
        await events.next()
        stopping = time.monotonic()
    # running_api returns once uvicorn has stopped: the open stream did not hold it up
    # for the graceful-shutdown timeout (8 s, api.protocol.GRACE).
    assert time.monotonic() - stopping < 8
    with pytest.raises((AssertionError, httpx.HTTPError)):
        await events.next(timeout=5)
    await response.aclose()
    await voting_http.aclose()


async def test_one_view_per_election_and_rights_feeds_every_reader(database_url: str) -> None:
    """Twenty readers of one election are one view of the process's hub: one document
    built per change, handed to each of them (no reader queries the database itself)."""
    settings = settings_for(database_url)
    app = create_app(settings, projections=("tally",))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(server_config(settings, app, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.01)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT) as http:
            voting = VotingClient(http)
            election_id = await voting.open_election("plurality", live_results_step=1)
            path = f"/api/elections/{election_id}/results/stream"
            async with contextlib.AsyncExitStack() as stack:
                readers = [
                    await stack.enter_async_context(stream(http, path, bearer(ADMIN)))
                    for _ in range(20)
                ]
                for reader in readers:
                    await reader.next()
                hub: streams.StreamHub = app.state.streams
                assert len(hub.views) == 1
                assert hub.subscribers == 20
                sent = hub.sent
                await voting.cast(election_id, {"choice": "a"}, "v1")
                for reader in readers:
                    await reader.until(lambda d: d["ballots"] == 1)
                assert hub.sent - sent >= 20
            await voting.results(election_id)  # the readers have left: so has their view
            deadline = time.monotonic() + WAIT
            while hub.views:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_a_stream_ends_when_its_access_token_does(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An access token was checked once, when its stream began: a stream opened at its
    14th minute lasted for good, admin-only results included (review helper-38)."""
    from api import tokens
    from api.tokens import AccessTokens
    from tests.servers import ADMIN_EMAIL, JWT_KEY

    monkeypatch.setattr(tokens, "LEEWAY", 1)  # the stream runs through the grace: keep it short
    election_id = await voting.open_election("plurality")
    token = AccessTokens(JWT_KEY, lifetime=2).issue(ADMIN_EMAIL, "admin")
    async with stream(
        http, f"/api/elections/{election_id}/results/stream", bearer(token)
    ) as events:
        await events.next()
        with pytest.raises(AssertionError, match="the stream ended"):
            await _to_the_end(events)


async def test_a_stream_runs_as_long_as_its_token_is_accepted(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token is accepted up to LEEWAY after its expiry (clock grace), but its stream
    ended at the expiry: one opened in the grace ended at once, and a browser reconnected
    every 2 s until the grace ran out (review). It runs until the token stops being
    accepted, and no longer."""
    from api import tokens
    from tests.servers import ADMIN_EMAIL, JWT_KEY

    monkeypatch.setattr(tokens, "LEEWAY", 4)  # one constant: acceptance and the stream's end
    election_id = await voting.open_election("plurality")
    token = tokens.AccessTokens(JWT_KEY, lifetime=-1).issue(ADMIN_EMAIL, "admin")  # expired
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    accepted_until = expires + tokens.LEEWAY
    async with stream(
        http, f"/api/elections/{election_id}/results/stream", bearer(token)
    ) as events:
        await events.next()
        with pytest.raises(AssertionError, match="the stream ended"):
            await _to_the_end(events)
        ended = time.time()
    assert ended >= accepted_until - 0.5, ended - accepted_until
    # The token is refused now: the stream did not outlive it.
    refused = await http.get(f"/api/elections/{election_id}/results", headers=bearer(token))
    assert_problem(refused, 401, "this access token is not valid")


async def _to_the_end(events: Events) -> None:
    """Events, perhaps, then the end of the stream (not WAIT's TimeoutError)."""
    while True:
        await events.next()


@asynccontextmanager
async def serving(
    settings: Settings, **config: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, streams.StreamHub]]:
    """The API with the tally (as running_api serves it), a client, and the process's hub."""
    app = create_app(settings, projections=("tally",))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = DrainingServer(server_config(settings, app, log_level="warning", **config))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.01)
        await _read_models_exposed(settings.database_url or "", ("tally",), task)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=base, timeout=WAIT) as http:
            yield http, app.state.streams
    finally:
        server.should_exit = True
        await task
        sock.close()


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def _refused(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """The answer to a stream asked for that must be refused (a stream served fails)."""
    async with http.stream("GET", path, headers=headers or {}, timeout=WAIT) as response:
        assert response.status_code != 200, "the stream was served"
        await response.aread()
    return response


@asynccontextmanager
async def _until_served(
    http: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> AsyncIterator[Events]:
    """A stream, once the server has noticed that one closed before it has (it learns of a
    client's close a moment later): refused with 429 until then."""
    deadline = time.monotonic() + WAIT
    while True:
        request = http.build_request("GET", path, headers=headers, timeout=WAIT)
        response = await http.send(request, stream=True)
        if response.status_code == 200:
            try:
                yield Events(response)
            finally:
                await response.aclose()
            return
        assert response.status_code == 429, await response.aread()
        await response.aclose()
        assert time.monotonic() < deadline, "a closed stream's slot was never given back"
        await asyncio.sleep(0.05)


async def test_a_client_past_its_stream_cap_is_refused_while_others_are_served(
    database_url: str,
) -> None:
    """One address could open streams until the process held as many connections as it
    may (2,000), and then nobody else was answered (review: streams DoS). Streams are now
    counted per client address, as the rate limits resolve it (through trusted proxies,
    an IPv6 address as its /64), over both stream endpoints, and given back on close."""
    settings = settings_for(database_url, streams_per_client=2, forwarded_allow_ips=("127.0.0.1",))
    async with serving(settings) as (http, hub):
        voting = VotingClient(http)
        election_id = await voting.open_election("plurality", public_results=True)
        path = f"/api/elections/{election_id}/results/stream"
        one, other = _from("203.0.113.7"), _from("198.51.100.9")
        async with contextlib.AsyncExitStack() as held:
            first = await held.enter_async_context(stream(http, path, one))
            await first.next()
            second = await held.enter_async_context(stream(http, "/api/elections/stream", one))
            await second.next()
            declared = (await http.get("/openapi.json")).json()["paths"]
            templates = {path: "/api/elections/{election_id}/results/stream"}
            for refused_path in (path, "/api/elections/stream"):
                refused = await _refused(http, refused_path, one)
                # (as the contract declares it: a client generated from it knows the 429)
                responses = declared[templates.get(refused_path, refused_path)]["get"]["responses"]
                assert "Retry-After" in responses["429"]["headers"]
                problem = assert_problem(refused, 429, "STREAMS_PER_CLIENT=2")
                assert "close one" in problem["detail"]
                assert problem["violated-policies"] == ["streams-per-client"]
                assert refused.headers["retry-after"] == str(streams.REFUSED_RETRY)
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.headers["x-content-type-options"] == "nosniff"
            async with stream(http, path, other) as theirs:  # another client: served
                await theirs.next()
            # An IPv6 client is its /64: a new address of the same network is no new quota.
            v6 = await held.enter_async_context(stream(http, path, _from("2001:db8:1:2::1")))
            await v6.next()
            await held.enter_async_context(stream(http, path, _from("2001:db8:1:2::2")))
            again = await _refused(http, path, _from("2001:db8:1:2:ffff::3"))
            assert again.status_code == 429
            assert hub.slots.total == 4
        # Every stream closed: their slots come back, and the client is served again.
        async with contextlib.AsyncExitStack() as held:
            readers = []  # (kept: a reader let go of closes its stream)
            for _ in range(2):
                readers.append(await held.enter_async_context(_until_served(http, path, one)))
                await readers[-1].next()
            assert (await _refused(http, path, one)).status_code == 429
        deadline = time.monotonic() + WAIT
        while hub.slots.total or hub.slots.open:
            assert time.monotonic() < deadline, (hub.slots.total, hub.slots.open)
            await asyncio.sleep(0.05)


async def test_a_client_that_vanishes_gives_its_streams_back(database_url: str) -> None:
    """A reader whose socket just closes (a tab killed, a network gone) frees its slot."""
    settings = settings_for(database_url, streams_per_client=1)
    async with serving(settings) as (http, hub):
        voting = VotingClient(http)
        election_id = await voting.open_election("plurality", public_results=True)
        port = int(str(http.base_url).rsplit(":", 1)[1].rstrip("/"))
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /api/elections/{election_id}/results/stream HTTP/1.1\r\n"
                "Host: x\r\n\r\n".encode()
            )
            await asyncio.wait_for(reader.readuntil(b"event: results"), WAIT)
            assert hub.slots.total == 1
            writer.transport.abort()  # no FIN handshake, no more reads: gone
            deadline = time.monotonic() + WAIT
            while hub.slots.total:
                assert time.monotonic() < deadline, "the vanished reader's slot is held"
                await asyncio.sleep(0.05)
        assert hub.slots.open == {}


async def test_streams_leave_connections_for_health_checks_and_ballots(
    database_url: str,
) -> None:
    """Streams together take at most STREAM_SHARE of a process's connections: past it a new
    stream is 503, and health checks, reads and ballots are still answered."""
    settings = settings_for(database_url, streams_per_client=100)
    limit, share = 20, 16  # streams.STREAM_SHARE (80%) of the connections
    async with serving(settings, limit_concurrency=limit) as (http, hub):
        voting = VotingClient(http)
        election_id = await voting.open_election(
            "plurality", public_results=True, live_results_step=1
        )
        path = f"/api/elections/{election_id}/results/stream"
        async with (
            httpx.AsyncClient(base_url=http.base_url, timeout=WAIT) as viewers,
            contextlib.AsyncExitStack() as held,
        ):
            readers = []  # (kept: a reader let go of closes its stream)
            for _ in range(share):
                readers.append(await held.enter_async_context(stream(viewers, path)))
                await readers[-1].next()
            refused = await _refused(viewers, path)
            problem = assert_problem(refused, 503, "as many as streams may")
            assert problem["title"] == "Busy"
            assert refused.headers["retry-after"] == str(streams.REFUSED_RETRY)
            assert hub.slots.total == share
            async with httpx.AsyncClient(base_url=http.base_url, timeout=WAIT) as someone:
                assert (await someone.get("/api/health")).status_code == 200
                results = await someone.get(f"/api/elections/{election_id}/results")
                assert results.status_code == 200
            cast = await voting.cast(election_id, {"choice": "a"}, "v1")
            assert cast.status_code == 201, cast.text
        # The streams closed: a new one is served again.
        deadline = time.monotonic() + WAIT
        while hub.slots.total:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with stream(http, path) as events:
            await events.next()


async def test_a_public_stream_sends_nothing_on_a_private_elections_ballot(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """Each event's id was the tally's position over every election: a closed public
    election's stream, read with no token, sent a new event after each ballot in a private
    election (review of time travel and streams, 1). Its position is its close now."""
    closed = await voting.open_election("plurality", public_results=True)
    await voting.cast(closed, {"choice": "a"}, "stream-closed")
    close = (await voting.close(closed))["position"]
    private = await voting.open_election("plurality")
    async with stream(http, f"/api/elections/{closed}/results/stream") as events:
        # (Once signed: the chain head the close published then changes the document. The
        # first may come before the tally has applied the close: open, with no such key.)
        position, first = await events.until(lambda document: document.get("final_chain_head"))
        assert position == first["position"] == close
        cast = await voting.cast(private, {"choice": "b"}, "stream-private")
        await voting.results(private, AUDITOR, min_position=cast.json()["position"])
        with pytest.raises(TimeoutError):
            await events.next(timeout=streams.IDLE_REFRESH + 2)


async def test_the_document_says_how_a_stream_is_framed_as_it_is(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """The contract typed both streams as a bare string: a client developer could not tell
    the frames, the data, the heartbeat or what a reconnection resumes (the client review).
    What it says now is held to the first frame a live stream sends."""
    document = (await http.get("/openapi.json")).json()
    said = {}
    for path, kind in (
        ("/api/elections/{election_id}/results/stream", "the results document"),
        ("/api/elections/stream", '"more": how many'),
    ):
        schema = document["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"][
            "schema"
        ]
        said[path] = schema["description"]
        for words in ("retry: 2000", "id: <position>", "event: results", ": heartbeat", kind):
            assert words in schema["description"], (path, words)
    election_id = await voting.open_election("plurality", live_results_step=1)
    cast = await voting.cast(election_id, {"choice": "a"}, "framed")
    counted = await http.get(
        f"/api/elections/{election_id}/results",
        params={"min_position": cast.json()["position"]},
        headers=bearer(ADMIN),
    )
    results = counted.json()
    path = f"/api/elections/{election_id}/results/stream"
    async with http.stream("GET", path, headers=bearer(ADMIN), timeout=WAIT) as response:
        first = b""
        async for chunk in response.aiter_raw():
            first += chunk
            if b"\n\n" in first:
                break
    head = first.partition(b"\n\n")[0]
    lines = head.split(b"\n")
    assert lines[0] == b"retry: 2000", lines
    assert lines[1].startswith(b"id: ")
    assert lines[2] == b"event: results", lines
    data = orjson.loads(lines[3].removeprefix(b"data: "))
    assert int(lines[1].removeprefix(b"id: ")) == data["position"]
    results = (
        await http.get(f"/api/elections/{election_id}/results", headers=bearer(ADMIN))
    ).json()
    assert data == results  # "the results document, as GET .../results answers it"
