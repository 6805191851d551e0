"""Configuration, read once from the environment (names as in ARCHITECTURE.md)."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import psycopg.conninfo
import psycopg.pq
from psycopg.conninfo import conninfo_to_dict

from infra.runtime.lifecycle import PARENT_ENV

log = logging.getLogger(__name__)

ROLES = ("admin", "operator", "auditor", "client")
# The fewest characters a role token or METRICS_TOKEN may have in production: as many as
# CARDINAL_SECRET's (a bearer check has no limit on failed tries).
TOKEN_AT_LEAST = 32
# What LOG_LEVEL may be: the levels both logging and uvicorn know by name.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Everything a Cardinal Vote process is configured with."""

    database_url: str | None = None
    amqp_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int = 8001
    log_level: str = "INFO"
    allowed_origins: tuple[str, ...] = ()
    max_votes_per_ip_per_hour: int = 1000
    enable_rate_limiting: bool = False
    env: str = "development"
    writer_max_batch: int = 500
    writer_max_queue: int = 20_000
    namespace: str = "cardinal"
    role_tokens: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    secret: str | None = None
    # Ed25519 seed (64 hex digits) that signs the audit checkpoints.
    audit_key: str | None = None
    data_dir: Path = Path(".cardinal")
    max_body_bytes: int = 64 * 1024
    # API processes `cardinal serve` runs (0: one per CPU, at most 4; 1: everything in one
    # process). Python runs one core per process, so a second core needs a second process.
    web_concurrency: int = 0
    # The HTTP edge (issue 13): who may sign in, whose X-Forwarded-For is believed, and
    # where metrics are served and with what token.
    super_admin_email: str | None = None
    super_admin_password: str | None = None
    jwt_secret_key: str | None = None
    forwarded_allow_ips: tuple[str, ...] = ()
    metrics_host: str | None = None
    metrics_token: str | None = None
    # Ballots from RabbitMQ (issue 16): the queue `cardinal ingest` consumes (default
    # <namespace>.votes.aggregation), its prefetch, and the most ballots cast per batch.
    ingest_queue: str | None = None
    ingest_prefetch: int = 1000
    ingest_batch: int = 5000
    # Results streams (Server-Sent Events) one client address may hold open per API process:
    # a dashboard wall's dozen screens fit; one host cannot take a process's connections.
    streams_per_client: int = 32
    # Closed client elections each API and ingest process keeps in memory (the least
    # recently used are read from the store again on use); open and draft ones, and token
    # elections, are always kept. At least the overview's 100: fewer, and every overview
    # (GET /, public) read from the store each closed one it shows. (The default is
    # domain.application.CLOSED_ELECTIONS_CACHED, the bound of an application made without
    # settings.)
    closed_elections_cached: int = 1000
    # The variable that named the environment (CARDINAL_ENV, or the deployment guide's
    # CARDINAL_VOTE_ENV or ENVIRONMENT), for messages about it.
    env_name: str = field(default="CARDINAL_ENV", compare=False, repr=False)

    @property
    def ingest_queue_name(self) -> str:
        return self.ingest_queue or f"{self.namespace}.votes.aggregation"

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def tokens_for(self, role: str) -> tuple[str, ...]:
        return self.role_tokens.get(role, ())

    @property
    def api_processes(self) -> int:
        return self.web_concurrency or max(1, min(4, os.cpu_count() or 1))

    def environment(self) -> dict[str, str]:
        """These settings as the environment variables they are read from (for children)."""
        env = {
            "HOST": self.host,
            "PORT": str(self.port),
            "METRICS_PORT": str(self.metrics_port),
            "LOG_LEVEL": self.log_level,
            "ALLOWED_ORIGINS": ",".join(self.allowed_origins),
            "MAX_VOTES_PER_IP_PER_HOUR": str(self.max_votes_per_ip_per_hour),
            "ENABLE_RATE_LIMITING": "true" if self.enable_rate_limiting else "false",
            "CARDINAL_ENV": self.env,
            "WRITER_MAX_BATCH": str(self.writer_max_batch),
            "WRITER_MAX_QUEUE": str(self.writer_max_queue),
            "CARDINAL_NAMESPACE": self.namespace,
            "CARDINAL_DATA_DIR": str(self.data_dir),
            "WEB_CONCURRENCY": str(self.web_concurrency),
            "FORWARDED_ALLOW_IPS": ",".join(self.forwarded_allow_ips),
            "INGEST_PREFETCH": str(self.ingest_prefetch),
            "INGEST_BATCH": str(self.ingest_batch),
            "STREAMS_PER_CLIENT": str(self.streams_per_client),
            "CLOSED_ELECTIONS_CACHED": str(self.closed_elections_cached),
        }
        for role in ROLES:
            env[f"CARDINAL_{role.upper()}_TOKEN"] = ",".join(self.tokens_for(role))
        optional = {
            "DATABASE_URL": self.database_url,
            "AMQP_URL": self.amqp_url,
            "CARDINAL_SECRET": self.secret,
            "CARDINAL_AUDIT_KEY": self.audit_key,
            "SUPER_ADMIN_EMAIL": self.super_admin_email,
            "SUPER_ADMIN_PASSWORD": self.super_admin_password,
            "JWT_SECRET_KEY": self.jwt_secret_key,
            "METRICS_HOST": self.metrics_host,
            "METRICS_TOKEN": self.metrics_token,
            "INGEST_QUEUE": self.ingest_queue,
        }
        env.update({name: value for name, value in optional.items() if value is not None})
        return env

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, service: bool = True
    ) -> Settings:
        """Read the settings from an environment (os.environ by default). ``service``:
        for running the service, which in production needs every secret; a command that
        only reads the store (`audit export`) needs only what it uses."""
        env = os.environ if environ is None else environ
        tokens = {role: _list(env.get(f"CARDINAL_{role.upper()}_TOKEN", "")) for role in ROLES}
        named, env_name = _environment(env, cls.env)
        settings = cls(
            database_url=_with_password(
                _database_url(env.get("DATABASE_URL") or None), env.get("PGPASSWORD") or None
            ),
            amqp_url=_amqp_with_password(
                env.get("AMQP_URL") or None, env.get("AMQP_PASSWORD") or None
            ),
            host=env.get("HOST", cls.host),
            port=_int(env, "PORT", cls.port),
            metrics_port=_int(env, "METRICS_PORT", cls.metrics_port),
            log_level=(env.get("LOG_LEVEL") or cls.log_level).upper(),
            allowed_origins=_list(env.get("ALLOWED_ORIGINS", "")),
            max_votes_per_ip_per_hour=_int(
                env, "MAX_VOTES_PER_IP_PER_HOUR", cls.max_votes_per_ip_per_hour
            ),
            enable_rate_limiting=_bool(env, "ENABLE_RATE_LIMITING", cls.enable_rate_limiting),
            env=named,
            env_name=env_name,
            writer_max_batch=_int(env, "WRITER_MAX_BATCH", cls.writer_max_batch, minimum=1),
            writer_max_queue=_int(env, "WRITER_MAX_QUEUE", cls.writer_max_queue, minimum=1),
            namespace=env.get("CARDINAL_NAMESPACE", cls.namespace),
            role_tokens={role: values for role, values in tokens.items() if values},
            secret=env.get("CARDINAL_SECRET") or None,
            audit_key=env.get("CARDINAL_AUDIT_KEY") or None,
            data_dir=Path(env.get("CARDINAL_DATA_DIR", str(cls.data_dir))),
            web_concurrency=_int(env, "WEB_CONCURRENCY", cls.web_concurrency),
            super_admin_email=env.get("SUPER_ADMIN_EMAIL") or None,
            super_admin_password=env.get("SUPER_ADMIN_PASSWORD") or None,
            jwt_secret_key=env.get("JWT_SECRET_KEY") or None,
            forwarded_allow_ips=_list(env.get("FORWARDED_ALLOW_IPS", "")),
            metrics_host=env.get("METRICS_HOST") or None,
            metrics_token=env.get("METRICS_TOKEN") or None,
            ingest_queue=env.get("INGEST_QUEUE") or None,
            ingest_prefetch=_int(env, "INGEST_PREFETCH", cls.ingest_prefetch, minimum=1),
            ingest_batch=_int(env, "INGEST_BATCH", cls.ingest_batch, minimum=1),
            streams_per_client=_int(env, "STREAMS_PER_CLIENT", cls.streams_per_client, minimum=1),
            closed_elections_cached=_int(
                env, "CLOSED_ELECTIONS_CACHED", cls.closed_elections_cached, OVERVIEW_SHOWS
            ),
        )
        settings.check(service=service)
        if PARENT_ENV not in env:  # (a child of `serve`: its parent said it)
            _say_unread(env)
        return settings

    def check(self, *, service: bool = True) -> None:
        if self.database_url is not None:
            _check_database_url(self.database_url)
        if self.amqp_url is not None:
            _check_amqp_url(self.amqp_url)
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}; got {self.log_level!r}"
            )
        if self.env not in ("development", "production", "test"):
            raise SettingsError(
                f"{self.env_name} must be development, production or test; got {self.env!r}"
            )
        if self.is_production and service:
            missing = [
                name
                for name, value in (
                    ("DATABASE_URL", self.database_url),
                    ("CARDINAL_SECRET", self.secret),
                    ("CARDINAL_AUDIT_KEY", self.audit_key),
                    ("CARDINAL_ADMIN_TOKEN", self.tokens_for("admin")),
                    ("JWT_SECRET_KEY", self.jwt_secret_key),
                    # Open metrics time every ballot of every election (the log's head and
                    # the ballot counters move with each): a secret election's too.
                    ("METRICS_TOKEN", self.metrics_token),
                )
                if not value
            ]
            if missing:
                raise SettingsError(
                    f"in production ({self.env_name}=production) these must be set: "
                    + ", ".join(missing)
                    + " (.env.example describes each)"
                )
        if self.audit_key is not None and not _is_hex(self.audit_key, 64):
            raise SettingsError(
                "CARDINAL_AUDIT_KEY must be an Ed25519 seed: 64 hex digits "
                "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        self._check_edge()
        self._check_tokens()
        if self.secret is not None and len(self.secret) < 32:
            raise SettingsError(
                "CARDINAL_SECRET must be at least 32 characters "
                "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
            )

    def _check_edge(self) -> None:
        """The login and proxy settings: a JWT key that HS256 can trust, both halves of
        the administrator's login or neither, and proxies that parse as addresses."""
        if self.jwt_secret_key is not None and len(self.jwt_secret_key.encode()) < 32:
            raise SettingsError(
                "JWT_SECRET_KEY must be at least 32 bytes "
                "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        # Prometheus trims its credentials file and a scraper's bearer header carries no
        # edge spaces, while the token is compared exactly: every scrape would get a 401.
        if self.metrics_token is not None and self.metrics_token != self.metrics_token.strip():
            raise SettingsError(
                "METRICS_TOKEN starts or ends with a space or a line break (as a line pasted "
                "into .env can): remove them, or no scraper's token will ever match it"
            )
        if self.enable_rate_limiting and self.max_votes_per_ip_per_hour < 1:
            raise SettingsError(
                "MAX_VOTES_PER_IP_PER_HOUR must be at least 1 with ENABLE_RATE_LIMITING=true "
                f"(got {self.max_votes_per_ip_per_hour}); to limit nothing, turn it off"
            )
        if (self.super_admin_email is None) != (self.super_admin_password is None):
            raise SettingsError(
                "set both SUPER_ADMIN_EMAIL and SUPER_ADMIN_PASSWORD (or neither: no login)"
            )
        password = self.super_admin_password
        if password is not None and len(password) < 12 and not password.startswith("$argon2"):
            raise SettingsError(
                "SUPER_ADMIN_PASSWORD must be at least 12 characters (or an argon2 hash)"
            )
        for entry in self.forwarded_allow_ips:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise SettingsError(
                    "FORWARDED_ALLOW_IPS must be addresses or CIDR blocks separated by commas "
                    f"(or *); {entry!r} is neither"
                ) from None

    def _check_tokens(self) -> None:
        """Role tokens and METRICS_TOKEN: in production each at least TOKEN_AT_LEAST
        characters (a bearer check has no limit on failed tries: a short token is guessed),
        and in every environment no token under two names. A token listed for two roles got
        only the later one, silently (api/auth.py keeps one role per token); one that is
        also METRICS_TOKEN would hand its role to whoever scrapes metrics. The messages
        name the variables, never a token."""
        named = [
            (f"CARDINAL_{role.upper()}_TOKEN", token)
            for role in ROLES
            for token in self.tokens_for(role)
        ]
        if self.metrics_token is not None:
            named.append(("METRICS_TOKEN", self.metrics_token))
        if self.is_production:
            for variable, token in named:
                if len(token) < TOKEN_AT_LEAST:
                    said = "it is" if variable == "METRICS_TOKEN" else "each of its tokens is"
                    raise SettingsError(
                        f"{variable} is too short: in production {said} at least "
                        f"{TOKEN_AT_LEAST} characters "
                        "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
                    )
        holders: dict[str, list[str]] = {}
        for variable, token in named:
            if variable not in holders.setdefault(token, []):
                holders[token].append(variable)
        for variables in holders.values():
            if len(variables) > 1:
                raise SettingsError(
                    f"one token is set in both {' and '.join(variables[:2])}: a token "
                    "carries one role only (and METRICS_TOKEN none), so give each its own "
                    "token"
                )

    @property
    def metrics_listen_host(self) -> str:
        """Where worker metrics listen: METRICS_HOST, else HOST."""
        return self.metrics_host or self.host


# SQLAlchemy's form, as the deployment guide writes it (postgresql+asyncpg://...): the
# driver is ours to choose (psycopg), so its name is dropped; libpq reads the rest.
_SCHEMES = ("postgresql", "postgres")
_READ_AS: set[str] = set()  # the schemes said so in the log


def _database_url(raw: str | None) -> str | None:
    if raw is None:
        return None
    scheme, sep, rest = raw.strip().partition("://")
    base, plus, driver = scheme.partition("+")
    if not sep or base.lower() not in _SCHEMES or (not plus and base in _SCHEMES):
        return raw
    if scheme not in _READ_AS:  # once per process, however often the settings are read
        _READ_AS.add(scheme)
        log.warning(
            "DATABASE_URL: read %s:// as postgresql:// (Cardinal Vote connects with psycopg%s)",
            scheme,
            f", not {driver}" if driver else "",
        )
    return f"postgresql://{rest}"


# The deployment guide's variables that nothing here reads, and what to use instead: set,
# they would be taken for settings in force. Said once per process, at WARNING.
_UNREAD = {
    "WORKER_COUNT": "set WEB_CONCURRENCY, the API processes of `cardinal serve`; an `api` "
    "container is one: --scale api=N",
    "WORKER_TIMEOUT": "no equivalent",
}
_UNREAD_SAID: set[str] = set()


def _say_unread(env: Mapping[str, str]) -> None:
    unread = [name for name in sorted(env) if name in _UNREAD or name.endswith("_FILE")]
    unread = [name for name in unread if name not in _UNREAD_SAID and _is_unread(name)]
    if not unread:
        return
    _UNREAD_SAID.update(unread)
    log.warning(
        "set but not read (names from the deployment guide): %s",
        "; ".join(
            f"{name} ({_UNREAD[name]})"
            if name in _UNREAD
            else f"{name} (no *_FILE is read: set "
            f"{'PGPASSWORD' if name == 'POSTGRES_PASSWORD_FILE' else name[: -len('_FILE')]})"
            for name in unread
        ),
    )


def _is_unread(name: str) -> bool:
    """A guide's variable, or a secret's *_FILE form (POSTGRES_PASSWORD_FILE, or one of a
    variable read here): not any *_FILE of the environment (a shell's LOG_FILE)."""
    if name in _UNREAD or name == "POSTGRES_PASSWORD_FILE":
        return True
    stem = name[: -len("_FILE")]
    return stem in _SECRET_VARIABLES or (stem.startswith("CARDINAL_") and stem.endswith("_TOKEN"))


_SECRET_VARIABLES = frozenset(
    {
        "DATABASE_URL",
        "AMQP_URL",
        "PGPASSWORD",
        "AMQP_PASSWORD",
        "CARDINAL_SECRET",
        "CARDINAL_AUDIT_KEY",
        "JWT_SECRET_KEY",
        "SUPER_ADMIN_PASSWORD",
        "METRICS_TOKEN",
    }
)


# What a password must not hold unencoded in a URL (libpq and aio-pika read a URL's
# user:password@ by these), and where the password can go instead.
_ENCODE = (
    "a password holding / @ : # ? % or a space must be percent-encoded in the URL "
    "(python -c 'import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1], safe=\"\"))' "
    "PASSWORD), or left out of it and set in {variable}"
)


def _check_database_url(url: str) -> None:
    """DATABASE_URL must parse as libpq's URL or key=value string. The message never quotes
    the URL or a piece of it (psycopg's own message does: a piece may be the password)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise SettingsError(
            "DATABASE_URL must be a PostgreSQL connection URL "
            f"(postgresql://user@host:5432/database): {_unquoted(str(error))}; "
            + _ENCODE.format(variable="PGPASSWORD")
        ) from None
    # A password with a / ends the URL's host part early: libpq reads user:pass as the
    # host and the port, and fails each connection later, naming neither.
    ports = str(params.get("port") or "").split(",")
    if not all(port.strip().isdigit() or not port.strip() for port in ports):
        raise SettingsError(
            "DATABASE_URL's port is not a number (postgresql://user@host:5432/database); "
            + _ENCODE.format(variable="PGPASSWORD")
        )


def _unquoted(said: str) -> str:
    """psycopg's message with each quoted piece of the URL left out (libpq quotes what it
    could not read: a piece of the password, or the whole string); the names of libpq's
    own parameters, and "=", are kept."""
    keywords = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}

    def piece(match: re.Match[str]) -> str:
        quoted = match.group(1)
        return match.group(0) if quoted in keywords or quoted == "=" else "(not shown)"

    return re.sub(r'"([^"]*)"', piece, " ".join(said.split()))


def _with_password(url: str | None, password: str | None) -> str | None:
    """DATABASE_URL with PGPASSWORD in it, where the URL holds no password of its own (as
    libpq would use it: the event store's connections are made from the URL's parts, and
    an empty password there would hide PGPASSWORD from libpq)."""
    if url is None or password is None:
        return url
    try:
        if conninfo_to_dict(url).get("password") is not None:
            return url
    except psycopg.ProgrammingError:
        return url  # said by the check, which names the problem
    if "://" not in url:  # key=value form
        return psycopg.conninfo.make_conninfo(url, password=password)
    return _insert_password(url, password)


def _amqp_with_password(url: str | None, password: str | None) -> str | None:
    """AMQP_URL with AMQP_PASSWORD in it, where the URL holds no password of its own."""
    if url is None or password is None:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url  # said by the check
    if parts.password or parts.scheme.lower() not in ("amqp", "amqps"):
        return url  # (an empty one, user:@host, is none: as libpq reads DATABASE_URL's)
    return _insert_password(url, password)


def _insert_password(url: str, password: str) -> str:
    """scheme://user:password@host... from scheme://user@host..., the password
    percent-encoded (libpq and aio-pika decode it): any password works."""
    scheme, _, rest = url.partition("://")
    end = min((rest.index(c) for c in "/?" if c in rest), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    user, _, hosts = netloc.rpartition("@")
    user = user.partition(":")[0]  # (user:@host: an empty password, replaced)
    return f"{scheme}://{user}:{quote(password, safe='')}@{hosts}{tail}"


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in "0123456789abcdefABCDEF" for c in value)


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


# The elections the overview shows (api/routes/streams.py OVERVIEW_LIMIT): the fewest
# closed elections a process may keep.
OVERVIEW_SHOWS = 100


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number; got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}; got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false; got {raw!r}")


# The deployment guide users follow names the environment CARDINAL_VOTE_ENV, and its
# production steps export ENVIRONMENT=production: both are honoured, so that a production
# deployment is never taken for a development one (which would generate its credentials).
# ENVIRONMENT is a name other software uses too: only its "production" is read.
def _environment(env: Mapping[str, str], default: str) -> tuple[str, str]:
    """The environment's name, and the variable that gave it (CARDINAL_ENV by default)."""
    given = {
        name: env[name].strip().lower()
        for name in ("CARDINAL_ENV", "CARDINAL_VOTE_ENV")
        if env.get(name, "").strip()
    }
    if env.get("ENVIRONMENT", "").strip().lower() == "production":
        given["ENVIRONMENT"] = "production"
    if len(set(given.values())) > 1:
        named = ", ".join(f"{name}={value}" for name, value in given.items())
        raise SettingsError(f"the environment is named twice, differently ({named}): set one")
    return next(((value, name) for name, value in given.items()), (default, "CARDINAL_ENV"))


def _check_amqp_url(url: str) -> None:
    """AMQP_URL must be amqp:// or amqps://: aio-pika takes anything and fails each
    connection attempt, in the log, for ever. The message never quotes the URL (its
    password)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in ("amqp", "amqps"):
        said = f"{scheme}://" if sep and scheme.isascii() and scheme.isalnum() else "none"
        raise SettingsError(
            "AMQP_URL must be a RabbitMQ URL, amqp://user:password@host:5672/vhost "
            f"(or amqps:// for TLS); its scheme is {said}"
        )
    try:
        urlsplit(url).port  # noqa: B018 (read for its ValueError)
    except ValueError:  # (a / in the password ends the host part early, as in DATABASE_URL)
        raise SettingsError(
            "AMQP_URL's port is not a number (amqp://user:password@host:5672/vhost); "
            + _ENCODE.format(variable="AMQP_PASSWORD")
        ) from None
