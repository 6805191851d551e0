"""The HTTP edge's settings: refused at start when they cannot be used, naming the variable."""

from __future__ import annotations

import pytest

from infra.runtime.settings import Settings, SettingsError

PRODUCTION = {
    "CARDINAL_ENV": "production",
    "DATABASE_URL": "postgresql://db/cardinal",
    "CARDINAL_SECRET": "s" * 40,
    "CARDINAL_AUDIT_KEY": "ab" * 32,
    "CARDINAL_ADMIN_TOKEN": "admin",
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
            "METRICS_TOKEN": "m",
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
