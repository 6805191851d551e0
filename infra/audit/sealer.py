"""The sealer: links every committed entry into the hash chain, and signs checkpoints.

One sealer is active (advisory lock); it follows the log in position order after commit,
so the write path never waits for it. It signs a checkpoint at every election's Closed
entry (that election's final chain head, to publish with its results) and, while the log
grows, every ``checkpoint_interval`` seconds.

Before each round it checks that the chain's last link is still the one it linked last;
if not (links deleted or rewritten outside it), it logs an error naming both positions
and stops sealing and signing (``halted``) rather than sign over the altered chain.

Its session, like the relay's, ends after LEADER_IDLE_TIMEOUT of silence and is kept
talking while the process runs (infra/store/leader.py): a frozen sealer's lock goes to the
standby within about 30 s, and the standby says so when it takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psycopg
from psycopg import sql

from infra import metrics
from infra.audit.chain import ALGORITHM, GENESIS, Signer, chain_hash, entry_hash, filed_election
from infra.store import EVENTS_TABLE
from infra.store.leader import SESSION_ENDED, LeaderTimes, leader_session, said_ended
from infra.store.log import event_type
from infra.store.names import connection_name
from infra.store.outage import UNREACHABLE, StoreOutage

log = logging.getLogger(__name__)

SEALER_LOCK = 0x43415244_5345414C  # "CARDSEAL"
# The stream id as its 16 bytes (what the entry hash takes: no UUID object per entry).
PAGE = f"""
SELECT notification_id, uuid_send(originator_id), originator_version, topic, state
FROM {EVENTS_TABLE} WHERE notification_id > %s ORDER BY notification_id LIMIT %s
"""
# A page's links as two runs of 32-byte hashes beside its positions and their entries'
# elections: four values to send rather than four arrays dumped element by element.
INSERT_LINKS = """
INSERT INTO audit_chain (position, entry_hash, hash, election_id)
SELECT p, substr(%(entries)s::bytea, 32 * i::int - 31, 32),
       substr(%(hashes)s::bytea, 32 * i::int - 31, 32), election
