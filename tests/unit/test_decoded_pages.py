"""Projection workers in one process share decoded relay pages, within a memory bound."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson
import pytest

from infra.broker.signing import sign
from projections import pages

KEY = b"k" * 32


@dataclass
class Page:
    """What the workers read of a relay message: its name, its body and its signature
    (the relay's, checked before the body is read)."""

    message_id: str
    body: bytes

    @property
    def signature(self) -> str:
        return sign(KEY, self.message_id, self.body)


def _page(after: int, entries: int, padding: int) -> Page:
    events = [
        {
            "position": after + n + 1,
            "stream_id": str(uuid.uuid4()),
            "version": 1,
            "type": "BallotCast",
            "data": {"vote": "x" * padding},
        }
        for n in range(entries)
    ]
    body = orjson.dumps({"after": after, "last": after + entries, "events": events})
    return Page(f"{after}-{after + entries}", body)


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    pages._DECODED.clear()
    pages._DECODED_SIZES.clear()


def test_a_catch_up_of_big_pages_keeps_the_cache_within_its_bytes() -> None:
    """256 pages were kept whatever their size: 0.9 GB in a projections process after a
    catch-up of 100-option ballots (review helper-59)."""
    sent = [_page(n * 1000, 1000, 300) for n in range(40)]  # about 0.4 MB of body each
    for page in sent:
        pages.decode_once(page.signature, page.body)
    held = sum(len(p.body) for p in sent if p.signature in pages._DECODED)
    assert held <= pages._DECODED_BYTES
    assert sent[-1].signature in pages._DECODED  # the newest stays, to be shared
    assert sent[0].signature not in pages._DECODED


def test_each_page_is_decoded_once_for_the_workers_that_share_it() -> None:
    page = _page(0, 10, 10)
    first = pages.decode_once(page.signature, page.body)
    assert pages.decode_once(page.signature, page.body) is first
    alone = _page(10, 1, pages._DECODED_BYTES)  # one page bigger than the bound is kept
    assert pages.decode_once(alone.signature, alone.body) is pages.decode_once(
        alone.signature, alone.body
    )


def test_a_page_named_as_a_decoded_one_but_with_another_body_is_not_taken_for_it() -> None:
    """The cache was keyed by the message id, which any publisher chooses: a forged page
    named as the relay's next one was what the relay's page then decoded to."""
    genuine = _page(0, 3, 10)
    forged = Page(genuine.message_id, genuine.body.replace(b'"x', b'"y'))
    pages.decode_once(forged.signature, forged.body)
    _, _, events, _ = pages.decode_once(genuine.signature, genuine.body)
    assert [e.data for e in events] == [e["data"] for e in orjson.loads(genuine.body)["events"]]
