"""The results pages' HTML (api/dashboard.py), from results documents written out here."""

from __future__ import annotations

import re
from typing import Any

from api.dashboard import results_panel
from api.routes.pages import _overview_html
from domain.rules import ElectionRules
from domain.tabulation import tabulate
from domain.tabulation.result import NO_BALLOTS
from domain.votes import Choice, Ranking


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


CLOSED: dict[str, Any] = {"status": "closed", "closed_at_position": 9}


def test_a_closed_election_without_winners_says_none_not_none_yet() -> None:
    """It said "Winners: none yet" after the close (review dash, 5)."""
    closed = results_panel(_document(winners=[], ballots=0, closed_at_position=9), "Results")
    assert "<strong>Winners:</strong> none</p>" in closed
    still_open = results_panel(_document(winners=[], ballots=0), "Results")
    assert "<strong>Leading:</strong> none yet</p>" in still_open


def test_a_draft_says_not_open_yet() -> None:
    """A draft read "preliminary: the election is draft" (review dash, 5), and "Winners:
    none yet", as if it were running (browser review, 8)."""
    html = results_panel(_document(status="draft", winners=[], ballots=0), "Results")
    assert "<strong>Winners:</strong> none: not open yet</p>" in html
    assert "Not open yet" in html
    assert "preliminary" not in html
    assert 'data-state="draft"' in html


def test_a_chart_label_is_whole_beside_the_winner_mark() -> None:
    """ "(winner)" shared the label's 18 characters: "Option 23 xxx" read "Option 2…"
    (review dash, 7). The label is whole; the mark follows the figure."""
    html = results_panel(_document(n=24, **CLOSED), "Results")
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
    html = results_panel(_document("irv", rounds=rounds, closed_at_position=9), "Results")
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


def _svg(html: str, ident: str) -> str:
    chart = re.search(rf'<svg[^>]*id="{ident}".*?</svg>', html)
    assert chart is not None
    return chart.group(0)


def test_a_negative_mean_is_a_bar_to_the_left_of_the_zero_axis() -> None:
    """Bars were max(0, width): a negative mean drew nothing (review dash-2, 3)."""
    options = [
        {"id": "o0", "label": "Low", "mean": -1.5, "histogram": {}},
        {"id": "o1", "label": "High", "mean": 1.0, "histogram": {}},
    ]
    html = results_panel(_document("score", options=options, winners=["o1"]), "Results")
    chart = _svg(html, "chart-mean")
    axis = re.search(r'<line class="axis" x1="([\d.]+)"', chart)
    assert axis is not None
    zero = float(axis.group(1))
    bars = [
        (float(x), float(w))
        for x, w in re.findall(r'<rect x="([\d.]+)" y="\d+" width="([\d.]+)"', chart)
    ]
    (low_x, low_w), (high_x, high_w) = bars
    assert low_w > 0
    assert abs(low_x + low_w - zero) < 0.2
    assert high_x == zero
    assert high_w > 0
    assert low_w / high_w == 1.5


def test_chart_labels_with_a_shared_long_beginning_stay_apart() -> None:
    """Labels were cut at 22 characters: two that began alike read alike (review dash-2, 9)."""
    stem = "Extension of the northern tram line via "
    options = [
        {"id": f"o{i}", "label": stem + place, "votes": i}
        for i, place in enumerate(["the harbour district", "the university campus"])
    ]
    html = results_panel(_document(options=options, winners=["o1"]), "Results")
    labels = re.findall(
        r'class="label[^"]*">(?:<title>[^<]*</title>)?([^<]*)</text>', _svg(html, "chart-votes")
    )
    assert len(labels) == 2
    assert labels[0] != labels[1]


def test_the_heat_map_numbers_its_columns_and_keeps_its_natural_size() -> None:
    """Twenty options' heat map was shrunk to half a page, its column headers cut to the
    same few letters (review dash-2, 4)."""
    ids = [f"o{i}" for i in range(20)]
    options = [{"id": o, "label": f"Candidate from the list {o}", "votes": 1} for o in ids]
    pairwise = {a: {b: 1 for b in ids if b != a} for a in ids}
    html = results_panel(
        _document("schulze", options=options, pairwise=pairwise, winners=["o0"]), "Results"
    )
    chart = _svg(html, "heat-map")
    heads = re.findall(r'class="col-label"><title>[^<]*</title>([^<]*)</text>', chart)
    assert heads == [str(n) for n in range(1, 21)]
    rows = re.findall(r'class="row-label">([^<]*)', chart)
    assert len(set(rows)) == 20
    assert 'class="chart natural"' in chart
    assert 'width="' in chart.split("viewBox")[0]
    assert '<figure class="pair wide" aria-labelledby="heat-map-heading">' in html
    # Focusable (to scroll it from the keyboard) only where it overflows: dashboard.js.
    assert '<div class="chart-scroll" role="region"' in html