FROM unnest(%(positions)s::bigint[], %(elections)s::uuid[]) WITH ORDINALITY AS t(p, election, i)
"""
RECORD_KEY = (
    "INSERT INTO audit_keys (key_id, algorithm, public_key) VALUES (%s, %s, %s) "
    "ON CONFLICT (key_id) DO NOTHING"
)
LAST_LINK = "SELECT position, hash FROM audit_chain ORDER BY position DESC LIMIT 1"
LAST_CHECKPOINT = "SELECT coalesce(max(position), 0) FROM audit_checkpoints"
HALTED_PAUSE = 60.0  # while halted, the error is said again this often
HALTED_KEEPALIVE = 5.0  # and the session kept alive this often (inside idle timeouts over 5 s)


class ChainAltered(Exception):
    """The chain's last link is not the one this sealer linked last: someone else deleted
    or rewrote links. Sealing on would sign, with the real key, a chain with a hole."""


class Sealer:
    def __init__(
        self,
        database_url: str,
        signer: Signer,
        *,
        page_size: int = 5000,
        checkpoint_interval: float = 30.0,
        poll_interval: float = 1.0,
        linger: float = 0.1,
        leader: LeaderTimes | None = None,
        halted_keepalive: float | None = None,
    ) -> None:
        """``leader``: its session's idle limit and keepalive (infra/store/leader.py), and
        ``halted_keepalive`` (HALTED_KEEPALIVE), when not the module's: tests."""
        self.database_url = database_url
        self.signer = signer
        self.page_size = page_size
        self.checkpoint_interval = checkpoint_interval
        self.poll_interval = poll_interval
        self.linger = linger
        self.leader = leader
        self.halted_keepalive = halted_keepalive
        self.position = 0
        # The chain's last link (position, hash), known while this sealer leads: nobody
        # else writes to the chain then. Each round reads the table's last link back (one
        # backward index read: 0.03 ms on a chain of a million links, about a round trip)
        # and halts if it is not this one: links were deleted or rewritten behind it.
        self._tip: tuple[int, bytes] | None = None
        self._store = StoreOutage(database_url, "sealer", log, first=poll_interval)
        self._key_recorded = False
        # Why this sealer stopped sealing and signing, once the chain was altered behind
        # its back (None: it seals). It stays so until the process restarts, and it keeps
        # the leader's lock meanwhile: a standby taking over would seal over the hole.
        self.halted: str | None = None
        metrics.SEALER_HALTED.set(0)

    async def run(self) -> None:
        """Seal forever, riding out database outages (said once, retried after 1 s
        doubling to 5 s: ``StoreOutage``); stand by while another one leads."""
        while True:
            pause = self.poll_interval
            try:
                # The session ends after LEADER_IDLE_TIMEOUT of silence, and is kept talking
                # while this process runs: a frozen sealer loses its lock within about 30 s.
                async with (
                    await psycopg.AsyncConnection.connect(
                        self.database_url,
                        autocommit=True,
                        application_name=connection_name("sealer"),
                    ) as conn,
                    leader_session(conn, self.leader),
                ):
                    self._store.connected()
                    await self._lead(conn)
            except asyncio.CancelledError:
                raise
            except SESSION_ENDED:
                said_ended(log, "sealer", self.leader)
            except UNREACHABLE as error:
                pause = self._store.failed(error)
            except psycopg.Error as error:
                log.warning("sealer interrupted (%s); retrying", error)
            finally:
                metrics.SEALER_LEADER.set(0)
            await asyncio.sleep(pause)

    def _halted_keepalive(self) -> float:
        return HALTED_KEEPALIVE if self.halted_keepalive is None else self.halted_keepalive

    async def _hold_halted(self, conn: psycopg.AsyncConnection[Any], *, said: bool) -> None:
        """Keep the lock and sign nothing, for ever: the error said every HALTED_PAUSE, and
        the session kept alive every HALTED_KEEPALIVE (silent, it ended at the server's
        idle_session_timeout, the lock with it, and a standby took over and sealed over
        the altered chain: merge review). A lost connection raises: run() reconnects, and
        the halt holds."""
        said_at = time.monotonic() if said else float("-inf")
        while True:
            if time.monotonic() - said_at >= HALTED_PAUSE:
                log.error("%s", self.halted)
                said_at = time.monotonic()
            await conn.execute("SELECT 1")
            await asyncio.sleep(self._halted_keepalive())

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> None:
        waiting_said = False
        while True:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (SEALER_LOCK,))
            row = await cursor.fetchone()
            if row is not None and row[0]:
                break
            if not waiting_said:
                log.info("another sealer is active; standing by")
                waiting_said = True
            await asyncio.sleep(self.poll_interval)
        metrics.SEALER_LEADER.set(1)
        if self.halted is not None:  # (and after a reconnection, still)
            await self._hold_halted(conn, said=False)
        self._tip = None
        self._key_recorded = False  # (a round rolled back may have lost it)
        await self._hold_lost_links(conn)
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_TABLE)))
        # Links lost in a crash are sealed again, identically (the chain is a function
        # of the log, signatures are deterministic): no need to wait for the WAL flush
        # that the ballot writers' commits wait on.
        await conn.execute("SET synchronous_commit = off")
        cursor = await conn.execute(LAST_LINK)
        row = await cursor.fetchone()
        log.info(
            "the sealer is the leader, sealing after position %d", 0 if row is None else row[0]
        )
        last_checkpoint = time.monotonic()
        while True:
            try:
                await self.seal_pending(conn)
                if time.monotonic() - last_checkpoint >= self.checkpoint_interval:
                    await self.checkpoint_head(conn, "periodic")
                    last_checkpoint = time.monotonic()
            except ChainAltered:  # said by _halt
                await self._hold_halted(conn, said=True)
            with contextlib.suppress(TimeoutError):
                async for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
                    pass
            # Under a stream of ballots a NOTIFY comes with every commit: a short pause
            # lets one round seal many commits (nothing on the write path waits for it).
            await asyncio.sleep(self.linger)

    async def _hold_lost_links(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """While the chain lacks links a checkpoint signed, seal and sign nothing: the
        error said every HALTED_PAUSE, the gauge ``cardinal_sealer_halted`` 1, the check
        (and with it the session) repeated every HALTED_KEEPALIVE. (It used to sleep a
        minute at a time, the gauge at 0, the session silent: HA review.)"""
        said_at = float("-inf")
        while (lost := await self.lost_links(conn)) is not None:
            metrics.SEALER_HALTED.set(1)
            if time.monotonic() - said_at >= HALTED_PAUSE:
                # Sealing on would sign, with the real key, whatever the log now holds there.
                log.error(
                    "the chain lost links it had signed (checkpoint %d at position %d): not "
                    "sealing; the store was tampered with or restored wrongly (see `cardinal "
                    "audit verify`)",
                    *lost,
                )
                said_at = time.monotonic()
            await asyncio.sleep(self._halted_keepalive())
        if said_at > float("-inf"):
            log.info("the chain holds the links its checkpoints signed again: sealing")
            metrics.SEALER_HALTED.set(0)

    async def seal_pending(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Link every entry not yet in the chain; return how many were sealed. Raises
        ChainAltered (and seals nothing) if the chain's last link is no longer the one
        this sealer linked last."""
        if self.halted is not None:
            raise ChainAltered(self.halted)
        cursor = await conn.execute(LAST_LINK)
        row = await cursor.fetchone()
        last = (int(row[0]), bytes(row[1])) if row else (0, GENESIS)
        if self._tip is None:
            self._tip = last
        elif last != self._tip:
            self._halt(last)
        position, previous = self._tip
        sealed = 0
        while True:
            cursor = await conn.execute(PAGE, (position, self.page_size), binary=True)
            rows = await cursor.fetchall()
            if not rows:
                break
            positions: list[str] = []
            entries: list[bytes] = []
            hashes: list[bytes] = []
            elections: list[str] = []  # 32 hex digits each, or NULL
            closes: list[tuple[int, bytes]] = []
            for entry_position, stream_id, version, topic, state in rows:
                kind = event_type(topic)
                entry = entry_hash(entry_position, stream_id, version, kind, state)
                previous = chain_hash(previous, entry)
                positions.append(str(entry_position))
                entries.append(entry)
                hashes.append(previous)
                election = filed_election(kind, stream_id, state)
                elections.append("NULL" if election is None else election.hex)
                if election is None and kind.startswith("Ballot"):
                    log.error(
                        "entry %d is a %s that names no election; sealed, not indexed",
                        entry_position,
                        kind,
                    )
                if kind == "ElectionClosed":
                    closes.append((entry_position, previous))
            self._tip = None  # unknown until this page commits
            async with conn.transaction():
                await conn.execute(
                    INSERT_LINKS,
                    {
                        "positions": "{" + ",".join(positions) + "}",
                        "entries": b"".join(entries),
                        "hashes": b"".join(hashes),
                        "elections": "{" + ",".join(elections) + "}",
                    },
                )
                for close_position, head in closes:
                    await self._sign(conn, close_position, head, "election closed")
            position = int(positions[-1])
            self._tip = (position, previous)
            sealed += len(positions)
            if len(rows) < self.page_size:
                break  # the page ended at the head: no need to ask again
        self._tip = (position, previous)
        self.position = position
        metrics.SEALER_POSITION.set(position)
        return sealed

    async def lost_links(self, conn: psycopg.AsyncConnection[Any]) -> tuple[int, int] | None:
        """The last checkpoint (id, position), where the chain no longer holds the head it
        signed: its links were deleted or rewritten after it was signed."""
        cursor = await conn.execute(
            "SELECT k.id, k.position, c.hash = k.head_hash FROM audit_checkpoints k "
            "LEFT JOIN audit_chain c ON c.position = k.position ORDER BY k.position DESC, "
            "k.id DESC LIMIT 1"
        )
        row = await cursor.fetchone()
        if row is None or row[2]:
            return None
        return int(row[0]), int(row[1])

    async def checkpoint_head(self, conn: psycopg.AsyncConnection[Any], reason: str) -> None:
        """Sign the chain head, unless it is signed already."""
        if self.halted is not None:
            raise ChainAltered(self.halted)
        cursor = await conn.execute(LAST_LINK)
        head = await cursor.fetchone()
        found = (int(head[0]), bytes(head[1])) if head else (0, GENESIS)
        if self._tip is not None and found != self._tip:
            # (An empty chain is (0, GENESIS), as seal_pending remembers it: compared as
            # "no link", a sealer idle from its start halted at its first periodic checkpoint.)
            self._halt(found)
        cursor = await conn.execute(LAST_CHECKPOINT)
        signed = await cursor.fetchone()
        if head is None or signed is None or int(head[0]) <= int(signed[0]):
            return
        await self._sign(conn, int(head[0]), bytes(head[1]), reason)

    def _halt(self, found: tuple[int, bytes]) -> None:
        """Stop sealing and signing for good: the chain changed behind this sealer."""
        remembered = self._tip
        assert remembered is not None
        if found[0] == remembered[0]:
            what = (
                f"the chain's last link, at position {found[0]}, is not the one this sealer "
                "linked there: links were rewritten"
            )
        else:
            what = (
                f"the chain's last link is at position {found[0]}, but this sealer linked "
                f"position {remembered[0]} last: links were "
                + ("deleted" if found[0] < remembered[0] else "added by someone else")
            )
        self.halted = (
            f"{what} outside the sealer. Not sealing or signing anything any more (a "
            "checkpoint now would sign over the altered chain with the real key); see "
            "`cardinal audit verify`, restore the chain or the store, then restart the sealer"
        )
        log.error("%s", self.halted)
        metrics.SEALER_HALTED.set(1)
        raise ChainAltered(self.halted)

    async def _sign(
        self, conn: psycopg.AsyncConnection[Any], position: int, head: bytes, reason: str
    ) -> None:
        await conn.execute(
            "INSERT INTO audit_checkpoints (position, head_hash, key_id, signature, reason) "
            "VALUES (%s, %s, %s, %s, %s)",
            (position, head, self.signer.key_id, self.signer.sign(position, head), reason),
        )
        if not self._key_recorded:
            # The public key beside the checkpoints it signs: after a rotation, an export
            # still lists the public key each earlier checkpoint names (a hint for the
            # auditor, never trusted by verify). Once per sealer: it keeps its key.
            await conn.execute(RECORD_KEY, (self.signer.key_id, ALGORITHM, self.signer.public_key))
            self._key_recorded = True
