"""A broker outage, said once and retried with backoff, by every process that connects.

While RabbitMQ is away each connecting task (the relay, every projection worker, the ingest
consumer, each API process's monitor) used to log every attempt, and aiormq logged an
ERROR of its own for each: some 60 lines in 14 s, none naming the broker or the setting
that points at it. Now each task says once per outage that it cannot reach "RabbitMQ at
host:port (AMQP_URL)" and why (the first reason only: a broker that restarts under a
connected task closes the connection, "CONNECTION_FORCED", then refuses it, which used to
be two warnings), once that it is back, and retries after 1 s doubling to ``CAP``; the
client libraries' own line per failed attempt, and aiormq's ERROR and traceback per
connection the broker closed as it stopped, and aio-pika's ERROR (with a DEBUG traceback)
when a robust channel's close callback cannot reopen it on the closed connection, are
dropped (the caller sees the error anyway). The password in AMQP_URL is never logged. The
saying and the backoff are ``infra/outage.py``'s, shared with the store's outages
(``infra/store/outage.py``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from urllib.parse import urlsplit

from aio_pika.robust_channel import RobustChannel
from aiormq.exceptions import ChannelInvalidStateError, ConnectionClosed

from infra.outage import Outage as SharedOutage

FIRST = 1.0  # seconds before the first retry
CAP = 10.0  # the longest wait between attempts: recovery stays within seconds

# The client libraries' lines per failed connection attempt, by logger and message template
# (each attempt's error reaches our own code, which says it once per outage).
_ATTEMPT_LINES = {
    "aiormq.connection": ("error when creating transport",),  # (and _READER_LINE)
    "aio_pika.robust_connection": (
        "Connection attempt to ",
        "Reconnect attempt failed ",
        # (INFO, as each connection is lost: a broker that takes the connection and closes
        # it, restarting, lost it once per attempt; the owner says the outage)
        "Connection to ",
    ),
}
# aiormq's WARNING, with a traceback, for each connection whose reader stopped: dropped
# where the broker closed the connection or it was cut (the owner says the outage), kept
# for anything else (a malformed frame).
_READER_LINE = "Cancelling cause reader exited abnormally"
_BROKER_GONE = (ConnectionClosed, ConnectionError, asyncio.IncompleteReadError)
# aiormq's ERROR for each connection the broker closes: dropped for CONNECTION_FORCED (320:
# the broker shutting down, or an operator closing it), which the owner says with its reason.
_CLOSE_LINE = "Unexpected connection close from remote"
_FORCED = 320


# aio-pika's ERROR (and DEBUG traceback) when a callback fails. A robust channel's close
# callback, as a stopping broker closes the connection, tries to reopen the channel on that
# connection and meets aiormq's "RuntimeError: <Connection ...> closed": dropped for exactly
# that (the robust connection reopens the channel once it reconnects, and the ingest
# consumer says the outage); any other callback's error, or any other error, is kept.
_CALLBACK_LOGGER = "aio_pika.tools"
_CALLBACK_LINES = ("Callback %r error: %s: %s", "Full traceback for callback %r error")
_NO_TRANSPORT = "No active transport in channel"


def where(amqp_url: str) -> str:
    """``RabbitMQ at host:port (AMQP_URL)``: the broker, never its user or password."""
    try:
        parts = urlsplit(amqp_url)
        host = parts.hostname or "localhost"
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    except ValueError:
        return "RabbitMQ (AMQP_URL)"
    host = f"[{host}]" if ":" in host else host
    return f"RabbitMQ at {host}:{port} (AMQP_URL)"


def reason(error: BaseException) -> str:
    """A short why: "connection refused" rather than "[Errno 111] Connect call failed ..."."""
    if isinstance(error, ChannelInvalidStateError):  # "<aio_pika.channel.Channel ...> closed"
        return "connection lost"
    found: BaseException | None = error
    while found is not None:
        if isinstance(found, ConnectionRefusedError) or (
            isinstance(found, OSError) and found.errno == errno.ECONNREFUSED
        ):
            return "connection refused"
        if isinstance(found, TimeoutError):
            return "no answer (timed out)"
        if isinstance(found, OSError) and found.strerror:
            return found.strerror.lower()
        found = found.__cause__ or found.__context__
    text = " ".join(str(error).split())
    if "111" in text and "refused" in text.lower():
        return "connection refused"
    return text or type(error).__name__


class _AttemptLines(logging.Filter):
    def __init__(self, templates: tuple[str, ...]) -> None:
        super().__init__()
        self.templates = templates

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            return True
        if record.msg == _READER_LINE and record.exc_info:
            return not isinstance(record.exc_info[1], _BROKER_GONE)
        if record.msg.startswith(_CLOSE_LINE) and isinstance(record.args, tuple):
            return record.args[1:2] != (_FORCED,)
        return not record.msg.startswith(self.templates)


class _ChannelReopenLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in _CALLBACK_LINES or not isinstance(record.args, tuple):
            return True
        if not record.args:
            return True
        # (the callback is read now, as the line is logged: aio-pika deletes it just after)
        callback = getattr(record.args[0], "callback", None)
        if getattr(callback, "__name__", None) != "_on_close" or not isinstance(
            getattr(callback, "__self__", None), RobustChannel
        ):
            return True
        error = record.args[2] if len(record.args) == 3 else None
        if record.exc_info:
            error = record.exc_info[1]
        return not _broker_gone_at_reopen(error)


def _broker_gone_at_reopen(error: object) -> bool:
    """What a robust channel's reopen meets when the connection went away meanwhile:
    aiormq's "<Connection ...> closed", or aio-pika's own "No active transport in channel"
    (the connection already without its transport, seen on a busy machine). The robust
    connection reopens the channel when it is back."""
    if type(error) is RuntimeError:
        return str(error).endswith(" closed")
    return type(error) is ChannelInvalidStateError and str(error) == _NO_TRANSPORT


def quiet_client_attempts() -> None:
    """Drop aiormq's and aio-pika's line per failed connection attempt, and aio-pika's when
    a robust channel cannot reopen on a connection the broker closed (idempotent); their
    other lines, and every other logger, are untouched."""
    for name, templates in _ATTEMPT_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _AttemptLines) for f in logger.filters):
            logger.addFilter(_AttemptLines(templates))
    callbacks = logging.getLogger(_CALLBACK_LOGGER)
    if not any(isinstance(f, _ChannelReopenLines) for f in callbacks.filters):
        callbacks.addFilter(_ChannelReopenLines())


class Outage(SharedOutage):
    """One task's view of the broker: ``failed`` says the outage once, whatever its
    reasons (as the store's does), and returns how long to wait; ``connected`` says the
    return once and resets the wait."""

    def __init__(
        self, amqp_url: str, who: str, logger: logging.Logger, *, first: float = FIRST
    ) -> None:
        super().__init__(
            where(amqp_url), who, logger, reason=reason, first=first, cap=CAP, once=True
        )
        quiet_client_attempts()
