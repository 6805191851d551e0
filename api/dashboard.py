"""The results pages' HTML: server-rendered tables and inline SVG, from the results document.

Every chart has a table with the same figures beside it, and the text says what colour
only decorates (win, loss, tie; eliminated; winner; tied, not decided). Colours are
Okabe-Ito, which stay distinct under the common colour-vision deficiencies. No inline
style or script: the pages' Content-Security-Policy allows only this origin's files.
"""

from __future__ import annotations

import re
from functools import lru_cache
from html import escape
from itertools import accumulate
from typing import Any, NamedTuple

from domain.tabulation.result import NO_BALLOTS, Text

BAR = "#0072B2"  # Okabe-Ito blue
WINNER = "#E69F00"  # Okabe-Ito orange
TIED = "#009E73"  # Okabe-Ito bluish green: in a tie left undecided, not a winner
# Loss, tie, win (plus the words). The loss fill is Okabe-Ito vermillion (#D55E00) a little
# lighter: under the cells' 13 px #1a1a1a text it was 4.50:1, just the minimum (browser
# review, 13); this is 5.07:1 (a darker fill would lower it: the text is the darker).
HEAT = ("#DC6A1A", "#F0E442", "#56B4E9")
# Every bar has a 1 px outline in the text's colour: the winner's orange is 2.25:1 against
# the white page, under the 3:1 a graphic needs (browser review, 13).
OUTLINE = "#1a1a1a"
# Where an undecided IRV tie arose, as its reason names it (domain.tabulation.irv).
TIE_ROUND = re.compile(r"\bin round (\d+), ")
FIGURE = {"plurality": "votes", "approval": "approvals", "borda": "points"}
CONDORCET = ("schulze", "ranked_pairs", "copeland", "minimax")
# A pairwise chart and table grow with the square of the options: 100 options made a
# 1.7 MB panel, fetched again on every event. Above this many, the page links to the JSON.
PAIRWISE_MAX = 20
# A tie of more options than this is counted in the headline and its options listed once.
TIE_LIST_MAX = 5
LABEL_MAX = 180.0  # px: a bar chart's label column (the bars start at 190)
PLOT = 250  # px: the bars' area
HEAT_LABEL_MAX = 300.0  # px: the heat map's row labels at most (it scrolls in its box)
# Chart text is 13 px; glyph widths in em (DejaVu Sans, Debian's system-ui), rounded up.
GLYPH = {" ": 0.32, "-": 0.37, "l": 0.28, "i": 0.28, "w": 0.82, **dict.fromkeys("0123456789", 0.64)}
# The winner's label is bold (DejaVu Sans Bold), about a tenth wider: measured as regular,
# it ran into its bar.
BOLD = {" ": 0.35, "-": 0.42, "l": 0.35, "i": 0.35, "w": 0.93, **dict.fromkeys("0123456789", 0.70)}
BOLD_OTHER = 0.72
# Phones: a second layout of each bar chart, the label on its own line over the bar, in a
# narrower viewBox (the 600-unit one, shrunk to a phone's width, drew 13 px text at 8 px).
NARROW = 340  # units: the narrow chart's width (about its rendered px on a phone)
NARROW_PLOT = 240  # units: its bars' area (the rest holds the figure and the mark)


# Explicit direction controls (embeddings, overrides, isolates, marks): one in a label
# turned the text after it around, the other labels and the tie reasons included. The
# bidirectional algorithm lays out right-to-left text without them.
# A regular expression, not str.translate: translate looks each character of a non-ASCII
# text up in its table (50 µs for 1,000 Hebrew letters, a second for a panel of long ones).
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def plain(value: object) -> str:
    """A text without direction controls (ASCII has none)."""
    text = str(value)
    return text if text.isascii() else BIDI_CONTROLS.sub("", text)


def e(value: object) -> str:
    return escape(plain(value), quote=True)


def lab(label: object) -> str:
    """A label in running text or a table: isolated, so that a right-to-left one does not
    turn the punctuation and the labels around it (", " between two Hebrew names)."""
    return f"<bdi>{e(label)}</bdi>"


RTL = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff]")


def isolated(text: str, labels: dict[str, str]) -> str:
    """A text of the count (a tie's reason, a note) with its right-to-left labels isolated:
    the text itself is the audited document's and stays as it is. Labels are found in the
    text before escaping: found after, a label such as "mp;א" put ``<bdi>`` inside the
    "&amp;" of an "&א"."""
    found = _right_to_left(tuple(labels.values()))
    if found is None:
        return e(text)
    # A capturing split: the labels found are the odd pieces.
    pieces = found.split(plain(text))
    return "".join(f"<bdi>{e(p)}</bdi>" if i % 2 else e(p) for i, p in enumerate(pieces))


