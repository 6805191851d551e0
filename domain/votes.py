"""What a voter marks on a ballot, validated against the election's rules and normalised.

A ballot's content is one field, chosen by the method (``Method.ballot_field``):

- plurality  ``{"choice": "a"}``
- approval   ``{"approve": ["a", "c"]}``
- score/STAR ``{"scores": {"a": 2, "b": -1}}``: an option left out gets ``min_score``
- ranked     ``{"ranking": ["b", "a", "c"]}``: options left out rank below every ranked
  option, equal among themselves

The normalised form (``Vote.to_json``) is what the ballot events store: approvals and scores
in the election's declared option order, scores complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from domain.errors import InvalidBallot
from domain.rules import ElectionRules, Method

BALLOT_FIELDS = ("choice", "approve", "scores", "ranking")


@dataclass(frozen=True, slots=True)
class Choice:
    """A plurality vote for one option."""

    option: str

    def to_json(self) -> dict[str, Any]:
        return {"choice": self.option}


@dataclass(frozen=True, slots=True)
class Approval:
    """Approval of one or more options, in declared order."""

    options: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"approve": list(self.options)}


@dataclass(frozen=True, slots=True)
class Scores:
    """A score for every option, in declared order."""

    scores: tuple[tuple[str, int], ...]

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(score for _, score in self.scores)

    def to_json(self) -> dict[str, Any]:
        return {"scores": dict(self.scores)}


@dataclass(frozen=True, slots=True)
class Ranking:
    """Options in order of preference, most preferred first; the rest tie below them."""

    order: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"ranking": list(self.order)}


Vote = Choice | Approval | Scores | Ranking


def parse_vote(rules: ElectionRules, content: Mapping[str, Any]) -> Vote:
    """Validate a ballot's content against the rules; raise InvalidBallot naming the field."""
    expected = rules.method.ballot_field
    for name in BALLOT_FIELDS:
        if name != expected and content.get(name) is not None:
            raise InvalidBallot(
                f"{rules.method.value} ballots are marked with '{expected}', not '{name}'; "
                f"send {_example(rules)}",
                field=name,
            )
    value = content.get(expected)
    if value is None:
        raise InvalidBallot(
            f"the ballot is empty: {rules.method.value} ballots need '{expected}', "
            f"for example {_example(rules)}",
            field=expected,
        )
    if rules.method is Method.PLURALITY:
        return _choice(rules, value)
    if rules.method is Method.APPROVAL:
        return _approval(rules, value)
    if rules.method.is_scored:
        return _scores(rules, value)
    return _ranking(rules, value)


def stored_vote(rules: ElectionRules, content: Mapping[str, Any]) -> Vote:
    """A vote as ballot events store it (``Vote.to_json``), rebuilt without re-validating.

    For counting the log, where every vote was validated and normalised before it was
    recorded. Anything else goes through ``parse_vote``.
    """
    field = rules.method.ballot_field
    if field == "ranking":
        return Ranking(tuple(content["ranking"]))
    if field == "choice":
        return Choice(content["choice"])
    if field == "scores":
        # in the declared order: the log stores JSON objects with their keys sorted
        scores = content["scores"]
        return Scores(tuple((option, scores[option]) for option in rules.option_ids))
    return Approval(tuple(content["approve"]))


def _known(rules: ElectionRules, option: object, where: str) -> str:
    if not isinstance(option, str):
        raise InvalidBallot(f"{where} must be an option id (text); got {option!r}", field=where)
    if option not in rules.option_index:
        raise InvalidBallot(
            f"{option!r} is not an option of this election; the options are {_option_list(rules)}",
            field=where,
        )
    return option


def _choice(rules: ElectionRules, value: object) -> Choice:
    return Choice(_known(rules, value, "choice"))


def _approval(rules: ElectionRules, value: object) -> Approval:
    if not isinstance(value, list):
        raise InvalidBallot("approve must be a list of option ids", field="approve")
    if not value:
        raise InvalidBallot("the ballot is empty: approve at least one option", field="approve")
    approved: set[str] = set()
    for i, option in enumerate(value):
        known = _known(rules, option, f"approve[{i}]")
        if known in approved:
            raise InvalidBallot(f"{known!r} is approved twice", field=f"approve[{i}]")
        approved.add(known)
    return Approval(tuple(o for o in rules.option_ids if o in approved))


def _scores(rules: ElectionRules, value: object) -> Scores:
    assert rules.min_score is not None
    assert rules.max_score is not None
    low, high = rules.min_score, rules.max_score
    if not isinstance(value, Mapping):
        raise InvalidBallot(
            'scores must be an object mapping option ids to scores, e.g. {"a": 2}',
            field="scores",
        )
    if not value:
        raise InvalidBallot(
            f"the ballot is empty: score at least one option ({low}..{high})", field="scores"
        )
    given: dict[str, int] = {}
    for option, score in value.items():
        known = _known(rules, option, f"scores.{option}")
        if isinstance(score, bool) or not isinstance(score, int):
            raise InvalidBallot(
                f"the score for {known!r} must be a whole number from {low} to {high}; "
                f"got {score!r}",
                field=f"scores.{known}",
            )
        if not low <= score <= high:
            raise InvalidBallot(
                f"the score {score} for {known!r} is outside the allowed range {low}..{high}",
                field=f"scores.{known}",
            )
        given[known] = score
    return Scores(tuple((o, given.get(o, low)) for o in rules.option_ids))


def _ranking(rules: ElectionRules, value: object) -> Ranking:
    if not isinstance(value, list):
        raise InvalidBallot(
            "ranking must be a list of option ids, most preferred first", field="ranking"
        )
    if not value:
        raise InvalidBallot(
            "the ballot is empty: rank at least one option, most preferred first",
            field="ranking",
        )
    first_seen: dict[str, int] = {}
    for i, option in enumerate(value):
        known = _known(rules, option, f"ranking[{i}]")
        if known in first_seen:
            raise InvalidBallot(
                f"{known!r} is ranked twice (positions {first_seen[known] + 1} and {i + 1}); "
                "rank each option at most once",
                field=f"ranking[{i}]",
            )
        first_seen[known] = i
    return Ranking(tuple(value))


def _option_list(rules: ElectionRules, limit: int = 12) -> str:
    ids = rules.option_ids
    shown = ", ".join(repr(o) for o in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _example(rules: ElectionRules) -> str:
    ids = rules.option_ids
    if rules.method is Method.PLURALITY:
        return f'{{"choice": "{ids[0]}"}}'
    if rules.method is Method.APPROVAL:
        return f'{{"approve": ["{ids[0]}"]}}'
    if rules.method.is_scored:
        return f'{{"scores": {{"{ids[0]}": {rules.max_score}}}}}'
    return '{"ranking": [' + ", ".join(f'"{o}"' for o in ids[:3]) + "]}"
