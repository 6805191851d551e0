"""Passwords beside the URLs, and URLs never quoted in messages (operator review M1, M2).

`openssl rand -base64 32` gives / + =, which a URL cannot hold unencoded: the compose stack
hands the passwords over as PGPASSWORD and AMQP_PASSWORD instead, and a malformed
DATABASE_URL is refused naming the problem, never quoting the URL (or its password).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest
from psycopg.conninfo import conninfo_to_dict

from infra.cli.serve import redact
from infra.runtime.settings import Settings, SettingsError
from infra.store import store_environment

PASSWORD = "q3ZJ+0a/Xy9k@L2m%N8 p:Q#r?="


def test_pgpassword_goes_into_a_database_url_without_a_password() -> None:
    """libpq reads PGPASSWORD by itself, but the event store's connections are made from
    the URL's parts with an empty password, which hides PGPASSWORD: it is put in the URL."""
    settings = Settings.from_env(
        {"DATABASE_URL": "postgresql://cardinal@postgres:5432/cardinal", "PGPASSWORD": PASSWORD}
    )
    assert settings.database_url is not None
    params = conninfo_to_dict(settings.database_url)
    assert params["password"] == PASSWORD
    assert (params["user"], params["host"], params["port"], params["dbname"]) == (
        "cardinal",
        "postgres",
        "5432",
        "cardinal",
    )
    assert store_environment(settings.database_url)["POSTGRES_PASSWORD"] == PASSWORD
    assert Settings.from_env(settings.environment()) == settings  # children read it as is


def test_pgpassword_in_a_conninfo_string_and_a_urls_own_password_wins() -> None:
    given = Settings.from_env({"DATABASE_URL": "host=db dbname=c", "PGPASSWORD": PASSWORD})
    assert given.database_url is not None
    assert conninfo_to_dict(given.database_url)["password"] == PASSWORD
    own = "postgresql://cardinal:own@db/cardinal"
    assert Settings.from_env({"DATABASE_URL": own, "PGPASSWORD": "x"}).database_url == own
    assert Settings.from_env({"PGPASSWORD": "x"}).database_url is None


def test_amqp_password_goes_into_an_amqp_url_without_a_password() -> None:
    settings = Settings.from_env(
        {"AMQP_URL": "amqp://cardinal@rabbitmq:5672/vhost", "AMQP_PASSWORD": PASSWORD}
    )
    assert settings.amqp_url is not None
    parts = urlsplit(settings.amqp_url)
    assert (parts.username, parts.hostname, parts.port, parts.path) == (
        "cardinal",
        "rabbitmq",
        5672,
        "/vhost",
    )
    assert unquote(parts.password or "") == PASSWORD
    own = "amqp://cardinal:own@rabbitmq:5672/"
    assert Settings.from_env({"AMQP_URL": own, "AMQP_PASSWORD": "x"}).amqp_url == own


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://cardinal:s3cret pw@db:5432/cardinal", "unexpected spaces found"),
        ("postgresql://cardinal:s3cr%zzet@db:5432/cardinal", "invalid percent-encoded token"),
        ("postgres:/cardinal:s3cret@db/cardinal", 'missing "=" after'),
        ("postgresql://cardinal:s3cret@db/cardinal?s3cret=1", "invalid URI query parameter"),
        ("postgresql://cardinal:s3cret/pw@db:5432/cardinal", "port is not a number"),
    ],
)
def test_a_malformed_database_url_is_refused_without_its_password(url: str, problem: str) -> None:
    """psycopg's message quotes the URL, or the piece it could not read: it was appended
    to ours, and the password with it (operator review M2)."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"DATABASE_URL": url})
    said = str(refused.value)
    assert said.startswith("DATABASE_URL")
    assert problem in said
    assert "PGPASSWORD" in said
    assert "s3cr" not in said


def test_an_amqp_url_with_an_unencoded_slash_in_its_password_is_refused_saying_so() -> None:
    """aio-pika read amqp://cardinal:ab/cd@rabbitmq:5672/ as host "cardinal", port "ab",
    and failed each attempt for ever, naming neither the password nor the way out."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"AMQP_URL": "amqp://cardinal:s3cret/pw@rabbitmq:5672/"})
    said = str(refused.value)
    assert said.startswith("AMQP_URL's port is not a number")
    assert "AMQP_PASSWORD" in said
    assert "s3cr" not in said


@pytest.mark.parametrize(
    "url",
    [
        "host=db user=cardinal dbname=cardinal sslmode=require",
        "postgresql://cardinal@db/cardinal?sslmode=require",
        "postgresql://cardinal:@db/cardinal",
    ],
)
def test_the_start_up_summary_never_shows_the_merged_password(url: str) -> None:
    """`cardinal serve` and `cardinal api` print the database URL at start: a key=value
    DATABASE_URL with PGPASSWORD merged into it printed the password (merge review M2)."""
    settings = Settings.from_env({"DATABASE_URL": url, "PGPASSWORD": PASSWORD})
    assert settings.database_url is not None
    assert conninfo_to_dict(settings.database_url)["password"] == PASSWORD
    shown = redact(settings.database_url)
    assert "***" in shown
    for piece in (PASSWORD, "q3ZJ", "Xy9k", "q3ZJ%2B0a"):
        assert piece not in shown, shown
    assert redact("postgresql://u@h/d?password=s3cret&sslmode=require") == (
        "postgresql://u@h/d?password=***&sslmode=require"
    )
    assert redact("host=h password='it\\'s x' dbname=d") == "host=h password=*** dbname=d"


def test_an_empty_password_in_the_url_is_replaced_by_the_variable() -> None:
    """user:@host with PGPASSWORD gave the password ":" + PGPASSWORD, and AMQP_URL's
    user:@host ignored AMQP_PASSWORD (merge review L1)."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://cardinal:@db:5432/cardinal",
            "PGPASSWORD": PASSWORD,
            "AMQP_URL": "amqp://cardinal:@rabbitmq:5672/",
            "AMQP_PASSWORD": PASSWORD,
        }
    )
    assert settings.database_url is not None
    assert conninfo_to_dict(settings.database_url)["password"] == PASSWORD
    assert settings.amqp_url is not None
    assert unquote(urlsplit(settings.amqp_url).password or "") == PASSWORD