def worded(text: str, labels: dict[str, str]) -> str:
    """A text of the count (a tie's reason, a note) as HTML, the options it names by id
    named by their labels (isolated and escaped as labels are everywhere). The count marks
    where it names an option (``domain.tabulation.result.Text``): only there is an id a
    name, never the "2" of "margin 2" nor a word that happens to be an id. A text without
    the marks (one the results document adds) is shown as it is (``isolated``). The
    document itself (the JSON results) keeps the audited text."""
    if not isinstance(text, Text):
        return isolated(text, labels)
    return "".join(
        lab(labels.get(piece, piece)) if i % 2 else e(piece) for i, piece in enumerate(text.pieces)
    )


@lru_cache(maxsize=8)
def _right_to_left(labels: tuple[str, ...]) -> re.Pattern[str] | None:
    """The right-to-left labels, longest first, as one pattern: once per panel, not once
    per note (100 notes of 100 labels of 1,000 letters took a second)."""
    names = {plain(v) for v in labels}
    found = sorted((n for n in names if RTL.search(n)), key=len, reverse=True)
    return re.compile(f"({'|'.join(map(re.escape, found))})") if found else None


def results_panel(document: dict[str, Any], title: str) -> str:
    """One election's results: winners and ties first, then the method's charts, the
    option table, the notes and where these results stand (preliminary or final)."""
    labels = {o["id"]: o["label"] for o in document["options"]}
    method = document["method"]
    parts = [
        f'<h2 id="results-heading" dir="auto">{e(title)}</h2>',
        _standing(document),
        _winners(document, labels),
    ]
    if method in FIGURE:
        # Named by what it counts: "Results" again under the panel's "Results" said nothing.
        parts.append(
            _bars(f"{FIGURE[method].capitalize()} per option", FIGURE[method], document, labels)
        )
    elif method == "score":
        parts.append(_bars("Mean score per option", "mean", document, labels))
        parts.append(_histograms(document, labels))
    elif method == "star":
        parts.append(_star(document, labels))
        parts.append(_histograms(document, labels))
    elif method == "irv":
        parts.append(_irv(document, labels))
    elif method == "stv":
        parts.append(_stv(document, labels))
    if method in CONDORCET or document.get("pairwise"):
        parts.append(_heat_map(document, labels))
    parts.append(_option_table(document))
    parts.append(_notes(document))
    parts.append(_final(document))
    return "\n".join(parts)


def _standing(document: dict[str, Any]) -> str:
    position = document["position"]
    if document["closed_at_position"] is not None:
        words = f"Final: the election closed at log position {document['closed_at_position']}."
        state = "final"
    elif document["status"] == "draft":
        words = "Not open yet: the election takes ballots once it opens."
        state = "draft"
    else:
        words = f"As of position {position}, preliminary: the election is {document['status']}."
        state = "preliminary"
    ballots = f'<span data-figure="ballots">{document["ballots"]}</span>'
    if _stepped(document):
        # Published in steps while open: the count is the last step's, not every ballot.
        step = int(document.get("live_results_step") or 1)
        counted = (
            f"Ballots counted: {ballots} (counted in steps of {step} ballot entries while "
            "open; later ballots show at the next step)."
        )
        if not document["ballots"]:
            counted = (
                f"No ballots counted yet ({ballots} at the last step: counted in steps of "
                f"{step} ballot entries while open, so ballots may have been cast since)."
            )
    else:
        counted = f"Ballots counted: {ballots}."
    return (
        f'<p class="standing" id="standing" data-state="{state}" data-position="{position}">'
        f"<strong>{e(words)}</strong> {counted}</p>"
    )


def _stepped(document: dict[str, Any]) -> bool:
    """Results published in steps while open (not a draft's, not the close's)."""
    return bool(document.get("stepped")) and document["status"] == "open"


def _open(document: dict[str, Any]) -> bool:
    """Results that more ballots may still change: an open election's, stepped or exact."""
    return document["status"] == "open" and document["closed_at_position"] is None


def _lead(document: dict[str, Any]) -> str:
    """What the results call their first: while open (stepped, as of the last step, or
    exact) more ballots may change them, so it leads; only the close's results have a
    winner (the live region, which reads the headline, said "Winner" for an open
    election's leader: accessibility review)."""
    return "leading" if _open(document) else "winner"


def _marks(document: dict[str, Any]) -> dict[str, str]:
    """What the charts and tables call each option of ``winners``: "winner" ("leading"
    while open), or "tied" for the options of a tie the tie-break leaves standing (more
    winners than seats): the headline says "Tied, not decided", so none of them has won."""
    winners = document["winners"]
    tie = document.get("tie")
    seats = int(document.get("seats") or 1)
    undecided = set(tie["options"]) if tie and len(winners) > seats else set()
    lead = _lead(document)
    return {w: "tied" if w in undecided else lead for w in winners}