def test_a_tie_left_standing_is_not_called_winners() -> None:
    """A single-winner election's unresolved tie read "Winners: Left, Right" (review
    dash-2, 11)."""
    tie = {"options": ["o1", "o2"], "reason": "o1 and o2 tie"}
    html = results_panel(_document(winners=["o1", "o2"], tie=tie), "Results")
    assert "<strong>Tied, not decided:</strong>" in html
    assert "Winners" not in html.split('id="winners"')[1].split("</p>")[0]
    single = results_panel(_document(**CLOSED), "Results")
    assert "<strong>Winner:</strong>" in single


def test_an_undecided_tie_is_marked_tied_everywhere() -> None:
    """Undecided ties were "(winner)" in the bars, the rounds and the option table (review
    a11y, 3); a tie the tie-break decided still has its winner."""
    tie = {"options": ["o1", "o2"], "reason": "o1 and o2 tie"}
    html = results_panel(_document(winners=["o1", "o2"], tie=tie), "Results")
    assert "(winner)" not in html
    assert 'class="label winner"' not in html
    assert html.count("(tied)") == 2 * 3  # two options: the wide bars, the narrow, the table
    assert 'class="bar tied"' in html
    rounds = [{"counts": {"o0": 1, "o1": 2, "o2": 2}, "eliminated": ["o0"], "exhausted": 0}]
    irv = results_panel(_document("irv", rounds=rounds, winners=["o1", "o2"], tie=tie), "R")
    assert "(winner)" not in irv
    assert irv.count("<td>tied</td>") == 2
    decided = results_panel(_document(winners=["o1"], tie=tie, **CLOSED), "Results")
    assert "(tied)" not in decided
    assert "(winner)" in decided


def test_rows_have_headers_and_charts_say_what_they_are() -> None:
    """Data rows had no header cell, the bar chart's name only repeated "Results" and its
    heading was a second "Results" under the panel's (review a11y, 5)."""
    html = results_panel(_document(), "Results")
    assert '<th scope="row"><bdi>Option 0 xxx</bdi></th>' in html
    assert '<h3 id="chart-votes-heading">Votes per option</h3>' in html
    assert (
        'aria-label="Bar chart: Votes per option. The figures are in the table that follows."'
        in html
    )
    assert html.count(">Results</h") == 1  # the panel's own heading only
    rounds = [{"counts": {"o0": 1, "o1": 2, "o2": 3}, "eliminated": ["o0"], "exhausted": 0}]
    irv = results_panel(_document("irv", rounds=rounds), "Results")
    table = irv.split('id="rounds"')[1].split("</table>")[0]
    assert '<tr><th scope="row" class="num">1</th>' in table


def test_star_says_who_advances_and_what_the_runoff_could_not_count() -> None:
    """STAR's runoff showed "Exhausted (no preference left)" (review dash-2, 12)."""
    rounds = [
        {"counts": {"o0": 3, "o1": 9, "o2": 8}, "eliminated": ["o0"], "exhausted": 0},
        {"counts": {"o1": 2, "o2": 1}, "eliminated": ["o2"], "exhausted": 1},
    ]
    html = results_panel(_document("star", rounds=rounds, winners=["o1"]), "Results")
    assert "No preference between the finalists" in html
    assert "Exhausted" not in html
    scoring = html.split('id="round-0-heading"')[1].split("</figure>")[0]
    assert scoring.count("<td>advances to runoff</td>") == 2
    assert "<td>eliminated</td>" in scoring


def test_the_last_round_of_preliminary_results_is_not_called_final() -> None:
    """Preliminary IRV results said "Final round (round 4)" (review dash-2, 13)."""
    rounds = [{"counts": {"o0": 1, "o1": 2, "o2": 3}, "eliminated": [], "exhausted": 0}]
    html = results_panel(_document("irv", rounds=rounds), "Results")
    assert "Last round (round 1)" in html
    assert "Final round" not in html


