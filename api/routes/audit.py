"""Auditors: the raw log with its hash chain, checkpoints, the public key; receipts."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.contract import Operation, Param, operation
from api.params import AFTER, ELECTION_ID, LIMIT
from api.responses import JSONResponse, problem
from domain.errors import NotFound
from infra.audit.chain import ALGORITHM, key_id
from infra.audit.records import election_page, log_page

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
RECEIPT = """
SELECT c.position, c.hash, k.id, k.position, k.head_hash, k.key_id, k.signature, k.created_at
FROM audit_chain c
LEFT JOIN LATERAL (
    SELECT * FROM audit_checkpoints k WHERE k.position >= c.position
    ORDER BY k.position, k.id LIMIT 1
) k ON true
WHERE c.entry_hash = %s
"""
CHECKPOINTS = """
SELECT id, position, head_hash, key_id, signature, reason, created_at
FROM audit_checkpoints WHERE id > %s ORDER BY id LIMIT %s
"""


@operation(
    Operation(
        "auditEvents",
        "The whole log, page by page, with each entry's chain link (auditor)",
        "audit",
        ok=documents.LogPage,
        errors=(403,),
        params=(AFTER, LIMIT),
    )
)
async def events(request: Request) -> Response:
    """The whole log, page by page in position order, with each entry's chain link."""
    context.auth(request).require(request, "auditor")
    after = context.int_param(request, "after", 0, minimum=0)
    limit = context.int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    async with context.services(request).reads.connection() as conn:
        page = await log_page(conn, after, limit)
    return JSONResponse(
        {
            "events": [entry.to_json() for entry in page],
            "next_after": page[-1].position if page else after,
        }
    )


@operation(
    Operation(
        "electionEvents",
        "One election's log entries, page by page (auditor)",
        "audit",
        ok=documents.ElectionLogPage,
        errors=(403, 404),
        params=(ELECTION_ID, AFTER, LIMIT),
    )
)
async def election_events(request: Request) -> Response:
    """One election's entries (its own and its ballots'), page by page."""
    context.auth(request).require(request, "auditor")
    election_id = context.election_id(request)
    await context.services(request).app.election(election_id)  # 404 for an unknown id
    after = context.int_param(request, "after", 0, minimum=0)
    limit = context.int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    async with context.services(request).reads.connection() as conn:
        page = await election_page(conn, election_id, after, limit)
    return JSONResponse(
        {
            "election_id": str(election_id),
            "events": [entry.to_json() for entry in page],
            "next_after": page[-1].position if page else after,
        }
    )


@operation(
    Operation(
        "auditCheckpoints",
        "Signed chain heads, oldest first; after is a checkpoint id (auditor)",
        "audit",
        ok=documents.Checkpoints,
        errors=(403,),
        params=(AFTER, LIMIT),
    )
)
async def checkpoints(request: Request) -> Response:
    """Signed chain heads, oldest first (``after`` is a checkpoint id)."""
    context.auth(request).require(request, "auditor")
    after = context.int_param(request, "after", 0, minimum=0)
    limit = context.int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    async with context.services(request).reads.connection() as conn:
        cursor = await conn.execute(CHECKPOINTS, (after, limit))
        rows = await cursor.fetchall()
    found = [_checkpoint((*row[:5], row[6]), reason=row[5]) for row in rows]
    return JSONResponse({"checkpoints": found, "next_after": rows[-1][0] if rows else after})


@operation(
    Operation(
        "auditPublicKey",
        "The key that verifies checkpoint signatures (no token)",
        "audit",
        auth=False,
        ok=documents.PublicKey,
    )
)
async def public_key(request: Request) -> Response:
    """The key that verifies checkpoint signatures (public: anyone may verify)."""
    signer = context.signer(request)
    if signer is None:
        return problem(503, "No audit key", "this deployment has no CARDINAL_AUDIT_KEY")
    return JSONResponse(
        {
            "algorithm": ALGORITHM,
            "public_key": signer.public_key.hex(),
            "key_id": key_id(signer.public_key),
        }
    )


_RECEIPT = re.compile("[0-9a-fA-F]{64}")


@operation(
    Operation(
        "lookUpReceipt",
        "Where a ballot's receipt hash is in the sealed log (no token)",
        "audit",
        auth=False,
        ok=documents.ReceiptLookup,
        errors=(404,),
        params=(Param("digest", "path", {"type": "string", "pattern": f"^{_RECEIPT.pattern}$"}),),
    )
)
async def receipt(request: Request) -> Response:
    """Whether an entry hash (a ballot's receipt) is in the log, where, and which signed
    checkpoint covers it. Public, and it reveals nothing of the ballot's content."""
    raw = request.path_params["digest"]
    # Only what the contract's pattern says: bytes.fromhex alone would skip whitespace.
    if _RECEIPT.fullmatch(raw) is None:
        raise NotFound(f"{raw[:80]!r} is not a receipt: receipts are 64 hexadecimal digits")
    digest = bytes.fromhex(raw)
    async with context.services(request).reads.connection() as conn:
        cursor = await conn.execute(RECEIPT, (digest,))
        row = await cursor.fetchone()
    if row is None:
        raise NotFound(
            "no entry with this receipt is in the sealed log; a new ballot's receipt is "
            "found within seconds, once the log is sealed past it"
        )
    position, link, *covering = row
    return JSONResponse(
        {
            "receipt": digest.hex(),
            "position": position,
            "chain_hash": bytes(link).hex(),
            "checkpoint": _checkpoint(tuple(covering)) if covering[0] is not None else None,
        }
    )


def _checkpoint(row: tuple[Any, ...], reason: str | None = None) -> dict[str, Any]:
    identifier, position, head, key, signature, created = row
    found = {
        "id": int(identifier),
        "position": int(position),
        "head_hash": bytes(head).hex(),
        "key_id": key,
        "signature": bytes(signature).hex(),
        "created_at": created.isoformat() if hasattr(created, "isoformat") else str(created),
    }
    if reason is not None:
        found["reason"] = reason
    return found