def _undecided(document: dict[str, Any]) -> bool:
    """Whether the tie-break leaves a tie standing (more winners than seats)."""
    seats = int(document.get("seats") or 1)
    return bool(document.get("tie")) and len(document["winners"]) > seats


def _long_tie(document: dict[str, Any]) -> bool:
    """A tie of more options than a sentence can list more than once: the headline (and
    so the live region, which reads it) counts them, and the page lists them once."""
    tie = document.get("tie")
    return tie is not None and len(tie["options"]) > TIE_LIST_MAX


def _winners(document: dict[str, Any], labels: dict[str, str]) -> str:
    winners = document["winners"]
    closed = document["closed_at_position"] is not None
    unnamed = (
        "none" if closed else "none: not open yet" if document["status"] == "draft" else "none yet"
    )
    names = ", ".join(lab(labels.get(w, w)) for w in winners) or unnamed
    word = "Winner" if len(winners) == 1 else "Winners"
    if _open(document):
        word = "Leading"
    seats = int(document.get("seats") or 1)
    if _undecided(document):
        word = "Tied, not decided" if seats == 1 else "Elected or tied, not decided"
        if _long_tie(document):
            # 30 names read out in the live region at every change said nothing a count
            # does not; the list follows the tie's reason.
            tied = set(document["tie"]["options"])
            elected = [lab(labels.get(w, w)) for w in winners if w not in tied]
            names = ", ".join([*elected, f"{len(tied)} {'tied ' if elected else ''}options"])
            names += " (listed below)"
    html = f'<p class="winners" id="winners" data-winners="{e(" ".join(winners))}">'
    html += f"<strong>{word}:</strong> {names}</p>"
    tie = document.get("tie")
    if tie and _long_tie(document):
        tied = tie["options"]
        html += f'<p class="tie" id="tie"><strong>Tie between {len(tied)} options:</strong> '
        words = f"the {len(tied)} options listed below"
        html += f"{_summarised(tie['reason'], labels, tied, words)}</p>"
        html += '<ul class="tied-options" id="tied-options">'
        html += "".join(f"<li>{lab(labels.get(o, o))}</li>" for o in tied) + "</ul>"
    elif tie:
        tied_names = ", ".join(lab(labels.get(o, o)) for o in tie["options"])
        html += f'<p class="tie" id="tie"><strong>Tie between {tied_names}:</strong> '
        html += f"{worded(tie['reason'], labels)}</p>"
    return html


def _summarised(text: str, labels: dict[str, str], tied: list[str], words: str) -> str:
    """``worded``, but where the text names exactly the options of a long tie in a row
    ("a, b, ... and z"), ``words`` instead: the page lists them once. Only a text of the
    count (``Text``) says where it names options; any other is shown whole."""
    if not isinstance(text, Text) or len(tied) <= TIE_LIST_MAX:
        return worded(text, labels)
    pieces, out, i = text.pieces, [], 0
    everyone = set(tied)
    while i < len(pieces):
        if i % 2 == 0:
            out.append(e(pieces[i]))
            i += 1
            continue
        # A run of names: ids joined by ", " and a last " and ".
        end = i
        while end + 2 < len(pieces) and pieces[end + 1] in (", ", " and "):
            end += 2
        run = pieces[i : end + 1 : 2]
        if len(run) == len(everyone) and set(run) == everyone:
            out.append(e(words))
            i = end + 1
        else:
            out.append(lab(labels.get(pieces[i], pieces[i])))
            i += 1
    return "".join(out)


class _Layout(NamedTuple):
    """Where a bar chart puts a row's parts: the wide layout, label beside bar, and the
    narrow one a phone shows, label over bar (dashboard.css picks one)."""

    left: float  # where the bars' area begins
    plot: float  # its width
    room: float  # the label's, in px
    pitch: int  # a row's height
    label_y: int  # from the row's top: the label's baseline,
    bar_y: int  # the bar's top,
    bar_height: int
    figure_y: int  # and the figure's baseline
    axis_top: int


WIDE_BARS = _Layout(190, PLOT, LABEL_MAX, 28, 17, 0, 22, 17, 0)
NARROW_BARS = _Layout(0, NARROW_PLOT, NARROW, 46, 13, 18, 20, 33, 18)