def test_labels_are_isolated_for_right_to_left_text() -> None:
    """A right-to-left label turned the punctuation and the labels around it (review
    dash-2, 16): labels are isolated in headers, winner lists and the notes."""
    options = [
        {"id": "o0", "label": "תל אביב", "votes": 2},
        {"id": "o1", "label": "القاهرة", "votes": 2},
    ]
    tie = {"options": ["o0", "o1"], "reason": "תל אביב and القاهرة tie on 2 votes."}
    rounds = [{"counts": {"o0": 2, "o1": 2}, "eliminated": [], "exhausted": 0}]
    html = results_panel(
        _document(
            "irv",
            options=options,
            rounds=rounds,
            winners=["o0", "o1"],
            tie=tie,
            notes=["In round 1, תל אביב was kept."],
        ),
        "Results",
    )
    assert "<bdi>תל אביב</bdi>, <bdi>القاهرة</bdi></p>" in html
    assert "<bdi>תל אביב</bdi> and <bdi>القاهرة</bdi> tie" in html
    assert "<li>In round 1, <bdi>תל אביב</bdi> was kept.</li>" in html
    assert '<th scope="col"><bdi>תל אביב</bdi></th>' in html


def test_no_section_is_named_as_the_table_region_inside_it() -> None:
    """A section labelled by its heading held a table region of the same name: two
    landmarks of one name (axe landmark-unique, review dash-2, 18)."""
    rounds = [{"counts": {"o0": 1, "o1": 2, "o2": 3}, "eliminated": [], "exhausted": 0}]
    html = results_panel(_document("irv", rounds=rounds), "Results")
    names = re.findall(r'<section aria-labelledby="([^"]+)"', html)
    regions = re.findall(r'role="region" aria-label="([^"]+)"', html)
    headings = dict(re.findall(r'<h3 id="([^"]+)">([^<]+)</h3>', html))
    assert not {headings[n] for n in names if n in headings} & set(regions)
    assert "figures-heading" in headings
    assert "rounds-heading" in headings
    assert 'aria-labelledby="figures-heading"' not in html
    assert 'aria-labelledby="rounds-heading"' not in html


def test_stepped_results_say_so_at_the_top_and_lead_rather_than_win() -> None:
    """While open, stepped results read "Ballots counted: 130" and "Winner: Alice" as if
    exact; the steps were only in the last note (review dash-2, 3)."""
    html = results_panel(_document(stepped=True, live_results_step=10, ballots=130), "Results")
    standing = re.search(r'<p class="standing".*?</p>', html)
    assert standing is not None
    assert "Ballots counted: " in standing.group(0)
    assert "in steps of 10 ballot entries while open" in standing.group(0)
    assert "<strong>Leading:</strong>" in html
    assert "Winner:" not in html
    assert "(winner)" not in html
    assert "(leading)" in html
    exact = results_panel(_document(stepped=False, live_results_step=1), "Results")
    assert "steps of" not in exact
    assert "<strong>Leading:</strong>" in exact  # open: see the test after


def test_an_open_election_leads_and_only_the_close_has_a_winner() -> None:
    """An open election counted exactly (not in steps) read "Winner: Option 2", and so did
    the live region, which reads the headline (accessibility review): until the close
    more ballots may change it. Its first leads; the close's results have a winner."""
    exact = results_panel(_document(stepped=False, live_results_step=1), "Results")
    assert "<strong>Leading:</strong>" in exact
    assert "Winner" not in exact
    assert "(winner)" not in exact
    assert "(leading)" in exact
    closed = results_panel(_document(**CLOSED), "Results")
    assert "<strong>Winner:</strong>" in closed
    assert "(winner)" in closed
    assert "Leading" not in closed


def test_stepped_results_without_a_step_yet_do_not_say_none_were_cast() -> None:
    """A voter-token election with 3 ballots read "Ballots counted: 0" and "No ballots were
    cast" (review dash-2, 3): the page words the count's note for what it shows."""
    html = results_panel(
        _document(
            stepped=True,
            live_results_step=10,
            ballots=0,
            winners=[],
            notes=[NO_BALLOTS],
        ),
        "Results",
    )
    assert "No ballots were cast" not in html
    assert "No ballots counted yet" in html
    assert '<span data-figure="ballots">0</span>' in html
    closed = results_panel(
        _document(status="closed", ballots=0, winners=[], notes=[NO_BALLOTS], closed_at_position=9),
        "Results",
    )
    assert "No ballots were cast, so there is no winner." in closed
    assert "winner yet" not in closed


