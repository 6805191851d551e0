"""What a caller hears when its append is refused for certain (the store down, too slow to
take it, the process shutting down): an append that carries an Idempotency-Key may be the
retry of one that was recorded, so it is told that this attempt recorded nothing, never
that the ballot was not recorded (review D1: a client believed it and gave up on a ballot
that was counted); one without a key keeps a ballot's words, an election change a change's."""

import asyncio
from uuid import uuid4

import pytest

from domain.ballot import Ballot
from domain.ports import StoreUnavailable
from infra.store import writer
from infra.store.batch import Append

KINDS = (
    (writer.NOT_RECORDED, writer.CHANGE_NOT_MADE, writer.KEYED_NOT_RECORDED),
    (writer.SHUTTING_DOWN, writer.CHANGE_SHUTTING_DOWN, writer.KEYED_SHUTTING_DOWN),
    (
        writer.TOO_SLOW.format(5),
        writer.CHANGE_TOO_SLOW.format(5),
        writer.KEYED_TOO_SLOW.format(5),
    ),
)


async def _heard(guarded: bool, keyed: bool, words: tuple[str, str, str]) -> StoreUnavailable:
    loop = asyncio.get_running_loop()
    append = Append([], loop.create_future(), uuid4() if guarded else None, keyed=keyed)
    writer._refuse(append, *words)
    with pytest.raises(StoreUnavailable) as told:
        await append.future
    return told.value


async def test_a_keyed_ballot_refused_for_certain_is_told_this_attempt_recorded_nothing() -> None:
    for ballot, change, keyed in KINDS:
        retry = await _heard(True, True, (ballot, change, keyed))
        assert isinstance(retry, writer.AttemptRefused)
        assert str(retry) == keyed
        assert "this attempt recorded nothing" in keyed or "it recorded nothing" in keyed
        assert "may have been recorded" in keyed
        assert "not recorded" not in keyed
        plain = await _heard(True, False, (ballot, change, keyed))
        assert not isinstance(plain, writer.AttemptRefused)
        assert str(plain) == ballot
        for key in (False, True):  # an election change takes no key
            assert str(await _heard(False, key, (ballot, change, keyed))) == change


def test_an_append_is_keyed_when_its_events_carry_a_request_key() -> None:
    election = uuid4()
    assert writer._keyed([Ballot.first_cast(election, "v", {"choice": "a"}, "k")])
    assert not writer._keyed([Ballot.first_cast(election, "v", {"choice": "a"}, None)])
    door = writer._door(election, True, *KINDS[0][::2], KINDS[0][1])
    assert isinstance(door, writer.AttemptRefused)
    assert str(door) == writer.KEYED_NOT_RECORDED
    assert str(writer._door(election, False, *KINDS[0][::2], KINDS[0][1])) == writer.NOT_RECORDED
    assert str(writer._door(None, True, *KINDS[0][::2], KINDS[0][1])) == writer.CHANGE_NOT_MADE
