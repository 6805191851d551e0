"""Rate limits held in PostgreSQL: shared by every API process, counted per client address
as resolved through trusted proxies, answered with Retry-After and RateLimit fields."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest

from api.forwarded import TrustedProxies
from infra.store.ratelimit import Quota, SharedRateLimiter
from tests.integration.client import VotingClient, assert_problem, bearer
from tests.servers import CLIENT, running_api, settings_for

LIMIT = 5


class CountingLimiter(SharedRateLimiter):
    """The real limiter, counting the statements it sends."""

    statements = 0

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.statements += 1
        await super()._serve(conn)


_addresses = itertools.count(1)


def _address() -> str:
    """A client address no other test uses (documentation range, RFC 5737)."""
    n = next(_addresses)
    return f"198.51.{n // 250}.{n % 250 + 1}"


@pytest.fixture(scope="module")
async def limited(database_url: str) -> AsyncIterator[list[str]]:
    """Two API servers (as two processes would be) on one database, behind a proxy."""
    settings = settings_for(
        database_url,
        enable_rate_limiting=True,
        max_votes_per_ip_per_hour=LIMIT,
        forwarded_allow_ips=("127.0.0.1/32",),
    )
    async with (
        running_api(settings, projections=()) as one,
        running_api(settings, projections=()) as two,
    ):
        yield [one, two]


async def _open_election(url: str) -> str:
    async with httpx.AsyncClient(base_url=url) as http:
        return await VotingClient(http).open_election()


async def _cast(
    url: str, election_id: str, forwarded: str, path: str = "ballots"
) -> httpx.Response:
    """One ballot change over a new connection."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await http.post(
            f"/api/elections/{election_id}/{path}",
            json={"voter_id": uuid.uuid4().hex, **({"choice": "a"} if path == "ballots" else {})},
            headers={**bearer(CLIENT), "X-Forwarded-For": forwarded},
        )


