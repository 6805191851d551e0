"""The administrator's sign-in: short-lived access tokens acting as the admin role, rotating
refresh tokens kept as digests, one generic 401 for every failure, failures rate-limited."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import jwt
import psycopg
import pytest

from api.tokens import AUDIENCE, ISSUER
from tests.integration.client import VotingClient, assert_problem, bearer, options
from tests.servers import ADMIN_EMAIL, ADMIN_PASSWORD, JWT_KEY, running_api, settings_for

_addresses = itertools.count(1)


@pytest.fixture(scope="module")
async def server(database_url: str) -> AsyncIterator[str]:
    """An API behind a proxy on this machine, so each test signs in from its own address."""
    settings = settings_for(database_url, forwarded_allow_ips=("127.0.0.1",))
    async with running_api(settings, projections=()) as url:
        yield url


@pytest.fixture
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    n = next(_addresses)
    async with httpx.AsyncClient(
        base_url=server, timeout=30, headers={"X-Forwarded-For": f"192.0.2.{n}"}
    ) as client:
        yield client


async def _login(
    http: httpx.AsyncClient, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD
) -> httpx.Response:
    return await http.post("/api/auth/login", json={"email": email, "password": password})


async def test_signing_in_gives_an_access_token_that_acts_as_admin(
    http: httpx.AsyncClient,
) -> None:
    response = await _login(http, email="  Admin@Example.ORG ")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "bearer"
    assert 0 < tokens["expires_in"] <= 900
    claims = jwt.decode(
        tokens["access_token"], JWT_KEY, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER
    )
    assert claims["sub"] == ADMIN_EMAIL
    assert {"exp", "iat", "jti", "nbf"} <= set(claims)
    access = bearer(tokens["access_token"])
    created = await http.post(
        "/api/elections",
        json={"title": "Signed in", "method": "plurality", "options": options("a", "b")},
        headers=access,
    )
    assert created.status_code == 201, created.text
    assert (await http.get("/api/admin/projections", headers=access)).status_code == 200
    # Admin is not auditor (separation of duties), signed in or not.
    assert_problem(await http.get("/api/audit/events", headers=access), 403, "auditor")


async def test_every_sign_in_failure_is_the_same_401(http: httpx.AsyncClient) -> None:
    wrong_password = await _login(http, password="not the password at all")
    unknown = await _login(http, email="someone@example.org")
    assert_problem(wrong_password, 401, "email address or password is wrong")
    assert wrong_password.json() == unknown.json()
    assert wrong_password.headers["www-authenticate"] == unknown.headers["www-authenticate"]
    garbage = await http.post("/api/auth/refresh", json={"refresh_token": "cvr_nothing"})
    assert garbage.json() == wrong_password.json()


async def test_refresh_tokens_rotate_and_a_reused_one_ends_the_sign_in(
    http: httpx.AsyncClient, database_url: str
) -> None:
    first = (await _login(http)).json()
    second = await http.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    assert second.headers["cache-control"] == "no-store"
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    assert rotated["access_token"] != first["access_token"]
    # Stored as digests only.
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT digest FROM refresh_tokens").fetchall()
    assert stored
    assert all(first["refresh_token"].encode() not in bytes(row[0]) for row in stored)
    # The used token presented again: someone holds a copy. The whole sign-in ends.
    replay = await http.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert_problem(replay, 401, "sign in again")
    latest = await http.post("/api/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert_problem(latest, 401, "sign in again")


def _expired_rows(database_url: str) -> list[bytes]:
    """Rows past their expiry, used, revoked or neither: nothing can use them again."""
    digests = [uuid.uuid4().bytes * 2 for _ in range(3)]
    family = uuid.uuid4()
    with psycopg.connect(database_url) as conn:
        kinds = zip(digests, (True, False, False), (False, True, False), strict=True)
        for digest, used, revoked in kinds:
            conn.execute(
                "INSERT INTO refresh_tokens (digest, family, subject, issued_at, expires_at,"
                " used_at, revoked_at) VALUES (%s, %s, %s, now() - interval '13 hours',"
                " now() - interval '1 hour', CASE WHEN %s THEN now() - interval '12 hours' END,"
                " CASE WHEN %s THEN now() - interval '2 hours' END)",
                (digest, family, ADMIN_EMAIL, used, revoked),
            )
    return digests


def _still_stored(database_url: str, digests: list[bytes]) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM refresh_tokens WHERE digest = ANY(%s)", (digests,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_expired_refresh_tokens_go_and_a_reused_one_still_ends_the_sign_in(
    http: httpx.AsyncClient, database_url: str
) -> None:
    """Nothing deleted a row before (the soak review): one per sign-in and refresh, forever.
    A sign-in or a refresh now deletes the expired ones; a used one is kept until its own
    expiry, so presenting it again still ends its sign-in."""
    first = (await _login(http)).json()
    rotated = await http.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    old = _expired_rows(database_url)
    assert _still_stored(database_url, old) == 3
    other = (await _login(http)).json()  # a sign-in deletes them
    assert _still_stored(database_url, old) == 0
    old = _expired_rows(database_url)
    refreshed = await http.post("/api/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text  # and so does a refresh
    assert _still_stored(database_url, old) == 0
    with psycopg.connect(database_url) as conn:
        expired = conn.execute("SELECT count(*) FROM refresh_tokens WHERE expires_at <= now()")
        assert expired.fetchone() == (0,)
    # The used token, not expired, was kept: presented again, it ends its sign-in.
    replay = await http.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert_problem(replay, 401, "sign in again")
    latest = await http.post(
        "/api/auth/refresh", json={"refresh_token": rotated.json()["refresh_token"]}
    )
    assert_problem(latest, 401, "sign in again")
    # The other sign-in is untouched.
    again = await http.post(
        "/api/auth/refresh", json={"refresh_token": refreshed.json()["refresh_token"]}
    )
    assert again.status_code == 200, again.text


async def test_logout_revokes_the_refresh_token(http: httpx.AsyncClient) -> None:
    tokens = (await _login(http)).json()
    out = await http.post("/api/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert out.status_code == 204
    after = await http.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert_problem(after, 401, "sign in again")


async def test_forged_expired_or_foreign_access_tokens_are_401(
    http: httpx.AsyncClient,
) -> None:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": ADMIN_EMAIL,
        "role": "admin",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "x",
    }
    good = jwt.encode(claims, JWT_KEY, algorithm="HS256")
    assert (await http.get("/api/elections", headers=bearer(good))).status_code == 200
    forged = [
        jwt.encode(claims, "k" * 40, algorithm="HS256"),  # another key
        jwt.encode({**claims, "exp": now - 60}, JWT_KEY, algorithm="HS256"),  # expired
        jwt.encode({**claims, "aud": "elsewhere"}, JWT_KEY, algorithm="HS256"),
        jwt.encode({**claims, "iss": "elsewhere"}, JWT_KEY, algorithm="HS256"),
        jwt.encode({k: v for k, v in claims.items() if k != "jti"}, JWT_KEY, algorithm="HS256"),
        jwt.encode({**claims, "role": "auditor"}, JWT_KEY, algorithm="HS256"),
        jwt.encode({**claims, "role": ["admin"]}, JWT_KEY, algorithm="HS256"),  # not a name
        jwt.encode(claims, None, algorithm="none"),  # type: ignore[arg-type]
        good[:-4] + "AAAA",  # tampered signature
    ]
    for token in forged:
        response = await http.get("/api/elections", headers=bearer(token))
        assert_problem(response, 401, "not valid")


async def test_failed_sign_ins_are_limited_per_account(database_url: str) -> None:
    email = f"limited-{uuid.uuid4().hex[:8]}@example.org"  # an account no other test uses
    settings = settings_for(
        database_url, forwarded_allow_ips=("127.0.0.1",), super_admin_email=email
    )
    async with (
        running_api(settings, projections=()) as server,
        httpx.AsyncClient(base_url=server, headers={"X-Forwarded-For": "192.0.2.251"}) as http,
    ):
        await _refused_after_ten_failures(http, server, email)


async def _refused_after_ten_failures(http: httpx.AsyncClient, server: str, email: str) -> None:
    assert (await _login(http, email=email)).status_code == 200  # a success costs nothing
    for _ in range(10):
        assert (await _login(http, email=email, password="wrong password!")).status_code == 401
    refused = await _login(http, email=email)  # even the right password: the account waits
    problem = assert_problem(refused, 429, "too many failed sign-ins")
    assert "login-account" in problem["violated-policies"]
    assert int(refused.headers["retry-after"]) > 0
    assert '"login-account";q=10;w=900' in refused.headers["ratelimit-policy"]
    # From elsewhere too: the limit is the account's, not the address's.
    async with httpx.AsyncClient(
        base_url=server, headers={"X-Forwarded-For": "192.0.2.250"}
    ) as elsewhere:
        assert (await _login(elsewhere, email=email)).status_code == 429


async def test_failed_sign_ins_are_limited_per_address(http: httpx.AsyncClient) -> None:
    for n in range(30):
        assert (await _login(http, email=f"guess-{n}@example.org")).status_code == 401
    problem = assert_problem(await _login(http, email="another@example.org"), 429, "try again")
    assert problem["violated-policies"] == ["login-address"]


async def test_role_tokens_keep_working_beside_sign_in(voting: VotingClient) -> None:
    election_id = await voting.open_election()
    assert (await voting.cast(election_id, {"choice": "a"}, "still-works")).status_code == 201


async def test_a_new_password_or_key_ends_every_sign_in(database_url: str) -> None:
    """A refresh token outlived a change of the administrator's password: a stolen one
    kept admin access for good (review helper-38)."""
    settings = settings_for(database_url, forwarded_allow_ips=("127.0.0.1",))
    async with (
        running_api(settings, projections=()) as server,
        httpx.AsyncClient(base_url=server, headers={"X-Forwarded-For": "192.0.2.240"}) as http,
    ):
        kept = (await _login(http)).json()["refresh_token"]
        also = (await _login(http)).json()["refresh_token"]
    changed = settings_for(
        database_url, forwarded_allow_ips=("127.0.0.1",), super_admin_password="another one!!"
    )
    rekeyed = settings_for(
        database_url, forwarded_allow_ips=("127.0.0.1",), jwt_secret_key="k" * 40
    )
    for later, token in ((changed, kept), (rekeyed, also)):
        async with (
            running_api(later, projections=()) as server,
            httpx.AsyncClient(base_url=server, headers={"X-Forwarded-For": "192.0.2.241"}) as http,
        ):
            refused = await http.post("/api/auth/refresh", json={"refresh_token": token})
            assert_problem(refused, 401, "sign in again")
    async with (
        running_api(settings, projections=()) as server,
        httpx.AsyncClient(base_url=server, headers={"X-Forwarded-For": "192.0.2.242"}) as http,
    ):
        # Unchanged settings: a sign-in lives on (and a refused one stays ended).
        fresh = (await _login(http)).json()["refresh_token"]
        assert (await http.post("/api/auth/refresh", json={"refresh_token": fresh})).is_success
        again = await http.post("/api/auth/refresh", json={"refresh_token": kept})
        assert_problem(again, 401, "sign in again")


def test_the_dummy_check_costs_what_the_administrators_does() -> None:
    """With SUPER_ADMIN_PASSWORD given as an argon2 hash of cheaper parameters, an unknown
    address was checked against a dummy of the defaults: 7x slower (review helper-38)."""
    from argon2 import PasswordHasher, extract_parameters

    from api.login import AdminAccount

    cheap = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    account = AdminAccount(ADMIN_EMAIL, cheap.hash("the password"))
    stored, dummy = account._hashes()
    assert stored is not None
    assert extract_parameters(dummy) == extract_parameters(stored)
