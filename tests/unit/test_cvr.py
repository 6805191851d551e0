"""Marks on a cast vote record, turned into a ranking by each jurisdiction's rules."""

from __future__ import annotations

import pytest

from domain.cvr import Marker, MarkRules, Then, ranking

OVER, UNDER, UNKNOWN = Marker.OVERVOTE, Marker.UNDERVOTE, Marker.UNKNOWN
SKIP, EXHAUST = Then.SKIP, Then.EXHAUST
MAINE = MarkRules(undervote=Then.EXHAUST_CONSECUTIVE)  # two blank ranks in a row exhaust


@pytest.mark.parametrize(
    ("marks", "rules", "expected"),
    [
        (["a", "b", "c"], MarkRules(), ["a", "b", "c"]),
        (["a", OVER, "c"], MarkRules(overvote=EXHAUST), ["a"]),
        (["a", OVER, "c"], MarkRules(overvote=SKIP), ["a", "c"]),
        ([UNDER, "b", "c"], MarkRules(undervote=SKIP), ["b", "c"]),
        ([UNDER, "b", "c"], MarkRules(undervote=EXHAUST), []),
        (["a", "a", "b"], MarkRules(duplicate=SKIP), ["a", "b"]),
        (["a", "a", "b"], MarkRules(duplicate=EXHAUST), ["a"]),
        ([UNKNOWN, "b"], MarkRules(unknown=SKIP), ["b"]),
        (["a", UNKNOWN, "b"], MarkRules(unknown=EXHAUST), ["a"]),
        ([UNDER, UNDER, UNDER], MarkRules(), []),
        ([OVER, "a"], MarkRules(), []),  # the default: an overvote exhausts, even first
        (["a", UNDER, UNDER, "b"], MAINE, ["a"]),
        (["a", UNDER, "b"], MAINE, ["a", "b"]),
        (["a", UNDER, UNDER], MAINE, ["a"]),  # blanks after the last choice change nothing
        ([UNDER, "a", UNDER, "b", UNDER, UNDER], MAINE, ["a", "b"]),
        ([UNDER, UNDER, "a"], MAINE, []),
        (
            ["a", UNDER, OVER, UNDER, "b"],
            MarkRules(overvote=SKIP, undervote=Then.EXHAUST_CONSECUTIVE),
            ["a", "b"],
        ),
    ],
)
def test_marks_become_a_ranking_by_the_rules(
    marks: list[str | Marker], rules: MarkRules, expected: list[str]
) -> None:
    assert ranking(marks, rules) == expected


def test_two_blanks_in_a_row_is_a_rule_for_undervotes_alone() -> None:
    with pytest.raises(ValueError, match="a rule for undervotes"):
        MarkRules(overvote=Then.EXHAUST_CONSECUTIVE)