async def test_the_limit_holds_across_servers_and_says_when_to_come_back(
    limited: list[str],
) -> None:
    election_id = await _open_election(limited[0])
    client = _address()
    answers = await asyncio.gather(
        *(_cast(limited[n % 2], election_id, client) for n in range(4 * LIMIT))
    )
    accepted = [a for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code == 429]
    assert len(accepted) == LIMIT, [a.status_code for a in answers]
    assert len(refused) == 3 * LIMIT
    first = accepted[0]
    assert first.headers["ratelimit-policy"] == f'"ballots";q={LIMIT};w=3600'
    assert first.headers["ratelimit"].startswith('"ballots";r=')
    problem = assert_problem(refused[0], 429, "MAX_VOTES_PER_IP_PER_HOUR")
    assert problem["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert problem["violated-policies"] == ["ballots"]
    wait = int(refused[0].headers["retry-after"])
    assert 0 < wait <= 3600 // LIMIT
    assert refused[0].headers["ratelimit"] == f'"ballots";r=0;t={wait}'
    assert refused[0].headers["ratelimit-policy"] == f'"ballots";q={LIMIT};w=3600'


async def test_a_retry_of_a_recorded_ballot_gets_its_receipt_past_the_limit(
    limited: list[str],
) -> None:
    """A client whose answer was lost retries with the same key: past the limit it must
    still learn what became of its ballot (the retry changes nothing, so costs nothing)."""
    election_id = await _open_election(limited[0])
    client = _address()
    headers = {**bearer(CLIENT), "X-Forwarded-For": client}
    sent = []
    async with httpx.AsyncClient(base_url=limited[0], timeout=30) as http:
        for n in range(LIMIT):
            ballot = {"voter_id": f"retry-{n}", "choice": "a"}
            answer = await http.post(
                f"/api/elections/{election_id}/ballots",
                json=ballot,
                headers={**headers, "Idempotency-Key": f"k-{n}"},
            )
            assert answer.status_code == 201, answer.text
            sent.append((ballot, answer.json()))
        ballot, first = sent[2]
        again = await http.post(
            f"/api/elections/{election_id}/ballots",
            json=ballot,
            headers={**headers, "Idempotency-Key": "k-2"},
        )
        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["ballot_id"] == first["ballot_id"]
        assert again.json()["position"] == first["position"]
        # Anything but this very retry gets the limit's refusal and nothing more: a new
        # key, another ballot under the same key, an invalid ballot for a voter who voted
        # (a 422 there would tell who voted, unmetered).
        for changed, key in (
            (ballot, "k-other"),
            ({**ballot, "choice": "b"}, "k-2"),
            ({**ballot, "choice": "zzz"}, "k-2"),
            ({"voter_id": "never-voted", "choice": "zzz"}, "k-2"),
        ):
            refused = await http.post(
                f"/api/elections/{election_id}/ballots",
                json=changed,
                headers={**headers, "Idempotency-Key": key},
            )
            assert refused.status_code == 429, refused.text


async def test_withdrawals_draw_on_the_same_quota(limited: list[str]) -> None:
    election_id = await _open_election(limited[0])
    client = _address()
    for _ in range(LIMIT):
        assert (await _cast(limited[0], election_id, client)).status_code == 201
    withdrawal = await _cast(limited[1], election_id, client, path="withdrawals")
    assert_problem(withdrawal, 429, "ballot changes")


async def test_a_client_rotating_the_left_of_x_forwarded_for_stays_one_address(
    limited: list[str],
) -> None:
    election_id = await _open_election(limited[0])
    client = _address()
    answers = [
        await _cast(limited[n % 2], election_id, f"10.9.{n}.{n}, {client}")
        for n in range(2 * LIMIT)
    ]
    assert [a.status_code for a in answers].count(201) == LIMIT
    # Another client behind the same proxy has a quota of its own.
    assert (await _cast(limited[0], election_id, _address())).status_code == 201


def test_only_a_trusted_peer_may_name_the_client() -> None:
    """Without FORWARDED_ALLOW_IPS, X-Forwarded-For is the client's own say-so: ignored."""
    proxies = TrustedProxies(settings_for("postgresql://unused").forwarded_allow_ips)
    scope = {"client": ("127.0.0.9", 5000), "headers": [(b"x-forwarded-for", b"203.0.113.1")]}
    assert proxies.client(scope) == "127.0.0.9"


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "192.0.2.7"])

    def client(peer: str, *forwarded: str) -> str:
        headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
        return proxies.client({"client": (peer, 1), "headers": headers})

    assert client("10.1.2.3", "1.1.1.1, 203.0.113.5, 192.0.2.7") == "203.0.113.5"
    assert client("10.1.2.3", "1.1.1.1", "203.0.113.5") == "203.0.113.5"  # two header lines
    assert client("10.1.2.3", "10.0.0.1, 10.0.0.2") == "10.0.0.1"  # all trusted: left-most
    assert client("10.1.2.3") == "10.1.2.3"
    assert client("203.0.113.9", "1.1.1.1") == "203.0.113.9"  # untrusted peer
    assert client("2001:db8::1", "1.1.1.1") == "2001:db8::1"
    assert (
        TrustedProxies(["*"]).client(
            {"client": ("8.8.8.8", 1), "headers": [(b"x-forwarded-for", b"9.9.9.9")]}
        )
        == "9.9.9.9"
    )


@contextlib.asynccontextmanager
async def _limiters(database_url: str, count: int) -> AsyncIterator[list[SharedRateLimiter]]:
    """``count`` limiters on one database, as that many API processes have."""
    async with contextlib.AsyncExitStack() as stack:
        limiters = [SharedRateLimiter(database_url) for _ in range(count)]
        for limiter in limiters:
            await limiter.start()
            stack.push_async_callback(limiter.stop)
        yield limiters


