"""The HTTP edge's settings: refused at start when they cannot be used, naming the variable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from api.routes import streams
from infra.runtime import settings as settings_module
from infra.runtime.settings import OVERVIEW_SHOWS, Settings, SettingsError


def _said(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The settings' records: caplog takes every logger's, and a thread of the worker's
    session API stack (its writer's) may say something meanwhile."""
    return [r for r in caplog.records if r.name == "infra.runtime.settings"]


PRODUCTION = {
    "CARDINAL_ENV": "production",
    "DATABASE_URL": "postgresql://db/cardinal",
    "CARDINAL_SECRET": "s" * 40,
    "CARDINAL_AUDIT_KEY": "ab" * 32,
    "CARDINAL_ADMIN_TOKEN": "a" * 32,
    "JWT_SECRET_KEY": "k" * 32,
    "METRICS_TOKEN": "m" * 32,
}


def test_production_refuses_to_start_without_a_jwt_secret_key() -> None:
    assert Settings.from_env(PRODUCTION).jwt_secret_key == "k" * 32
    with pytest.raises(SettingsError, match="JWT_SECRET_KEY"):
        Settings.from_env({**PRODUCTION, "JWT_SECRET_KEY": ""})


def test_production_refuses_to_start_with_open_metrics() -> None:
    """Without METRICS_TOKEN, GET /metrics answered anyone on the API's own port with the
    log's head and the ballots accepted, read afresh on each request: polling it timed
    every ballot of every election, secret ones included (secrecy review of ff1b34a, B).
    Development and tests keep them open."""
    with pytest.raises(SettingsError, match="these must be set: METRICS_TOKEN"):
        Settings.from_env({**PRODUCTION, "METRICS_TOKEN": ""})
    assert Settings.from_env({**PRODUCTION, "METRICS_TOKEN": ""}, service=False)
    assert Settings.from_env({"CARDINAL_ENV": "development"}).metrics_token is None


@pytest.mark.parametrize("token", ["m" * 32 + "\n", " " + "m" * 32])
def test_a_metrics_token_with_edge_spaces_is_refused(token: str) -> None:
    """Prometheus trims its credentials file; the token is compared exactly: a token pasted
    with a trailing newline would have refused every scrape, silently (merge review)."""
    with pytest.raises(SettingsError, match="METRICS_TOKEN starts or ends with a space"):
        Settings.from_env({**PRODUCTION, "METRICS_TOKEN": token})


def test_a_jwt_secret_key_under_32_bytes_is_refused_everywhere() -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET_KEY must be at least 32 bytes"):
        Settings.from_env({"JWT_SECRET_KEY": "k" * 31})
    assert Settings.from_env({"JWT_SECRET_KEY": "é" * 16}).jwt_secret_key  # 32 bytes


def test_the_administrators_login_needs_both_halves() -> None:
    with pytest.raises(SettingsError, match="SUPER_ADMIN_EMAIL and SUPER_ADMIN_PASSWORD"):
        Settings.from_env({"SUPER_ADMIN_EMAIL": "admin@example.org"})
    with pytest.raises(SettingsError, match="at least 12 characters"):
        Settings.from_env({"SUPER_ADMIN_EMAIL": "a@example.org", "SUPER_ADMIN_PASSWORD": "short"})
    hashed = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"
    both = Settings.from_env({"SUPER_ADMIN_EMAIL": "a@example.org", "SUPER_ADMIN_PASSWORD": hashed})
    assert both.super_admin_password == hashed


def test_forwarded_allow_ips_takes_addresses_and_cidr_blocks() -> None:
    settings = Settings.from_env({"FORWARDED_ALLOW_IPS": "10.0.0.0/8, 192.0.2.7,2001:db8::/32"})
    assert settings.forwarded_allow_ips == ("10.0.0.0/8", "192.0.2.7", "2001:db8::/32")
    assert Settings.from_env({"FORWARDED_ALLOW_IPS": "*"}).forwarded_allow_ips == ("*",)
    with pytest.raises(SettingsError, match="FORWARDED_ALLOW_IPS"):
        Settings.from_env({"FORWARDED_ALLOW_IPS": "proxy.internal"})


def test_children_get_the_edge_settings_back() -> None:
    settings = Settings.from_env(
        {
            **PRODUCTION,
            "FORWARDED_ALLOW_IPS": "10.0.0.0/8",
            "METRICS_TOKEN": "n" * 32,
            "METRICS_HOST": "::1",
        }
    )
    again = Settings.from_env(settings.environment())
    assert again == settings


