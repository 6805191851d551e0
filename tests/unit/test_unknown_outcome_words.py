"""What a caller hears when its commit's outcome is not known (the store hangs past
OUTCOME_WITHIN, or the process must go first): a ballot's caller is told to retry with the
same Idempotency-Key, which finds out; an election change takes no key, so its caller is
told to look first (a merge review found a create told to "retry with the same
Idempotency-Key": a second draft election, had the first been made)."""

import asyncio
from uuid import uuid4

import pytest

from domain.ports import OutcomeUnknown, Recorded
from infra.store import writer
from infra.store.batch import Append


async def _heard(guard: bool, detail: str, change: str) -> str:
    loop = asyncio.get_running_loop()
    append = Append([], loop.create_future(), uuid4() if guard else None)
    writer._unknown([append], detail, change)
    with pytest.raises(OutcomeUnknown) as told:
        await append.future
    return str(told.value)


async def test_a_ballot_is_told_to_retry_with_its_key_a_change_to_look_first() -> None:
    for unconfirmed, change in (
        (writer.UNCONFIRMED.format(10), writer.CHANGE_UNCONFIRMED.format(10)),
        (writer.UNKNOWN, writer.CHANGE_UNKNOWN),
    ):
        ballot = await _heard(True, unconfirmed, change)
        assert "retry with the same Idempotency-Key" in ballot
        made = await _heard(False, unconfirmed, change)
        assert "Idempotency-Key" not in made
        assert "read the election" in made
        assert "before doing it again" in made


async def test_an_answered_caller_is_not_told_again() -> None:
    loop = asyncio.get_running_loop()
    append = Append([], loop.create_future(), uuid4())
    append.future.set_result(Recorded(1, "h"))
    writer._unknown([append])
    assert append.future.result() == Recorded(1, "h")
