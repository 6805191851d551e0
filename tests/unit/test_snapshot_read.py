"""A snapshot's counters as read (``projections.queries.Read``): text, one JSON object of
up to ``CHUNK`` counters a line, decoded into one dict in the order read."""

from __future__ import annotations

from projections.queries import Read, TallySnapshot

HEAD = TallySnapshot(7, None, None, 0, {}, entries=3, published_position=5)


def test_lines_decode_into_one_dict_in_their_order() -> None:
    read = Read(HEAD, '{"b": 1, "a": 2}\n{"cc": 3}\n{"r:a>b": 4}', None)
    snapshot = read.decode()
    assert list(snapshot.counters.items()) == [("b", 1), ("a", 2), ("cc", 3), ("r:a>b", 4)]
    assert snapshot.published_counters is None
    assert (snapshot.position, snapshot.entries, snapshot.published_position) == (7, 3, 5)
    assert read.size == len(read.counters or "")


def test_what_was_not_read_stays_as_the_head_has_it() -> None:
    assert Read(HEAD).decode() is HEAD
    published = Read(HEAD, None, '{"n": 4}').decode()
    assert published.counters == {}
    assert published.published_counters == {"n": 4}


def test_empty_counters_and_an_empty_publication() -> None:
    snapshot = Read(HEAD, "", "").decode()
    assert snapshot.counters == {}
    assert snapshot.published_counters == {}  # published, and empty: not None
