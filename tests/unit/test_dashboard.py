"""The results pages' HTML (api/dashboard.py), from results documents written out here."""

from __future__ import annotations

import re
from typing import Any

from api.dashboard import results_panel


def _document(method: str = "plurality", n: int = 3, **fields: Any) -> dict[str, Any]:
    options = [{"id": f"o{i}", "label": f"Option {i} xxx", "votes": i} for i in range(n)]
    document: dict[str, Any] = {
        "election_id": "00000000-0000-4000-8000-000000000001",
        "method": method,
        "status": "open",
        "position": 7,
        "ballots": 3,
        "options": options,
        "winners": [f"o{n - 1}"],
        "tie": None,
        "rounds": [],
        "pairwise": None,
        "notes": [],
        "closed_at_position": None,
        "final_chain_head": None,
    }
    document.update(fields)
    return document


def test_a_closed_election_without_winners_says_none_not_none_yet() -> None:
    """It said "Winners: none yet" after the close (review dash, 5)."""
    closed = results_panel(_document(winners=[], ballots=0, closed_at_position=9), "Results")
    assert "<strong>Winners:</strong> none</p>" in closed
    still_open = results_panel(_document(winners=[], ballots=0), "Results")
    assert "<strong>Winners:</strong> none yet</p>" in still_open


def test_a_draft_says_not_open_yet() -> None:
    """A draft read "preliminary: the election is draft" (review dash, 5)."""
    html = results_panel(_document(status="draft", winners=[], ballots=0), "Results")
    assert "Not open yet" in html
    assert "preliminary" not in html
    assert 'data-state="draft"' in html


def test_a_chart_label_is_whole_beside_the_winner_mark() -> None:
    """ "(winner)" shared the label's 18 characters: "Option 23 xxx" read "Option 2…"
    (review dash, 7). The label is whole; the mark follows the figure."""
    html = results_panel(_document(n=24), "Results")
    chart = re.search(r'<svg[^>]*id="chart-votes".*?</svg>', html)
    assert chart is not None
    assert '<text x="0" y="665" class="label winner">Option 23 xxx</text>' in chart.group(0)
    assert "23 (winner)</text>" in chart.group(0)


def test_a_big_election_links_to_the_json_instead_of_a_pairwise_chart() -> None:
    """100 options made a 1.7 MB panel, fetched on every event (review dash, 4)."""
    ids = [f"o{i}" for i in range(21)]
    pairwise = {a: {b: 1 for b in ids if b != a} for a in ids}
    html = results_panel(_document("schulze", n=21, pairwise=pairwise), "Results")
    assert 'id="heat-map"' not in html
    assert 'id="pairwise"' not in html
    assert '<a href="/api/elections/00000000-0000-4000-8000-000000000001/results"' in html
    assert len(html) < 20_000
    ids = ids[:20]
    pairwise = {a: {b: 1 for b in ids if b != a} for a in ids}
    html = results_panel(_document("schulze", n=20, pairwise=pairwise), "Results")
    assert 'id="heat-map"' in html
    assert 'id="pairwise"' in html


def test_each_figure_is_named_by_a_heading() -> None:
    """A results page had three headings only (review dash, 9)."""
    rounds = [
        {"counts": {"o0": 1, "o1": 1, "o2": 2}, "eliminated": ["o0"], "exhausted": 0},
        {"counts": {"o1": 1, "o2": 3}, "eliminated": [], "exhausted": 0},
    ]
    html = results_panel(_document("irv", rounds=rounds), "Results")
    headings = dict(re.findall(r'<h3 id="([^"]+)">([^<]+)</h3>', html))
    assert "Final round (round 2)" in headings.values()
    assert "Every option&#x27;s figures" in headings.values()
    assert any(text.startswith("Every round") for text in headings.values())
    figures = re.findall(r'<figure class="pair" aria-labelledby="([^"]+)">', html)
    assert figures
    assert all(ident in headings for ident in figures)


def test_table_cells_with_figures_do_not_wrap() -> None:
    """Counts broke across lines: 94 read "9/4" (review dash, 1)."""
    rounds = [{"counts": {"o0": 94, "o1": 1, "o2": 2}, "eliminated": ["o1"], "exhausted": 0}]
    html = results_panel(_document("irv", rounds=rounds), "Results")
    assert '<td class="num"><span data-round="0" data-option="o0">94</span></td>' in html
