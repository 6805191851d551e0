"""Ballot validation, on hundreds of generated ballots per property."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidBallot
from domain.rules import ElectionRules, Method
from domain.tabulation import Tally
from domain.votes import Approval, Choice, Ranking, Scores, parse_vote, stored_vote
from infra.store.transcoder import OrjsonTranscoder
from tests.budget import examples

MANY = settings(max_examples=examples(300), deadline=None)
IDS = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)


@st.composite
def elections(draw: st.DrawFn, methods: list[Method] | None = None) -> ElectionRules:
    ids = draw(st.lists(IDS, min_size=2, max_size=12, unique=True))
    method = draw(st.sampled_from(methods or list(Method)))
    low = high = None
    if method.is_scored:
        low = draw(st.integers(-10, 5))
        high = draw(st.integers(low + 1, low + 10))
    return ElectionRules.create(
        options=[{"id": i, "label": i.upper()} for i in ids],
        method=method.value,
        min_score=low,
        max_score=high,
    )


@st.composite
def valid_ballots(draw: st.DrawFn) -> tuple[ElectionRules, dict[str, Any]]:
    rules = draw(elections())
    ids = list(rules.option_ids)
    if rules.method is Method.PLURALITY:
        return rules, {"choice": draw(st.sampled_from(ids))}
    if rules.method is Method.APPROVAL:
        return rules, {"approve": draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))}
    if rules.method.is_scored:
        assert rules.min_score is not None
        assert rules.max_score is not None
        scored = draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))
        score = st.integers(rules.min_score, rules.max_score)
        return rules, {"scores": {option: draw(score) for option in scored}}
    return rules, {"ranking": draw(st.lists(st.sampled_from(ids), min_size=1, unique=True))}


@MANY
@given(valid_ballots())
def test_valid_ballots_are_accepted_and_normalised_once(
    case: tuple[ElectionRules, dict[str, Any]],
) -> None:
    rules, content = case
    vote = parse_vote(rules, content)
    assert parse_vote(rules, vote.to_json()) == vote  # the stored form parses to itself
    if isinstance(vote, Choice):
        assert vote.option == content["choice"]
    elif isinstance(vote, Approval):
        assert set(vote.options) == set(content["approve"])
        assert list(vote.options) == [o for o in rules.option_ids if o in vote.options]
    elif isinstance(vote, Scores):
        assert [option for option, _ in vote.scores] == list(rules.option_ids)
        for option, score in vote.scores:
            assert score == content["scores"].get(option, rules.min_score)
    else:
        assert isinstance(vote, Ranking)
        assert list(vote.order) == content["ranking"]


@MANY
@given(valid_ballots())
def test_a_vote_as_the_log_stores_it_counts_as_the_vote_cast(
    case: tuple[ElectionRules, dict[str, Any]],
) -> None:
    """The log stores canonical JSON (keys sorted), so a score ballot comes back with its
    options in id order, not the declared one; the count refused such ballots (set aside,
    so a score or STAR election whose ids were not declared sorted counted nothing)."""
    rules, content = case
    vote = parse_vote(rules, content)
    stored = OrjsonTranscoder().decode(OrjsonTranscoder().encode({"vote": vote.to_json()}))
    assert stored_vote(rules, stored["vote"]) == vote
    tally = Tally(rules)
    tally.add(stored_vote(rules, stored["vote"]))
    assert tally.result().ballots == 1


def test_a_star_election_with_options_not_declared_in_order_counts_its_ballots() -> None:
    rules = ElectionRules.create(
        options=[{"id": "yes", "label": "Yes"}, {"id": "no", "label": "No"}], method="star"
    )
    transcoder = OrjsonTranscoder()
    tally = Tally(rules)
    for scores in ({"yes": 5, "no": 0}, {"yes": 4, "no": 1}, {"yes": 0, "no": 5}):
        stored = transcoder.decode(
            transcoder.encode(parse_vote(rules, {"scores": scores}).to_json())
        )
        tally.add(stored_vote(rules, stored))
    result = tally.result()
    assert (result.ballots, result.winners) == (3, ("yes",))


@MANY
@given(valid_ballots(), st.data())
def test_an_unknown_option_is_refused_naming_where_it_is(
    case: tuple[ElectionRules, dict[str, Any]], data: st.DataObject
) -> None:
    rules, content = case
    stranger = data.draw(IDS.filter(lambda i: i not in rules.option_index))
    field = rules.method.ballot_field
    if field == "choice":
        content, where = {"choice": stranger}, "choice"
    elif field == "scores":
        content = {"scores": {**content["scores"], stranger: rules.min_score}}
        where = f"scores.{stranger}"
    else:
        marked = list(content[field])
        at = data.draw(st.integers(0, len(marked)))
        marked.insert(at, stranger)
        content, where = {field: marked}, f"{field}[{at}]"
    with pytest.raises(InvalidBallot, match="is not an option of this election") as raised:
        parse_vote(rules, content)
    assert raised.value.field == where
    assert stranger in raised.value.detail


@MANY
@given(elections([m for m in Method if m.is_ranked]), st.data())
def test_a_duplicate_rank_is_refused_at_its_second_place(
    rules: ElectionRules, data: st.DataObject
) -> None:
    ranking = data.draw(st.lists(st.sampled_from(rules.option_ids), min_size=1, unique=True))
    repeated = data.draw(st.sampled_from(ranking))
    at = data.draw(st.integers(ranking.index(repeated) + 1, len(ranking)))
    ranking.insert(at, repeated)
    with pytest.raises(InvalidBallot, match="ranked twice") as raised:
        parse_vote(rules, {"ranking": ranking})
    assert raised.value.field == f"ranking[{at}]"


@MANY
@given(elections([Method.SCORE, Method.STAR]), st.data())
def test_a_score_out_of_range_is_refused_with_the_range(
    rules: ElectionRules, data: st.DataObject
) -> None:
    assert rules.min_score is not None
    assert rules.max_score is not None
    option = data.draw(st.sampled_from(rules.option_ids))
    score = data.draw(
        st.one_of(
            st.integers(max_value=rules.min_score - 1), st.integers(min_value=rules.max_score + 1)
        )
    )
    with pytest.raises(InvalidBallot, match=f"{rules.min_score}..{rules.max_score}") as raised:
        parse_vote(rules, {"scores": {option: score}})
    assert raised.value.field == f"scores.{option}"


@MANY
@given(elections(), st.sampled_from(["choice", "approve", "scores", "ranking"]))
def test_an_empty_or_misdirected_ballot_is_refused(rules: ElectionRules, other: str) -> None:
    expected = rules.method.ballot_field
    empties: dict[str, dict[str, Any]] = {
        "choice": {},
        "approve": {"approve": []},
        "scores": {"scores": {}},
        "ranking": {"ranking": []},
    }
    empty = empties[expected]
    with pytest.raises(InvalidBallot, match="the ballot is empty") as raised:
        parse_vote(rules, empty)
    assert raised.value.field == expected
    if other != expected:
        with pytest.raises(InvalidBallot, match=f"marked with '{expected}'") as raised:
            parse_vote(rules, {other: ["x"]})
        assert raised.value.field == other


@pytest.mark.parametrize("bad", [2.5, True, "3", None])
def test_a_score_must_be_a_whole_number(bad: object) -> None:
    rules = ElectionRules.create(
        options=[{"id": "a", "label": "A"}, {"id": "b", "label": "B"}], method="star"
    )
    if bad is None:
        assert parse_vote(rules, {"scores": {"a": 1}}) == Scores((("a", 1), ("b", 0)))
        return
    with pytest.raises(InvalidBallot, match="must be a whole number from 0 to 5"):
        parse_vote(rules, {"scores": {"a": bad}})
