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


def test_a_422_lists_its_first_issues_and_counts_the_rest() -> None:
    """Every issue was listed: a 58 KB sign-in body of 6,000 unknown keys was answered with
    a 365 KB problem (6,002 items; the DoS review). The first 20 are listed, the detail
    says how many more there are, and ``more_errors`` how many the list leaves out."""
    import orjson

    from api.documents import Problem
    from api.schemas import LoginIn

    body = {f"key{n:05d}": 1 for n in range(6000)}
    with pytest.raises(pydantic.ValidationError) as refused:
        LoginIn.model_validate(body)
    problem = problem_of(refused.value)
    assert problem is not None
    assert problem["status"] == 422
    assert len(problem["errors"]) == 20  # api.problems.MAX_ISSUES
    assert problem["errors"][0] == {"field": "email", "message": "Field required"}
    assert problem["errors"][2]["field"] == "key00000"
    assert problem["more_errors"] == 6002 - 20
    assert problem["detail"] == "email: Field required (and 6001 more problems)"
    assert len(orjson.dumps(problem)) < 4096
    Problem.model_validate(problem)  # the contract's shape
    # Within the limit, every issue is listed, and nothing is said to be left out.
    with pytest.raises(pydantic.ValidationError) as refused:
        LoginIn.model_validate({f"key{n}": 1 for n in range(18)})
    problem = problem_of(refused.value)
    assert problem is not None
    assert len(problem["errors"]) == 20
    assert "more_errors" not in problem
    assert problem["detail"].endswith("(and 19 more problems)")