def _bar_marks(
    rows: list[tuple[str, float, str]], low: float, span: float, at: _Layout
) -> tuple[str, int]:
    """One layout's marks for ``rows`` (bars from a zero axis, on one scale; each row's
    mark "winner", "leading", "tied" or ""), and its height."""
    zero = at.left + at.plot * -low / span
    height = at.pitch * len(rows) + 8
    marks = []
    for i, (label, value, mark) in enumerate(rows):
        y = 4 + at.pitch * i
        width = at.plot * abs(value) / span
        x = zero if value >= 0 else zero - width
        winner = mark in ("winner", "leading")
        # A tied option of an undecided tie has its own colour and word: it has not won.
        kind = "winner" if winner else ("tied" if mark == "tied" else "")
        fill = WINNER if winner else (TIED if kind else BAR)
        # The winner is marked apart from its label (bold, and the word after the figure):
        # "(winner)" inside the label column cut "Option 23 xxx" to "Option 2…".
        word = f" ({mark})" if mark else ""
        marks.append(
            f'<text x="0" y="{y + at.label_y}" class="{f"label {kind}".strip()}">'
            f"{_fit(label, at.room, bold=winner)}</text>"
            f'<rect x="{x:.1f}" y="{y + at.bar_y}" width="{width:.1f}" '
            f'height="{at.bar_height}" fill="{fill}" stroke="{OUTLINE}" stroke-width="1" '
            f'class="{f"bar {kind}".strip()}"/>'
            f'<text x="{max(x + width, zero) + 5:.1f}" y="{y + at.figure_y}">'
            f"{_number(value)}{word}</text>"
        )
    if low < 0:
        marks.append(
            f'<line class="axis" x1="{zero:.1f}" y1="{at.axis_top}" x2="{zero:.1f}" '
            f'y2="{height}" stroke="#1a1a1a"/>'
        )
    return "".join(marks), height


def _bar_svg(caption: str, rows: list[tuple[str, float, str]], chart_id: str) -> str:
    """Bars from a zero axis: to the right for positive figures, to the left for negative
    ones (a score's mean may be below zero). Every chart has one scale (600 wide, bars
    from 190): a label wider than ``LABEL_MAX`` px is cut in the middle, so that labels
    that share a long beginning stay apart. A second, narrow layout (labels over the
    bars) is the one a phone shows (dashboard.css)."""
    low = min([0.0, *(value for _, value, _ in rows)])
    high = max([0.0, *(value for _, value, _ in rows)])
    span = (high - low) or 1
    # The image's name says what it is and where its figures are (the caption alone only
    # repeated the heading).
    name = e(f"Bar chart: {caption}. The figures are in the table that follows.")
    wide, height = _bar_marks(rows, low, span, WIDE_BARS)
    width = WIDE_BARS.left + PLOT + 160  # labels, bars, then the figure and its mark
    narrow, nheight = _bar_marks(rows, low, span, NARROW_BARS)
    return (
        # At its natural size (dashboard.css): its text is 13 px at any zoom.
        f'<svg class="chart bars wide-chart" id="{chart_id}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{name}">{wide}</svg>'
        f'<svg class="chart bars narrow-chart" id="{chart_id}-narrow" '
        f'viewBox="0 0 {NARROW + 20} {nheight}" '
        f'role="img" aria-label="{name}">{narrow}</svg>'
    )


def _bars(caption: str, figure: str, document: dict[str, Any], labels: dict[str, str]) -> str:
    marks = _marks(document)
    rows = [
        (o["label"], float(o.get(figure) or 0), marks.get(o["id"], "")) for o in document["options"]
    ]
    table = _table(
        caption,
        ["Option", figure.replace("_", " ").capitalize()],
        [
            [
                lab(o["label"]),
                f'<span data-option="{e(o["id"])}" data-figure="{figure}">'
                f"{_number(o.get(figure))}</span>",
            ]
            for o in document["options"]
        ],
    )
    return _figure(
        caption,
        _bar_svg(caption, rows, f"chart-{figure}"),
        table,
        f"chart-{figure}-heading",
    )


def _histograms(document: dict[str, Any], labels: dict[str, str]) -> str:
    parts = ['<section aria-labelledby="histograms"><h3 id="histograms">Scores given</h3>']
    for option in document["options"]:
        histogram = option.get("histogram") or {}
        caption = f"Scores given to {option['label']}"
        rows = [(f"score {level}", float(count), "") for level, count in histogram.items()]
        table = _table(
            caption,
            ["Score", "Ballots"],
            [
                [
                    e(level),
                    f'<span data-option="{e(option["id"])}" data-score="{e(level)}">{count}</span>',
                ]
                for level, count in histogram.items()
            ],
        )
        chart = _bar_svg(caption, rows, f"hist-{e(option['id'])}")
        parts.append(_figure(caption, chart, table, f"hist-{e(option['id'])}-heading", level=4))
    parts.append("</section>")
    return "".join(parts)


