"""The results page renders an STV count: seats, quota and every stage as a table."""

from __future__ import annotations

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
    assert "surplus of A: 3.00000 at 0.42857" in html
    # b holds 7 x 0.42857 = 2.99999; c and d tie on 2 at every stage, and which goes
    # decides the last seat (d's papers would elect c, c's going elects b): a is elected
    # for every choice, and b and c are reported tied for the other seat.
    assert 'data-winners="a b c"' in html
    assert "Tie between B, C:" in html


def test_an_stv_page_without_ballots_says_so() -> None:
    assert 'id="no-stages"' in _page([])