def test_the_winners_bold_label_is_measured_bold() -> None:
    """The winner's label is bold, and was measured regular: a label that just fits ran
    into its bar (review dash-2, 5)."""
    fits = "x" * 21  # 21 x 0.65 em x 13 px = 177 px regular; bold is wider than 180
    document = _document(n=2)
    document["options"][1]["label"] = fits
    document["options"][0]["label"] = fits
    chart = _svg(results_panel(document, "Results"), "chart-votes")
    assert f'class="label">{fits}</text>' in chart  # regular: whole
    winner = re.search(r'class="label winner">(.*?)</text>', chart)
    assert winner is not None
    assert "…" in winner.group(1)


def test_bar_charts_have_a_narrow_layout_for_phones() -> None:
    """On a phone the 600-unit chart was shrunk to 390 px: 13 px text drew at 8 px (review
    dash-2, 4). A second layout, labels over their bars in a 360-unit box, is the phone's."""
    html = results_panel(_document(n=3), "Results")
    wide = _svg(html, "chart-votes")
    narrow = _svg(html, "chart-votes-narrow")
    assert "wide-chart" in wide
    assert 'viewBox="0 0 360 ' in narrow
    assert "narrow-chart" in narrow
    assert narrow.count('class="label') == 3


def test_the_overview_marks_stepped_entries() -> None:
    """The overview's entries column read "130" for a count published in steps of 10
    (review dash-2, 3): it reads "130+", with a note."""
    election = {
        "id": "00000000-0000-4000-8000-000000000001",
        "title": "Lunch",
        "method": "plurality",
        "status": "open",
        "final": False,
        "live_results_step": 10,
        "ballot_entries": 130,
    }
    html = _overview_html({"position": 3, "elections": [election]})
    assert '<td data-figure="ballot_entries">130+' in html
    assert 'id="stepped-note"' in html
    exact = _overview_html(
        {"position": 3, "elections": [{**election, "live_results_step": 1, "ballot_entries": 7}]}
    )
    assert '<td data-figure="ballot_entries">7</td>' in exact
    assert "stepped-note" not in exact
    closed = _overview_html(
        {"position": 3, "elections": [{**election, "status": "closed", "final": True}]}
    )
    assert '<td data-figure="ballot_entries">130</td>' in closed


def test_tie_reasons_and_notes_name_options_by_their_labels() -> None:
    """A tie's reason and the notes named options by id: a person read "a and b are
    tied" instead of the options' names (review a11y). The labels are escaped and isolated
    as everywhere; the "a" of "such a tie" is a word, not option a."""
    labels = {"a": "Ann <b>", "b": "אבי", "c": "Cy"}
    for tie_break in ("report", "declared_order"):
        rules = ElectionRules.create(
            options=[{"id": i, "label": label} for i, label in labels.items()],
            method="plurality",
            tie_break=tie_break,
        )
        document = tabulate(rules, [Choice("a"), Choice("b")]).to_json()
        document.update(position=5, closed_at_position=9, status="closed", late_ballots=0)
        html = results_panel(document, "Lunch")
        said = re.search(r'<p class="tie".*?</p>', html) if tie_break == "report" else None
        text = said.group(0) if said else html.split('aria-labelledby="notes"')[1]
        assert "<bdi>Ann &lt;b&gt;</bdi> and <bdi>אבי</bdi> are tied" in text
        assert " a and b " not in text
        assert ">a and b " not in text
        if said:
            assert "reports such a tie" in text
        else:
            assert "; <bdi>Ann &lt;b&gt;</bdi> wins because" in text