def _star(document: dict[str, Any], labels: dict[str, str]) -> str:
    rounds = document["rounds"]
    if not rounds:
        return _bars("Total score", "sum", document, labels)
    names = ("Scoring round: total scores", "Automatic runoff: ballots preferring each")
    parts = []
    for index, one in enumerate(rounds):
        runoff = index > 0
        parts.append(
            _round_figure(
                names[min(index, 1)],
                one,
                labels,
                _marks(document),
                index,
                # The runoff's "exhausted" ballots scored both finalists alike.
                exhausted="No preference between the finalists" if runoff else EXHAUSTED,
                advancing=None if runoff or len(rounds) < 2 else "advances to runoff",
            )
        )
    return "".join(parts)


EXHAUSTED = "Exhausted (no preference left)"


def _round_figure(
    caption: str,
    one: dict[str, Any],
    labels: dict[str, str],
    marks: dict[str, str],
    index: int,
    *,
    exhausted: str = EXHAUSTED,
    advancing: str | None = None,
    eliminated: str = "eliminated",
) -> str:
    """One round as bars and a table; ``marks`` says what each winner is called (see
    ``_marks``); ``advancing`` is the status of the options this round keeps (STAR's
    finalists), where it is not the last."""
    rows = [(labels.get(o, o), float(c), marks.get(o, "")) for o, c in one["counts"].items()]
    body = [
        [
            lab(labels.get(o, o)),
            f'<span data-round="{index}" data-option="{e(o)}">{c}</span>',
            (f"tied; {eliminated}" if marks.get(o) == "tied" else eliminated)
            if o in one["eliminated"]
            else (advancing or marks.get(o, "")),
        ]
        for o, c in one["counts"].items()
    ]
    if one.get("exhausted"):
        body.append([exhausted, str(one["exhausted"]), ""])
    table = _table(caption, ["Option", "Count", "Status"], body)
    return _figure(
        caption, _bar_svg(caption, rows, f"round-{index}"), table, f"round-{index}-heading"
    )


def _irv(document: dict[str, Any], labels: dict[str, str]) -> str:
    rounds = document["rounds"]
    if not rounds:
        return '<p id="no-rounds">No rounds yet: no ballots counted.</p>'
    last = len(rounds) - 1
    arose = _tie_round(document)
    if arose is None:
        # Preliminary results' last round is not the final one: more ballots may change it.
        final = "Final" if document["closed_at_position"] is not None else "Last"
        parts = [
            _round_figure(
                f"{final} round (round {last + 1})",
                rounds[last],
                labels,
                _marks(document),
                last,
            )
        ]
    else:
        # The rounds after an elimination tie the tie-break reports are one order of
        # elimination among several (the tied option declared last goes first), and each
        # tied option wins under some order: their final round, charted as "Final round",
        # named two finalists of thirty tied (browser review, 7). The round the tie arose
        # in is the same for every order.
        later = f"Round {last + 1}" if arose + 1 == last else f"Rounds {arose + 2} to {last + 1}"
        follow = "follows" if arose + 1 == last else "follow"
        parts = [
            _round_figure(
                f"Round {arose + 1}, where the tie arose",
                rounds[arose],
                labels,
                _marks(document),
                arose,
                eliminated="eliminated in the rounds shown (one possible choice)",
            ),
            f'<p id="possible-order">{later} in the table of every round {follow} one '
            "possible order of elimination: at each tie that no earlier round separates, "
            "the option declared last goes first. Each tied option wins under some order, "
            "so no winner follows from these rounds.</p>",
        ]
    options = list(labels)
    header = ["Round", *[lab(labels[o]) for o in options], "Exhausted", "Eliminated"]
    body = []
    for index, one in enumerate(rounds):
        previous = rounds[index - 1]["counts"] if index else {}
        cells = [str(index + 1) if arose is None or index <= arose else f"{index + 1} (one order)"]
        for option in options:
            if option not in one["counts"]:
                cells.append("out")
                continue
            count = one["counts"][option]
            moved = count - previous[option] if option in previous else 0
            change = f" ({moved:+d})" if index and moved else ""
            cells.append(
                f'<span data-round="{index}" data-option="{e(option)}">{count}</span>{change}'
            )
        cells.append(str(one["exhausted"]))
        cells.append(", ".join(lab(labels.get(o, o)) for o in one["eliminated"]) or "none")
        body.append(cells)
    caption = "Every round, with transfers (+/-) and exhausted ballots"
    if arose is not None:
        caption += f" (from round {arose + 2}, one possible order of elimination)"
    parts.append(
        '<div class="captioned">'
        f'<h3 id="rounds-heading">{e(caption)}</h3>'
        f"{_table(caption, header, body, 'rounds')}</div>"
    )
    return "".join(parts)


