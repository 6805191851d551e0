"""The results page of an IRV tie the tie-break leaves undecided, among many options."""

from __future__ import annotations

import re
from typing import Any

from api.dashboard import results_panel
from domain.rules import ElectionRules
from domain.tabulation import tabulate
from domain.votes import Ranking


def _page(tie_break: str = "report", n: int = 60) -> tuple[dict[str, Any], str]:
    """Half the options without a vote, half with one each: the voteless go one a round
    (which cannot change the winner), then in round n/2 + 1 the others tie for the fewest
    votes and no earlier round separates them."""
    rules = ElectionRules.create(
        options=[{"id": f"o{i}", "label": f"Option {i}"} for i in range(n)],
        method="irv",
        tie_break=tie_break,
    )
    document = tabulate(rules, [Ranking((f"o{i}",)) for i in range(n // 2, n)]).to_json()
    document.update(position=5, closed_at_position=9, status="closed", late_ballots=0)
    document.update(election_id="00000000-0000-4000-8000-000000000001", final_chain_head=None)
    return document, results_panel(document, "Council")


def test_an_undecided_irv_tie_charts_the_round_where_it_arose() -> None:
    """The page charted "Final round (round 59)", two finalists of one elimination order
    among many, under a headline of 30 options tied (browser review, 7). The rounds after
    the tie are one possible order; the round it arose in is the same for every order."""
    document, html = _page()
    assert len(document["rounds"]) == 59
    assert len(document["winners"]) == 30
    headings = re.findall(r'<h3 id="([^"]+)">([^<]*)</h3>', html)
    assert ("round-30-heading", "Round 31, where the tie arose") in headings
    assert "Final round" not in html
    chart = html.split('id="round-30-heading"')[1].split("</figure>")[0]
    assert chart.count("<td>tied</td>") == 29
    assert "<td>tied; eliminated in the rounds shown (one possible choice)</td>" in chart
    assert "Rounds 32 to 59 in the table of every round follow one possible order" in html
    rows = html.split('id="rounds"')[1].split("</table>")[0]
    assert '<th scope="row" class="num">31</th>' in rows
    assert '<th scope="row">32 (one order)</th>' in rows
    assert "(from round 32, one possible order of elimination)" in html


def test_a_long_tie_is_counted_in_the_headline_and_its_options_listed_once() -> None:
    """The 30 names were said four times (headline, tie, its reason twice) and once more
    in a note, and the live region, which reads the headline, read them all (browser
    review, 7)."""
    _, html = _page()
    headline = re.search(r'<p class="winners".*?</p>', html)
    assert headline is not None
    assert "<strong>Tied, not decided:</strong> 30 options (listed below)</p>" in headline.group(0)
    assert "<bdi>" not in headline.group(0)
    note = re.search(r"<li>Round 31: .*?</li>", html)
    assert note is not None
    top = html.split("<figure")[0] + note.group(0)
    for i in range(30, 59):
        assert top.count(f"<bdi>Option {i}</bdi>") == 1, i
    # and the option the note says the rounds shown eliminate
    assert top.count("<bdi>Option 59</bdi>") == 2
    assert "<strong>Tie between 30 options:</strong> the 30 options listed below each win" in html
    assert "in round 31, the 30 options listed below tied for the fewest votes" in html
    assert "Round 31: the 30 options of the tie (listed above) tied for the fewest" in html
    assert html.count('<ul class="tied-options" id="tied-options">') == 1


def test_a_short_tie_is_still_named_in_the_headline() -> None:
    _document, html = _page(n=8)
    assert "<strong>Tied, not decided:</strong> <bdi>Option 4</bdi>, <bdi>Option 5</bdi>" in html
    assert "tied-options" not in html
    assert "Round 5, where the tie arose" in html


def test_a_decided_tie_charts_the_final_round() -> None:
    document, html = _page("declared_order")
    assert document["tie"] is None
    assert "Final round (round 59)" in html
    assert "where the tie arose" not in html
    assert "one order" not in html


def test_a_long_stv_tie_names_the_elected_and_counts_the_tied() -> None:
    """The elected are not in the list of the tied below: the headline names them."""
    rules = ElectionRules.create(
        options=[{"id": f"o{i}", "label": f"Option {i}"} for i in range(9)],
        method="stv",
        seats=2,
        tie_break="report",
    )
    votes = [Ranking(("o0",))] * 9 + [Ranking((f"o{i}",)) for i in range(1, 9)]
    document = tabulate(rules, votes).to_json()
    document.update(position=5, closed_at_position=9, status="closed", late_ballots=0)
    document.update(election_id="00000000-0000-4000-8000-000000000001", final_chain_head=None)
    assert document["tie"] is not None
    assert "o0" not in document["tie"]["options"]
    tied = len(document["tie"]["options"])
    html = results_panel(document, "Council")
    assert (
        "<strong>Elected or tied, not decided:</strong> <bdi>Option 0</bdi>, "
        f"{tied} tied options (listed below)</p>"
    ) in html
