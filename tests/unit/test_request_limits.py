"""A body past a limit is refused with the limit the contract and the domain say: the
request models once bounded labels and titles at 1,000 characters and options at 101 (a
cheap bound before the domain's check), so a 5,000-character label was told "at most 1000
characters", and 500 options "at most 101 items"."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from api.problems import problem_of
from api.schemas import ElectionIn
from domain.rules import MAX_LABEL, MAX_OPTIONS, MAX_TITLE


def _refusal(body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(pydantic.ValidationError) as refused:
        ElectionIn.model_validate(body)
    found = problem_of(refused.value)
    assert found is not None
    return found


def _election(**fields: Any) -> dict[str, Any]:
    options = [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}]
    return {"title": "Lunch", "method": "plurality", "options": options, **fields}


@pytest.mark.parametrize("length", [MAX_LABEL + 1, 1000, 5000])
def test_a_label_too_long_is_told_the_real_limit(length: int) -> None:
    options = [{"id": "a", "label": "x" * length}, {"id": "b", "label": "B"}]
    problem = _refusal(_election(options=options))
    assert problem["status"] == 422
    assert problem["field"] == "options[0].label"
    assert f"at most {MAX_LABEL} characters" in problem["detail"]


@pytest.mark.parametrize("length", [MAX_TITLE + 1, 5000])
def test_a_title_too_long_is_told_the_real_limit(length: int) -> None:
    problem = _refusal(_election(title="t" * length))
    assert problem["field"] == "title"
    assert f"at most {MAX_TITLE} characters" in problem["detail"]


@pytest.mark.parametrize("count", [MAX_OPTIONS + 1, 500])
def test_too_many_options_are_told_the_real_limit_before_each_is_read(count: int) -> None:
    # (each option invalid too: the count is refused first, and alone)
    problem = _refusal(_election(options=[{"id": "?", "label": ""}] * count))
    assert problem["field"] == "options"
    assert problem["detail"] == (
        f"options: an election needs between 2 and {MAX_OPTIONS} options; got {count}"
    )
    assert len(problem["errors"]) == 1


def test_the_contract_states_the_same_limits() -> None:
    schema = ElectionIn.model_json_schema()
    assert schema["properties"]["title"]["maxLength"] == MAX_TITLE
    assert schema["properties"]["options"]["maxItems"] == MAX_OPTIONS
    assert schema["$defs"]["OptionIn"]["properties"]["label"]["maxLength"] == MAX_LABEL