def _tie_round(document: dict[str, Any]) -> int | None:
    """The round (its index) where the elimination tie an undecided IRV tie reports arose,
    if rounds follow it, as the tie's reason names it ("... in round 31, ..."; the count
    (``domain.tabulation.irv``) names the first round whose fewest votes several options
    share and no earlier round separates). None for a tie of the final round, or a reason
    that names no round."""
    tie = document.get("tie")
    if tie is None or not _undecided(document):
        return None
    named = TIE_ROUND.search(str(tie["reason"]))
    if named is None:
        return None
    index = int(named[1]) - 1
    return index if 0 <= index < len(document["rounds"]) - 1 else None


def _stv(document: dict[str, Any], labels: dict[str, str]) -> str:
    """STV: the seats and the quota, then every stage as a table (votes are exact decimal
    texts with five places; an elected or excluded option's later cells say so, as the
    stages' own elected lists have it)."""
    seats, quota, stages = document.get("seats"), document.get("quota"), document["stages"]
    summary = (
        f'<p id="stv-quota">Seats: <span data-figure="seats">{e(seats)}</span>. '
        f'Quota: <span data-figure="quota">{e(quota or "none yet")}</span> votes '
        "(Droop: valid ballots / (seats + 1), whole part, plus one).</p>"
    )
    if not stages:
        return summary + '<p id="no-stages">No stages yet: no ballots counted.</p>'
    options = list(labels)
    header = [
        "Stage",
        "Action",
        *[lab(labels[o]) for o in options],
        "Non-transferable",
        "Elected",
        "Excluded",
    ]
    body = []
    elected: set[str] = set()  # by the stages shown so far (not ``winners``: under the
    # report tie-break it also holds tied options these stages excluded)
    for index, stage in enumerate(stages):
        elected.update(stage["elected"])
        source = labels.get(stage["from"], stage["from"]) if stage["from"] else ""
        if stage["action"] == "surplus":
            action = (
                f"surplus of {lab(source)}: {e(stage['surplus'])} at {e(stage['transfer_value'])}"
            )
        elif stage["action"] == "exclusion":
            action = f"exclusion of {lab(source)}"
        else:
            action = "first preferences"
        cells = [str(index + 1), action]
        for option in options:
            if option in stage["counts"]:
                cells.append(
                    f'<span data-stage="{index}" data-option="{e(option)}">'
                    f"{e(stage['counts'][option])}</span>"
                )
            else:
                cells.append("elected" if option in elected else "out")
        cells.append(e(stage["exhausted"]))
        cells.append(", ".join(lab(labels.get(o, o)) for o in stage["elected"]) or "none")
        cells.append(", ".join(lab(labels.get(o, o)) for o in stage["excluded"]) or "none")
        body.append(cells)
    caption = (
        "Every stage: votes of each continuing option, non-transferable votes, who was "
        "elected or excluded"
    )
    # A heading over the table's region, as IRV's rounds have: with its caption alone,
    # heading navigation skipped it (browser review, 12).
    return (
        f'{summary}<div class="captioned"><h3 id="stages-heading">{e(caption)}</h3>'
        f"{_table(caption, header, body, 'stages')}</div>"
    )