async def test_concurrent_checks_from_many_processes_grant_exactly_the_quota(
    database_url: str,
) -> None:
    limiters = [SharedRateLimiter(database_url) for _ in range(4)]
    for limiter in limiters:
        await limiter.start()
    try:
        key = f"test:{uuid.uuid4().hex}"
        quota = Quota(37, 3600)
        decisions = await asyncio.gather(*(limiters[n % 4].hit(key, quota) for n in range(200)))
        assert sum(d.allowed for d in decisions) == 37
        refused = [d for d in decisions if not d.allowed]
        assert all(0 < d.next_unit <= 3600 / 37 + 1 for d in refused)
        # A unit given back can be taken again, once.
        await limiters[0].hit(key, quota, -1)
        again = await asyncio.gather(*(limiters[n].hit(key, quota) for n in range(4)))
        assert sum(d.allowed for d in again) == 1
    finally:
        for limiter in limiters:
            await limiter.stop()


async def test_units_come_back_one_at_a_time(database_url: str) -> None:
    limiter = SharedRateLimiter(database_url)
    await limiter.start()
    try:
        key = f"test:{uuid.uuid4().hex}"
        # One unit back every two seconds: a wake-up up to that late still finds one back,
        # not two (at one every half second, a loop 0.45 s late would have found two).
        quota = Quota(4, 8.0)
        assert [(await limiter.hit(key, quota)).allowed for _ in range(5)] == [True] * 4 + [False]
        refused = await limiter.hit(key, quota)
        assert not refused.allowed
        await asyncio.sleep(refused.next_unit + 0.05)
        back = await limiter.hit(key, quota)
        assert back.allowed
        assert back.remaining == 0
    finally:
        await limiter.stop()