@pytest.mark.parametrize(
    "named", [{"CARDINAL_VOTE_ENV": "production"}, {"ENVIRONMENT": "Production"}]
)
def test_the_deployment_guides_names_for_production_are_honoured(named: dict[str, str]) -> None:
    """The guide sets CARDINAL_VOTE_ENV=production and exports ENVIRONMENT=production; both
    were ignored, and a production deployment ran as development, generating its
    credentials (review helper-31)."""
    settings = {k: v for k, v in PRODUCTION.items() if k != "CARDINAL_ENV"}
    assert Settings.from_env({**settings, **named}).env == "production"
    with pytest.raises(SettingsError, match="JWT_SECRET_KEY"):
        Settings.from_env({**settings, **named, "JWT_SECRET_KEY": ""})
    with pytest.raises(SettingsError, match="named twice, differently"):
        Settings.from_env({**settings, **named, "CARDINAL_ENV": "development"})
    # Another program's ENVIRONMENT=staging is not ours to read.
    assert Settings.from_env({"ENVIRONMENT": "staging"}).env == "development"


@pytest.mark.parametrize(
    "given",
    [
        "postgresql+asyncpg://cardinal:pw@postgres:5432/cardinal",
        "postgresql+psycopg://cardinal:pw@postgres:5432/cardinal",
        "postgres+asyncpg://cardinal:pw@postgres:5432/cardinal",
        "PostgreSQL://cardinal:pw@postgres:5432/cardinal",
    ],
)
def test_the_deployment_guides_database_url_with_a_driver_is_read(
    given: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guide's DATABASE_URL=postgresql+asyncpg://... was refused with psycopg's parser
    message, 'missing "=" after ...' (operator review, M4): the driver is dropped, and
    the log says so in one line, once per process (cardinal ingest said it twice)."""
    monkeypatch.setattr(settings_module, "_READ_AS", set())
    with caplog.at_level("WARNING", logger="infra.runtime.settings"):
        settings = Settings.from_env({**PRODUCTION, "DATABASE_URL": given})
        assert Settings.from_env({**PRODUCTION, "DATABASE_URL": given}) == settings
    assert settings.database_url == "postgresql://cardinal:pw@postgres:5432/cardinal"
    (said,) = [record.getMessage() for record in _said(caplog)]
    assert said.startswith(f"DATABASE_URL: read {given.partition('://')[0]}:// as postgresql://")
    assert Settings.from_env(settings.environment()) == settings  # children read it as is


def test_a_postgres_url_and_a_conninfo_string_are_read_as_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for given in ("postgres://cardinal@db:5432/cardinal", "host=db dbname=cardinal"):
        assert Settings.from_env({"DATABASE_URL": given}).database_url == given
    assert not _said(caplog)
    with pytest.raises(SettingsError, match="DATABASE_URL must be a PostgreSQL connection URL"):
        Settings.from_env({"DATABASE_URL": "mysql+pymysql://db/cardinal"})


@pytest.mark.parametrize(
    ("named", "said"),
    [
        ({"ENVIRONMENT": "production"}, "in production (ENVIRONMENT=production)"),
        ({"CARDINAL_VOTE_ENV": "production"}, "in production (CARDINAL_VOTE_ENV=production)"),
        ({"CARDINAL_ENV": "production"}, "in production (CARDINAL_ENV=production)"),
    ],
)
def test_the_production_check_names_the_variable_that_was_set(
    named: dict[str, str], said: str
) -> None:
    """`ENVIRONMENT=production cardinal serve` answered "(CARDINAL_ENV=production)", a
    variable the operator never set (operator review, L4)."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(named)
    assert said in str(refused.value)
    assert str(refused.value).endswith("METRICS_TOKEN (.env.example describes each)")
    with pytest.raises(SettingsError, match="CARDINAL_VOTE_ENV must be development"):
        Settings.from_env({"CARDINAL_VOTE_ENV": "staging"})


def test_env_example_names_every_setting_production_requires() -> None:
    """.env.example said production needs five settings; it needs six (METRICS_TOKEN)
    (operator review, L3). Every variable it must hold is listed, and the comment names
    each required one."""
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"CARDINAL_ENV": "production"})
    required = str(refused.value).split("these must be set: ")[1].split(" (")[0].split(", ")
    assert len(required) == 6
    comment = (
        " ".join(line.lstrip("# ") for line in example.splitlines() if line.startswith("#"))
        .split("Production refuses to start without ")[1]
        .split("and never")[0]
    )
    for name in required:
        assert name in comment, name
        assert f"\n{name}=" in example, name