def _heat_map(document: dict[str, Any], labels: dict[str, str]) -> str:
    pairwise = document.get("pairwise") or {}
    options = [o["id"] for o in document["options"]]
    caption = "Pairwise: ballots preferring the row's option to the column's"
    if len(options) > PAIRWISE_MAX:
        eid = document["election_id"]
        # The script fetches these with the page's token (a link cannot send it).
        link = f"/api/elections/{e(eid)}/results"
        return (
            '<section aria-labelledby="heat-map-heading" id="pairwise-omitted">'
            f'<h3 id="heat-map-heading">{e(caption)}</h3><p>Not drawn for '
            f"{len(options)} options (a chart and a table of {len(options) ** 2} cells): "
            f'the pairwise counts are in the <a href="{link}" data-json="results-{e(eid)}.json">'
            "JSON results</a>.</p></section>"
        )

    def text(ab: int, ba: int) -> str:
        return f"{'win' if ab > ba else ('loss' if ab < ba else 'tie')} {ab}-{ba}"

    # Cells as wide as their longest text: at 70 the next cell covered a third digit, and
    # "win 107-68" read "win 107-6".
    longest = max(
        (
            _width(text(pairwise.get(a, {}).get(b, 0), pairwise.get(b, {}).get(a, 0)))
            for a in options
            for b in options
        ),
        default=0.0,
    )
    size = max(70, int(longest * 1.1) + 14)
    # Columns are numbered, rows named with their number: labels cut to a cell's width
    # read alike ("Option…" over every column). The label column fits the longest name,
    # up to HEAT_LABEL_MAX px; the chart keeps its natural size and scrolls in its own box.
    room = min(
        HEAT_LABEL_MAX,
        max([60.0, *(_width(f"{n + 1}. {labels[o]}") for n, o in enumerate(options))]),
    )
    left = int(room) + 10
    cells, body = [], []
    for row, a in enumerate(options):
        line = [f'<th scope="row">{lab(labels[a])}</th>']
        for col, b in enumerate(options):
            if a == b:
                line.append("<td>—</td>")
                continue
            ab, ba = pairwise.get(a, {}).get(b, 0), pairwise.get(b, {}).get(a, 0)
            outcome = "win" if ab > ba else ("loss" if ab < ba else "tie")
            colour = HEAT[("loss", "tie", "win").index(outcome)]
            x, y = left + col * size, 30 + row * 40
            cells.append(
                f'<rect x="{x}" y="{y}" width="{size - 4}" height="36" fill="{colour}"/>'
                f'<text x="{x + 6}" y="{y + 23}">{text(ab, ba)}</text>'
            )
            line.append(
                f'<td data-pair="{e(a)}>{e(b)}" data-outcome="{outcome}">'
                f"{outcome}: {ab} to {ba}</td>"
            )
        number = f"{row + 1}. "
        cells.append(
            f'<text x="0" y="{30 + row * 40 + 23}" class="row-label">{number}'
            f"{_fit(labels[a], room - _width(number))}</text>"
        )
        body.append(line)
    heads = "".join(
        f'<text x="{left + i * size + (size - 4) / 2:.1f}" y="18" text-anchor="middle" '
        f'class="col-label"><title>{e(labels[o])}</title>{i + 1}</text>'
        for i, o in enumerate(options)
    )
    width, height = left + 10 + size * len(options), 40 + 40 * len(options)
    svg = (
        f'<div class="chart-scroll" role="region" aria-label="Pairwise chart">'
        f'<svg class="chart natural" id="heat-map" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Heat map: {e(caption)}. The figures are in the table that follows.">'
        f"{heads}{''.join(cells)}</svg></div>"
    )
    header = "".join(f'<th scope="col">{lab(labels[o])}</th>' for o in options)
    table = (
        f'<div class="table-wrap" role="region" aria-label="{e(caption)}">'
        f'<table id="pairwise"><caption>{e(caption)}</caption>'
        f'<thead><tr><th scope="col">Row vs column</th>{header}</tr></thead><tbody>'
        + "".join(f"<tr>{''.join(line)}</tr>" for line in body)
        + "</tbody></table></div>"
    )
    # One column: the chart a full-width row, the table under it.
    return _figure(caption, svg, table, "heat-map-heading", wide=True)


def _option_table(document: dict[str, Any]) -> str:
    keys: list[str] = []
    for option in document["options"]:
        keys.extend(k for k in option if k not in ("id", "label", "histogram") and k not in keys)
    marks = _marks(document)
    rows = []
    for option in document["options"]:
        mark = marks.get(option["id"])
        cells = [lab(option["label"]) + (f" ({mark})" if mark else "")]
        cells.extend(
            f'<span data-option="{e(option["id"])}" data-figure="{e(k)}">'
            f"{_number(option.get(k))}</span>"
            for k in keys
        )
        rows.append(cells)
    headers = ["Option", *[e(k.replace("_", " ")) for k in keys]]
    caption = "Every option's figures"
    # A heading over the table's region, not a section: a section named as the region
    # inside it was two landmarks of one name (axe: landmark-unique).
    return (
        '<div class="captioned">'
        f'<h3 id="figures-heading">{e(caption)}</h3>'
        f"{_table(caption, headers, rows, 'figures')}</div>"
    )


def _notes(document: dict[str, Any]) -> str:
    if not document["notes"]:
        return ""
    labels = {o["id"]: o["label"] for o in document["options"]}
    tie = document.get("tie")
    tied = tie["options"] if tie else []
    # A long tie's options are listed once, under the headline.
    words = f"the {len(tied)} options of the tie (listed above)"
    items = "".join(
        f"<li>{_summarised(_note(note, document), labels, tied, words)}</li>"
        for note in document["notes"]
    )
    return f'<section aria-labelledby="notes"><h3 id="notes">Notes</h3><ul>{items}</ul></section>'


def _note(note: str, document: dict[str, Any]) -> str:
    """A note as the page words it. The document is the audited one and stays as it is; its
    "no ballots were cast" is the count's, which while stepped has seen none of the step
    under way, and after the close there is no "yet" about the winner."""
    if note != NO_BALLOTS:
        return note
    if _stepped(document):
        return (
            "No ballots counted yet: while open, ballots are counted in steps, so there is "
            "no leader yet."
        )
    if document["closed_at_position"] is not None:
        return "No ballots were cast, so there is no winner."
    return note