def test_numbered_options_are_named_but_not_the_rounds_they_tie_in() -> None:
    """Options with ids "1" to "4": "in round 1, 1, 2, 3 and 4 tied" names the options by
    their labels, and round 1 stays round 1."""
    rules = ElectionRules.create(
        options=[{"id": str(n), "label": f"No. {n}"} for n in range(1, 5)],
        method="irv",
        tie_break="report",
    )
    votes = [Ranking(("1", "2")), Ranking(("2", "1")), Ranking(("3", "4")), Ranking(("4", "3"))]
    document = tabulate(rules, votes).to_json()
    document.update(position=5, closed_at_position=9, status="closed", late_ballots=0)
    html = results_panel(document, "Lunch")
    said = re.search(r'<p class="tie".*?</p>', html)
    assert said is not None
    names = "<bdi>No. 1</bdi>, <bdi>No. 2</bdi>, <bdi>No. 3</bdi> and <bdi>No. 4</bdi>"
    assert f"in round 1, {names} tied for the fewest votes" in said.group(0)
    assert f"{names} each win" in said.group(0)
    assert "Round 1: " in html
    assert "<bdi>No. 1</bdi> votes" not in html


def _closed(document: dict[str, Any]) -> dict[str, Any]:
    document.update(position=5, closed_at_position=9, status="closed", late_ballots=0)
    return document


def test_a_number_in_a_note_is_not_an_option_that_has_it_as_id() -> None:
    """Ranked pairs with options "1" to "3" and a cycle of margins 2: the page said
    "Majorities with margin Cand 2 were locked" and left "3>1" in ids (merge review).
    The count marks where it names options; only there are labels said."""
    rules = ElectionRules.create(
        options=[{"id": str(n), "label": f"Cand {n}"} for n in range(1, 4)],
        method="ranked_pairs",
        tie_break="declared_order",
    )
    cycle = [Ranking(("1", "2", "3")), Ranking(("2", "3", "1")), Ranking(("3", "1", "2"))]
    document = _closed(tabulate(rules, cycle * 2).to_json())
    note = "Majorities with margin 2 were locked in declared option order"
    assert any(n.startswith(note) for n in document["notes"])  # the served text
    html = results_panel(document, "Lunch")
    assert f"{note} (tie-break rule: declared order), so " in html
    assert "so <bdi>Cand 3</bdi>&gt;<bdi>Cand 1</bdi> was not locked." in html
    assert "margin <bdi>" not in html


def test_an_option_set_aside_is_named_by_its_label() -> None:
    """STV: "set 1 aside" kept the id of option "1" (merge review)."""
    rules = ElectionRules.create(
        options=[{"id": i, "label": f"Opt {i}"} for i in ("a", "b", "c", "1")],
        method="stv",
        seats=3,
        tie_break="declared_order",
    )
    ballots = {("a", "b", "1", "c"): 2, ("a", "c"): 2, ("1", "b"): 1}
    votes = [Ranking(order) for order, n in ballots.items() for _ in range(n)]
    document = _closed(tabulate(rules, votes).to_json())
    assert any("set 1 aside (back to stage 1)" in note for note in document["notes"])
    html = results_panel(document, "Lunch")
    assert "set <bdi>Opt 1</bdi> aside (back to stage <bdi>" not in html
    assert "set <bdi>Opt 1</bdi> aside (back to stage 1), and none separates " in html
    assert "<bdi>Opt b</bdi> and <bdi>Opt c</bdi>." in html


def test_options_named_like_the_sentences_words_are_named_where_they_are_names() -> None:
    """Options "x", "and" and "still" (merge review: such ids broke the list handling):
    the list is said with their labels, and the sentence's own "and" stays a word."""
    rules = ElectionRules.create(
        options=[{"id": i, "label": i.upper()} for i in ("x", "and", "still")],
        method="plurality",
        tie_break="declared_order",
    )
    document = _closed(tabulate(rules, [Choice("x"), Choice("and"), Choice("still")]).to_json())
    assert document["notes"][0].startswith("x, and and still are tied with 1 votes each; x wins")
    html = results_panel(document, "Lunch")
    assert (
        "<bdi>X</bdi>, <bdi>AND</bdi> and <bdi>STILL</bdi> are tied with 1 votes each; "
        "<bdi>X</bdi> wins because" in html
    )


def test_texts_the_count_did_not_mark_name_no_options() -> None:
    """A note the results document adds (stepped, set aside) is shown as it is, whatever
    ids the election's options have."""
    from api.dashboard import worded

    assert worded("Incomplete: 1 log entry of this election", {"1": "One"}) == (
        "Incomplete: 1 log entry of this election"
    )