def test_closed_elections_kept_are_at_least_what_the_overview_shows() -> None:
    """Fewer, and every overview (GET /, public) read from the store each closed election
    it shows, every time (the merge review: 3 reads per call at a bound of 0)."""
    assert OVERVIEW_SHOWS == streams.OVERVIEW_LIMIT
    with pytest.raises(SettingsError, match="CLOSED_ELECTIONS_CACHED must be at least 100"):
        Settings.from_env({"CLOSED_ELECTIONS_CACHED": "0"})
    assert Settings.from_env({"CLOSED_ELECTIONS_CACHED": "100"}).closed_elections_cached == 100


def test_the_deployment_guides_unread_variables_are_named_once_with_what_to_use(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WORKER_COUNT, WORKER_TIMEOUT and POSTGRES_PASSWORD_FILE, set as the deployment guide
    says, were ignored without a word (docs review): one WARNING names them, and what to set
    instead; a shell's other *_FILE is not ours to name; a child of `serve` says nothing."""
    monkeypatch.setattr(settings_module, "_UNREAD_SAID", set(), raising=False)
    guide = {
        "WORKER_COUNT": "4",
        "WORKER_TIMEOUT": "60",
        "POSTGRES_PASSWORD_FILE": "/run/secrets/db_password",
        "JWT_SECRET_KEY_FILE": "/run/secrets/jwt",
        "LOG_FILE": "/var/log/cardinal-vote/health-monitor.log",
    }
    with caplog.at_level("WARNING", logger="infra.runtime.settings"):
        Settings.from_env({**guide, "CARDINAL_PARENT_PID": "1"})
        assert not _said(caplog)
        Settings.from_env(guide)
        Settings.from_env(guide)  # once per process
    (said,) = [record.getMessage() for record in _said(caplog)]
    assert "WORKER_COUNT (set WEB_CONCURRENCY" in said
    assert "WORKER_TIMEOUT (no equivalent)" in said
    assert "POSTGRES_PASSWORD_FILE (no *_FILE is read: set PGPASSWORD)" in said
    assert "JWT_SECRET_KEY_FILE (no *_FILE is read: set JWT_SECRET_KEY)" in said
    assert "LOG_FILE" not in said


@pytest.mark.parametrize(
    "variable",
    [
        "CARDINAL_ADMIN_TOKEN",
        "CARDINAL_OPERATOR_TOKEN",
        "CARDINAL_AUDITOR_TOKEN",
        "CARDINAL_CLIENT_TOKEN",
        "METRICS_TOKEN",
    ],
)
def test_production_refuses_a_short_role_or_metrics_token(variable: str) -> None:
    """CARDINAL_ADMIN_TOKEN='admin,shared-token' METRICS_TOKEN=m started in production, and
    Bearer admin created elections; a bearer check has no limit on failed tries (auth
    review). Every entry of a role's list counts; the message names the variable, never
    the token. Development and tests keep short tokens."""
    short = {variable: "a" * 32 + ",tiny" if variable != "METRICS_TOKEN" else "tiny"}
    with pytest.raises(SettingsError, match=f"{variable} is too short") as refused:
        Settings.from_env({**PRODUCTION, **short})
    assert "tiny" not in str(refused.value)
    assert Settings.from_env({**PRODUCTION, variable: "t" * 32}).is_production
    assert Settings.from_env({**short, "CARDINAL_ENV": "development"}).env == "development"


@pytest.mark.parametrize("environment", ["development", "production"])
def test_one_token_under_two_names_is_refused(environment: str) -> None:
    """shared-token listed for admin and auditor got only the later role, silently: POST
    /api/elections 403, GET /api/audit/events 200 (auth review). A role token that is also
    METRICS_TOKEN would hand its role to a scraper. Named by variable, never by token."""
    shared = "shared-token-" + "x" * 32
    base = {**PRODUCTION, "CARDINAL_ENV": environment}
    both_roles = {**base, "CARDINAL_ADMIN_TOKEN": "a" * 32 + "," + shared}
    both_roles["CARDINAL_AUDITOR_TOKEN"] = shared
    with pytest.raises(
        SettingsError, match="in both CARDINAL_ADMIN_TOKEN and CARDINAL_AUDITOR_TOKEN"
    ) as refused:
        Settings.from_env(both_roles)
    assert shared not in str(refused.value)
    with pytest.raises(SettingsError, match="in both CARDINAL_CLIENT_TOKEN and METRICS_TOKEN"):
        Settings.from_env({**base, "CARDINAL_CLIENT_TOKEN": shared, "METRICS_TOKEN": shared})
    # The same token twice in one role's list is one role: harmless.
    twice = Settings.from_env({**base, "CARDINAL_ADMIN_TOKEN": f"{shared},{shared}"})
    assert twice.tokens_for("admin") == (shared, shared)