async def test_a_large_quota_is_leased_in_blocks_and_still_never_exceeded(
    database_url: str,
) -> None:
    """Checks of a 1,000-unit quota go to the database about once per ten units, and four
    processes together never grant more than the quota (a few units may sit in leases)."""
    limiters = [CountingLimiter(database_url) for _ in range(4)]
    for limiter in limiters:
        await limiter.start()
    try:
        key = f"test:{uuid.uuid4().hex}"
        quota = Quota(1000, 3600)
        allowed = 0
        for n in range(900):
            allowed += (await limiters[n % 4].hit(key, quota)).allowed
        assert allowed == 900
        # One statement takes the unit wanted and ten more: one per eleven checks.
        assert sum(limiter.statements for limiter in limiters) <= 900 // 11 + 8
        for n in range(600):
            allowed += (await limiters[n % 4].hit(key, quota)).allowed
        assert 1000 - 4 * (1000 // 100) <= allowed <= 1000
    finally:
        for limiter in limiters:
            await limiter.stop()


async def test_the_limits_table_names_no_address(limited: list[str], database_url: str) -> None:
    """Each row keeps when its key last voted: keyed by the client's address, it linked an
    address to a ballot's log entry by time for any reader of the database (review
    helper-39). Rows are keyed by an HMAC of the address now."""
    election_id = await _open_election(limited[0])
    client = _address()
    assert (await _cast(limited[0], election_id, client)).status_code == 201
    with psycopg.connect(database_url) as conn:
        keys = [row[0] for row in conn.execute("SELECT key FROM rate_limits").fetchall()]
    assert keys
    assert not [key for key in keys if client in key or "198.51." in key]


def test_an_ipv6_network_is_one_quota_and_a_mapped_ipv4_is_itself() -> None:
    from api.ratelimit import quota_address

    assert (
        quota_address("2001:db8:0:0:1::1") == quota_address("2001:DB8::ffff:1") == ("2001:db8::/64")
    )
    assert quota_address("2001:db8:0:1::1") != quota_address("2001:db8::1")
    assert quota_address("::ffff:198.51.100.7") == "198.51.100.7"
    assert quota_address("198.51.100.7") == "198.51.100.7"
    # A dual-stack listener's IPv4 peer is a trusted proxy when its IPv4 address is.
    proxies = TrustedProxies(["172.16.0.0/12"])
    scope = {"client": ("::ffff:172.18.0.2", 1), "headers": [(b"x-forwarded-for", b"1.2.3.4")]}
    assert proxies.client(scope) == "1.2.3.4"
    # ... and so is one named in its mapped form, as before (review helper-46).
    assert TrustedProxies(["::ffff:172.18.0.2"]).client(scope) == "1.2.3.4"


async def test_a_refused_request_takes_nothing_of_the_quota(database_url: str) -> None:
    """A batch larger than what was left was granted what fit, refused, and those units
    were kept as this process's lease, then lost when a smaller lease replaced them: one
    refused import locked its host out for an hour (review helper-51). All or none."""
    async with _limiters(database_url, 2) as limiters:
        key = f"test:{uuid.uuid4().hex}"
        quota = Quota(200, 3600.0)  # (leased: 2 units ahead of need)
        assert (await limiters[0].hit(key, quota, 150)).allowed
        refused = await limiters[0].hit(key, quota, 100)
        assert not refused.allowed
        assert refused.remaining >= 48
        # What is left is there for either process, the one that refused too, once the
        # refused units are back (answered first, given back in the next statement: the
        # other process's check could overtake it, and failed once in 20 runs).
        await limiters[0].given_back()
        assert (await limiters[1].hit(key, quota, 25)).allowed
        assert (await limiters[0].hit(key, quota, 23)).allowed


async def test_a_batch_over_what_is_left_says_so(limited: list[str]) -> None:
    election_id = await _open_election(limited[0])
    client = _address()
    assert (await _cast(limited[0], election_id, client)).status_code == 201
    async with httpx.AsyncClient(base_url=limited[0], timeout=30) as http:
        response = await http.post(
            f"/api/elections/{election_id}/ballots/batch",
            json={"ballots": [{"voter_id": f"b{n}", "choice": "a"} for n in range(LIMIT)]},
            headers={**bearer(CLIENT), "X-Forwarded-For": client},
        )
    assert_problem(response, 429, f"this address has {LIMIT - 1} left")
    # ... and took nothing: what was left is still there.
    for _ in range(LIMIT - 1):
        assert (await _cast(limited[1], election_id, client)).status_code == 201


async def test_no_unit_is_lost_when_checks_race(database_url: str) -> None:
    """A check queued while another batch for its key was in flight set a lease in place
    of the one that batch set, and the units in it, charged already, were lost for the
    hour: about 10% of a quota under mixed costs (review helper-52). Leases add up now:
    whatever was not granted is still there to take."""
    async with _limiters(database_url, 3) as limiters:
        key = f"test:{uuid.uuid4().hex}"
        quota = Quota(1000, 3600.0)
        costs = [1, 1, 1, 2, 5, 13, 40] * 30
        checks = []
        for n, cost in enumerate(costs):  # (arriving while statements are in flight)
            checks.append(asyncio.ensure_future(limiters[n % 3].hit(key, quota, cost)))
            await asyncio.sleep(0.0005)
        decisions = await asyncio.gather(*checks)
        granted = sum(c for c, d in zip(costs, decisions, strict=True) if d.allowed)
        assert granted <= quota.limit
        # What is left: the leases of the three, then the database, one unit at a time.
        more = 0
        for limiter in limiters:
            while (await limiter.hit(key, quota)).allowed:
                more += 1
        assert granted + more == quota.limit


async def test_a_batch_over_the_hours_limit_is_told_no_wait_makes_it_fit(
    limited: list[str],
) -> None:
    """It carried a Retry-After of one unit, and an import waited on it for its whole
    patience (review helper-52)."""
    election_id = await _open_election(limited[0])
    async with httpx.AsyncClient(base_url=limited[0], timeout=30) as http:
        response = await http.post(
            f"/api/elections/{election_id}/ballots/batch",
            json={"ballots": [{"voter_id": f"o{n}", "choice": "a"} for n in range(LIMIT + 1)]},
            headers={**bearer(CLIENT), "X-Forwarded-For": _address()},
        )
    assert_problem(response, 429, "more than one address may make in an hour")
    assert "retry-after" not in response.headers


async def test_an_import_whose_batch_is_over_the_hours_limit_stops_at_once(
    limited: list[str], tmp_path: Path
) -> None:
    """It listed every ballot of every batch as refused, one by one (review helper-53)."""
    from tests.integration.test_bulk import _cardinal

    election_id = await _open_election(limited[0])
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text("".join(f'{{"voter_id": "i{n}", "choice": "a"}}\n' for n in range(20)))
    code, said = await _cardinal(
        "import", str(ballots), "--election", election_id, "--token", CLIENT,
        "--url", limited[0], "--batch", "10",
    )  # fmt: skip
    flat = " ".join(said.split())
    assert code == 1, said
    assert "use a smaller --batch" in flat
    assert "20 ballots were not sent" in flat


class _Failing(SharedRateLimiter):
    """The real limiter, whose next statement matching ``fail`` fails: ``after`` it ran
    (a connection lost after COMMIT) or ``before`` (it did nothing)."""

    fail: tuple[Any, str] | None = None
    failing: asyncio.Event  # (set while a statement that will fail "before" is in flight)

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await super()._serve(cast(psycopg.AsyncConnection[Any], _FailingConnection(conn, self)))


class _FailingConnection:
    def __init__(self, conn: psycopg.AsyncConnection[Any], limiter: _Failing) -> None:
        self.conn, self.limiter = conn, limiter

    async def execute(self, query: Any, params: Any = None) -> Any:
        fail = self.limiter.fail
        if fail is not None and params is not None and fail[0](params):
            self.limiter.fail = None
            if fail[1] == "after":
                await self.conn.execute(query, params)
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            self.limiter.failing.set()
            await asyncio.sleep(0.5)  # (in flight a while, then nothing done)
            raise psycopg.OperationalError("consuming input failed")
        return await self.conn.execute(query, params)


async def _settled(condition: Any, within: float = 20.0) -> None:
    """Until ``condition()`` holds, looking every millisecond."""
    for _ in range(int(within * 1000)):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition did not come to hold")


async def _takeable(limiter: SharedRateLimiter, key: str, quota: Quota) -> int:
    taken = 0
    while (await limiter.hit(key, quota)).allowed:
        taken += 1
    return taken


async def test_a_give_back_whose_statement_failed_is_not_sent_twice(database_url: str) -> None:
    """Re-queued after its statement committed and the connection was then lost, a
    give-back was applied twice: units minted, the quota exceeded (review helper-53)."""
    limiter = _Failing(database_url)
    await limiter.start()
    try:
        key, quota = f"test:{uuid.uuid4().hex}", Quota(50, 3600.0)  # (no lease)
        assert (await limiter.hit(key, quota, 40)).allowed
        limiter.fail = (lambda params: any(cost < 0 for cost in params[1]), "after")
        four, eight = await asyncio.gather(limiter.hit(key, quota, 4), limiter.hit(key, quota, 8))
        assert four.allowed
        assert not eight.allowed  # (6 granted toward it, given back once)
        await _settled(lambda: not limiter._giving_back)  # (its statement failed)
        assert await _takeable(limiter, key, quota) == 6
    finally:
        await limiter.stop()


async def test_held_units_of_a_check_failed_by_a_lost_connection_are_kept(
    database_url: str,
) -> None:
    """A check waiting behind a statement that failed lost the leased units it held,
    charged already (review helper-53). Never sent, it now goes out on the next
    connection (review helper-71), its held units counted once."""
    limiter = _Failing(database_url)
    await limiter.start()
    try:
        key, quota = f"test:{uuid.uuid4().hex}", Quota(1000, 3600.0)  # (leases of 10)
        assert (await limiter.hit(key, quota)).allowed
        limiter.fail = (lambda params: params[0] != [key], "before")
        limiter.failing = asyncio.Event()
        other = asyncio.ensure_future(limiter.hit(f"test:{uuid.uuid4().hex}", quota))
        await limiter.failing.wait()  # the other key's statement in flight,
        mine = asyncio.ensure_future(limiter.hit(key, quota, 20))  # ... this one waits
        with pytest.raises(psycopg.OperationalError):
            await other
        assert (await mine).allowed
        assert await _takeable(limiter, key, quota) == 979
    finally:
        await limiter.stop()


async def test_a_restart_gives_back_the_units_its_lease_held(database_url: str) -> None:
    """Each stop threw its lease away: one ballot, then a restart, three times, left 999,
    990, 981 of a 1,000-unit quota (review): a stop now gives the unspent units back."""
    key, quota = f"test:{uuid.uuid4().hex}", Quota(1000, 3600.0)  # (leases of 10)
    seen = []
    for _ in range(3):
        limiter = SharedRateLimiter(database_url)
        await limiter.start()
        try:
            decision = await limiter.hit(key, quota)
            assert decision.allowed
            seen.append(decision.remaining)
        finally:
            await limiter.stop()
    assert seen == [999, 998, 997]
    await limiter.stop()  # again: given back once, never twice
    assert await _takeable_then_stop(database_url, key, quota) == 997


async def _takeable_then_stop(database_url: str, key: str, quota: Quota) -> int:
    limiter = SharedRateLimiter(database_url)
    await limiter.start()
    try:
        return await _takeable(limiter, key, quota)
    finally:
        await limiter.stop()


async def test_checks_never_sent_outlive_a_lost_connection(fresh_database_url: str) -> None:
    """The connection lost while a statement waited on a lock: the checks queued behind it,
    never sent, were failed. A sign-in's give-back was lost for good (a correct password
    kept counting as a failure) and a ballot was answered 503 although the limiter
    reconnected at once (review helper-71). They go out on the next connection now."""
    from infra.store.migrations import migrate

    migrate(fresh_database_url)
    account, other, ballots = (f"test:{uuid.uuid4().hex}" for _ in range(3))
    quota = Quota(10, 900.0)  # no lease: every unit goes to the database
    limiter = SharedRateLimiter(fresh_database_url)
    await limiter.start()
    try:
        assert (await limiter.hit(account, quota, 1)).allowed  # a failed sign-in, charged
        assert (await limiter.hit(other, quota, 1)).allowed
        async with await psycopg.AsyncConnection.connect(fresh_database_url) as locker:
            await locker.execute("SELECT * FROM rate_limits WHERE key = %s FOR UPDATE", (other,))
            blocked = asyncio.create_task(limiter.hit(other, quota, 1))  # in flight, held
            await _until_waiting_on_a_lock(fresh_database_url)
            give_back = asyncio.create_task(limiter.hit(account, quota, -1))  # never sent
            ballot = asyncio.create_task(limiter.hit(ballots, quota, 1))  # never sent
            await asyncio.sleep(0)
            with psycopg.connect(fresh_database_url, autocommit=True) as killer:
                killer.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            with pytest.raises(psycopg.Error):
                await blocked  # its statement was lost: it may have committed, not resent
            await locker.rollback()
        assert (await give_back).allowed
        assert (await ballot).allowed
        await limiter.given_back()
    finally:
        await limiter.stop()
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        rows: dict[str, Any] = dict(
            conn.execute(
                "SELECT key, (tat - extract(epoch FROM now())) / %s FROM rate_limits "
                "WHERE key = ANY(%s)",
                (quota.step, [account, ballots]),
            ).fetchall()
        )
    assert float(rows.get(account) or 0) < 0.5  # given back: nothing charged
    assert 0.5 < float(rows[ballots]) <= 1.0  # the ballot's unit, charged once


async def _until_waiting_on_a_lock(url: str) -> None:
    for _ in range(500):
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
        if row and row[0]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the limiter's statement never waited on the lock")
