"""Elections and ballots for the tabulation tests: fixed builders and hypothesis strategies."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from domain.rules import ElectionRules, Method
from domain.votes import Approval, Choice, Ranking, Scores, Vote

# Ids chosen so that declared order, alphabetical order and hash order all differ.
OPTION_IDS = ("zulu", "Alpha", "m-3", "b.2", "9lives", "kilo_x")


def rules(
    method: Method | str,
    ids: Sequence[str] = ("a", "b", "c"),
    *,
    tie_break: str = "report",
    min_score: int | None = None,
    max_score: int | None = None,
    seats: int | None = None,
) -> ElectionRules:
    """Pinned rules for options ``ids`` (labels are the ids upper-cased)."""
    return ElectionRules.create(
        options=[{"id": option, "label": option.upper()} for option in ids],
        method=str(method),
        tie_break=tie_break,
        min_score=min_score,
        max_score=max_score,
        seats=seats,
    )


def ranking(text: str) -> Ranking:
    """``ranking("a>b>c")``: a ranking written as in the counter keys."""
    return Ranking(tuple(text.split(">")))


def scores(ids: Sequence[str], values: Sequence[int]) -> Scores:
    return Scores(tuple(zip(ids, values, strict=True)))


@st.composite
def elections(draw: st.DrawFn, methods: Sequence[Method] = tuple(Method)) -> ElectionRules:
    """Rules of a small election of any method, either tie-break rule."""
    method = draw(st.sampled_from(methods))
    count = draw(st.integers(2, 5))
    ids = draw(st.permutations(OPTION_IDS))[:count]
    low = high = None
    if method.is_scored:
        low = draw(st.integers(-3, 1))
        high = draw(st.integers(low + 1, low + 6))
    return rules(
        method,
        ids,
        tie_break=draw(st.sampled_from(["report", "declared_order"])),
        min_score=low,
        max_score=high,
    )


def votes(election: ElectionRules) -> st.SearchStrategy[Vote]:
    """Valid, normalised votes for ``election`` (partial rankings included)."""
    ids = election.option_ids
    method = election.method
    if method is Method.PLURALITY:
        return st.sampled_from(ids).map(Choice)
    if method is Method.APPROVAL:
        return st.sets(st.sampled_from(ids), min_size=1).map(
            lambda chosen: Approval(tuple(o for o in ids if o in chosen))
        )
    if method.is_scored:
        assert election.min_score is not None
        assert election.max_score is not None
        level = st.integers(election.min_score, election.max_score)
        return st.tuples(*(level for _ in ids)).map(lambda values: scores(ids, values))
    return st.permutations(ids).flatmap(
        lambda order: st.integers(1, len(order)).map(lambda k: Ranking(tuple(order[:k])))
    )


@st.composite
def elections_with_votes(
    draw: st.DrawFn, methods: Sequence[Method] = tuple(Method), max_votes: int = 20
) -> tuple[ElectionRules, list[Vote]]:
    election = draw(elections(methods))
    return election, draw(st.lists(votes(election), max_size=max_votes))