def _final(document: dict[str, Any]) -> str:
    head = document.get("final_chain_head")
    if document["closed_at_position"] is None:
        return ""
    if not head:
        return '<p id="chain-head">Final. The signed chain head is being sealed.</p>'
    return (
        '<section aria-labelledby="verify" id="chain-head"><h3 id="verify">Final: how to '
        "verify</h3><p>The audit log was sealed at position "
        f"{head['position']} with chain head <code>{e(head['hash'])}</code>, signed by key "
        f"<code>{e(head['key_id'])}</code> (checkpoint {head['checkpoint_id']}). Check it "
        "with <code>cardinal audit verify --file</code> on the operator's export "
        "(<code>cardinal audit export</code>) and the key from "
        "<code>GET /api/audit/public-key</code>.</p></section>"
    )


def _figure(
    caption: str,
    chart: str,
    table: str,
    heading: str | None = None,
    level: int = 3,
    *,
    wide: bool = False,
) -> str:
    """A chart and its table under a heading (h3, or h4 within a section) that names the
    figure: screen readers list the sections of a results page by their headings."""
    ident = heading or "fig-" + re.sub(r"[^a-z0-9]+", "-", caption.lower()).strip("-")
    return (
        f'<figure class="pair{" wide" if wide else ""}" aria-labelledby="{ident}"><figcaption>'
        f'<h{level} id="{ident}">{e(caption)}</h{level}></figcaption>{chart}{table}</figure>'
    )


def _table(
    caption: str, headers: list[str], rows: list[list[str]], table_id: str | None = None
) -> str:
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f'<th scope="col">{h}</th>' for h in headers)
    # Each row's first cell names it (an option, a round, a stage): a row header.
    body = "".join(
        "<tr>" + "".join(_cell(c, header=not i) for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return (
        f'<div class="table-wrap" role="region" aria-label="{e(caption)}">'
        f"<table{ident}><caption>{e(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _width(text: str, bold: bool = False) -> float:
    """The width of a chart text in px, a little over (other fonts run wider)."""
    return 13 * sum(map(_bold if bold else _glyph, text))


def _glyph(char: str) -> float:
    """A character's width in em."""
    return GLYPH.get(char, 0.65)


def _bold(char: str) -> float:
    """A bold character's width in em."""
    return BOLD.get(char, BOLD_OTHER)


NARROWEST = 13 * min(0.65, *GLYPH.values())  # px: no character is narrower


def _cell(content: str, *, header: bool = False) -> str:
    """A table cell, or a row's header; a figure's (digits, a sign, a change in brackets)
    is never broken."""
    tag = 'th scope="row"' if header else "td"
    end = "th" if header else "td"
    if NUMERIC.fullmatch(re.sub(r"<[^>]*>", "", content)):
        return f'<{tag} class="num">{content}</{end}>'
    return f"<{tag}>{content}</{end}>"


NUMERIC = re.compile(r"[-+\d.,() —]+")


def _fit(label: str, room: float, *, bold: bool = False) -> str:
    """A label cut in the middle to fit ``room`` px, the whole in a tooltip: "Option with
    a long name A" and "... B" stay apart where a cut at the end made them one.

    Linear in the room, not the label: cutting a character at a time and measuring each
    cut anew took 20 ms for a label of 1,000 characters (an option's most), seconds for a
    chart of 100 on the event loop. Only the characters that could fit are measured, once:
    the kept part's width is a prefix's plus a suffix's."""
    # Widths are sums of floats: the heat map's longest row label, given the label column
    # less its number's width, came out a rounding error too wide and was cut.
    room += 0.001
    glyph = _bold if bold else _glyph
    most = int(room / NARROWEST) + 1  # more characters than this never fit
    if len(label) <= most and _width(label, bold) <= room:
        return e(label)
    # The longest cut that fits: its first two thirds and last third of ``keep``
    # characters (both shrink as ``keep`` does, so the first that fits is the longest).
    keep = min(len(label), max(2, most))
    head = [0.0, *accumulate(map(glyph, label[: keep - keep // 3]))]
    tail = [0.0, *accumulate(map(glyph, reversed(label[len(label) - keep // 3 :])))]
    while keep > 2 and 13 * (head[keep - keep // 3] + glyph("…") + tail[keep // 3]) > room:
        keep -= 1
    cut = keep // 3
    return f"<title>{e(label)}</title>{e(label[: keep - cut])}…{e(label[len(label) - cut :])}"


def _number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}" if value.is_integer() else f"{value:.3f}".rstrip("0")
    return e(value)
