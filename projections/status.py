"""Where every projection stands: version, state, position, lag, refusals, rebuild progress.

Refusals are counted from ``projection_rejections``, written by whichever process runs the
worker: ``dead_lettered``, one row per page refused (poison); ``unsigned``, the messages
refused for their signature, from the rows each worker writes at most once a minute with
how many since (projections/strangers.py ``Strangers.say``; so up to a minute late);
``stale``, the relay's pages of another store refused, written so too (STALE_ROW).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection

# How the rows that count messages refused for their signature begin, the number after it
# summed: "unsigned: 2997 message(s) not signed ..." (projections/strangers.py). No reason of
# a refused page begins so (an exception's name, or "undecodable page").
UNSIGNED_ROW = "unsigned: "
# And those that count relay pages of another store refused (projections/worker.py
# ``_write_stale``): "stale: 12 relay page(s) ...".
STALE_ROW = "stale: "
# A live projection that is behind and has not moved for this long is reported stalled.
STALLED_AFTER_SECONDS = 30.0
# A projection's position past the log's head (read in the same snapshot): it applied
# entries this store does not hold. Only pages of another store put them there (pages
# queued in the broker by the store this one was restored or failed over from, applied by a
# release before the check in projections/worker.py); a rebuild reads this store alone.
AHEAD_DETAIL = (
    "position {position:,} is past the log's last entry ({head:,}): this read model holds "
    "entries that are not in this store (the store was restored from a backup, or failed "
    "over, and the projections applied the old store's pages still queued in the broker); "
    "new entries up to {position:,} are not counted. Rebuild it: cardinal rebuild {name}"
)
# A rebuild that has not reported progress for this long was interrupted.
REBUILD_SILENT_SECONDS = 30.0

STATUS = """
SELECT r.name, r.active_version, r.building_version, r.state, r.detail,
       p.position, p.updated_at,
       r.rebuild_started_at, r.rebuild_position, r.rebuild_head, r.rebuild_rate, r.updated_at,
       (SELECT count(*) FROM projection_rejections j
        WHERE j.name = r.name AND j.reason NOT LIKE %(unsigned_like)s
          AND j.reason NOT LIKE %(stale_like)s),
       (SELECT coalesce(sum((regexp_match(j.reason, %(unsigned_count)s))[1]::bigint), 0)
        FROM projection_rejections j
        WHERE j.name = r.name AND j.reason LIKE %(unsigned_like)s),
       (SELECT coalesce(sum((regexp_match(j.reason, %(stale_count)s))[1]::bigint), 0)
        FROM projection_rejections j
        WHERE j.name = r.name AND j.reason LIKE %(stale_like)s),
       (SELECT coalesce(max(notification_id), 0) FROM cardinal_events),
       (SELECT count(*) FROM projection_set_aside s
        WHERE s.name = r.name AND s.version = r.active_version)
FROM projections r
LEFT JOIN projection_positions p ON p.name = r.name AND p.version = r.active_version
ORDER BY r.name
"""


async def projection_status(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
    """One entry per projection, as served by GET /api/admin/projections."""
    cursor = await conn.execute(
        STATUS,
        {
            "unsigned_like": f"{UNSIGNED_ROW}%",
            "unsigned_count": f"^{UNSIGNED_ROW}(\\d+) ",
            "stale_like": f"{STALE_ROW}%",
            "stale_count": f"^{STALE_ROW}(\\d+) ",
        },
    )
    now = datetime.now(UTC)
    found = []
    for row in await cursor.fetchall():
        (
            name,
            version,
            building,
            state,
            detail,
            position,
            moved_at,
            rebuild_started,
            rebuild_position,
            rebuild_head,
            rebuild_rate,
            registry_updated,
            rejected,
            unsigned,
            stale,
            head,
            set_aside,
        ) = row
        position = int(position or 0)
        # (negative: the read model is ahead of the log, see AHEAD_DETAIL)
        lag = int(head) - position
        silent = moved_at is not None and (now - moved_at).total_seconds()
        if state == "live" and lag > 0 and silent and silent > STALLED_AFTER_SECONDS:
            state = "stalled"
        if lag < 0 and state != "rebuilding":
            state = "ahead"
            detail = AHEAD_DETAIL.format(position=position, head=int(head), name=name)
        if state == "rebuilding" and (now - registry_updated).total_seconds() > (
            REBUILD_SILENT_SECONDS
        ):
            state = "failed"
            detail = detail or "the rebuild stopped reporting progress (was it killed?)"
        entry: dict[str, Any] = {
            "name": name,
            "version": version,
            "state": state,
            "position": position,
            "head": int(head),
            "lag": lag,
            "dead_lettered": int(rejected),
            "unsigned": int(unsigned),
            "stale": int(stale),
            "set_aside": int(set_aside),
            "updated_at": moved_at.isoformat() if moved_at else None,
            "detail": detail,
            "rebuild": None,
        }
        if building is not None:
            done = int(rebuild_position or 0)
            target = int(rebuild_head or 0)
            rate = float(rebuild_rate or 0.0)
            entry["rebuild"] = {
                "version": building,
                "position": done,
                "head": target,
                "events_per_second": round(rate, 1),
                # (none for a rebuild that is not running: it will not finish)
                "eta_seconds": (
                    round(max(0, target - done) / rate, 1)
                    if rate and state == "rebuilding"
                    else None
                ),
                "started_at": rebuild_started.isoformat() if rebuild_started else None,
            }
        found.append(entry)
    return found
