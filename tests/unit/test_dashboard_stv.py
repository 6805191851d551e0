"""The results page renders an STV count: seats, quota and every stage as a table."""

from __future__ import annotations

import re

from api.dashboard import results_panel
from domain.rules import ElectionRules
from domain.tabulation import tabulate
from domain.votes import Ranking

RULES = ElectionRules.create(
    options=[{"id": x, "label": x.upper()} for x in "abcd"], method="stv", seats=2
)


def _page(votes: list[Ranking]) -> str:
    document = tabulate(RULES, votes).to_json()
    document.update(position=5, closed_at_position=None, status="open", late_ballots=0)
    return results_panel(document, "Council")


def test_stv_stages_render_as_a_table_with_the_quota_and_seats() -> None:
    html = _page([Ranking(("a", "b"))] * 7 + [Ranking(("c",)), Ranking(("d", "c"))] * 2)
    assert 'id="stages"' in html
    assert '<span data-figure="seats">2</span>' in html
    assert '<span data-figure="quota">4.00000</span>' in html
    assert "surplus of <bdi>A</bdi>: 3.00000 at 0.42857" in html
    # b holds 7 x 0.42857 = 2.99999; c and d tie on 2 at every stage, and which goes
    # decides the last seat (d's papers would elect c, c's going elects b): a is elected
    # for every choice, and b and c are reported tied for the other seat.
    assert 'data-winners="a b c"' in html
    assert "Tie between <bdi>B</bdi>, <bdi>C</bdi>:" in html


def test_an_stv_page_without_ballots_says_so() -> None:
    assert 'id="no-stages"' in _page([])


def test_an_option_the_shown_stages_excluded_is_out_though_a_tie_makes_it_a_winner() -> None:
    # c is elected at stage 1, b excluded at 2; at 3, a and d tie for exclusion, and the
    # stages shown exclude d (declared last), electing a. Under the report tie-break the
    # winners are c, a and d (a and d tied for the last seat), but d's stage-3 cell is "out".
    votes = [Ranking(("a", "b")), Ranking(("d", "c", "b", "a")), Ranking(("c",))]
    html = _page([*votes, Ranking(("c", "a"))])
    assert 'data-winners="c a d"' in html
    rows = re.findall(r"<tr>(.*?)</tr>", html.split('id="stages"')[1].split("</table>")[0])
    # Past the header row; each row's first cell (the stage) is its header.
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in rows[1:]]
    # Stage, Action, A, B, C, D, Non-transferable, Elected, Excluded
    assert [row[2:6] for row in cells[1:]] == [
        [_count(1, "a"), "out", "elected", _count(1, "d")],
        [_count(2, "a"), "out", "elected", "out"],
    ]
    assert cells[2][-1] == "<bdi>D</bdi>"


def _count(stage: int, option: str) -> str:
    return f'<span data-stage="{stage}" data-option="{option}">1.00000</span>'


def test_the_stages_table_has_a_heading() -> None:
    """The table had only a caption, so heading navigation skipped it (browser review,
    12); IRV's rounds had an h3."""
    html = _page([Ranking(("a", "b"))] * 7 + [Ranking(("c",)), Ranking(("d", "c"))] * 2)
    heading = re.search(
        r'<div class="captioned"><h3 id="stages-heading">Every stage: [^<]*</h3>', html
    )
    assert heading is not None
    assert html.index("stages-heading") < html.index('id="stages"')
