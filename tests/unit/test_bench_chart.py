"""The benchmark pictures: a sparkline scaled to a shared top, and a well-formed SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from infra.bench.chart import BLOCKS, Panel, _nice_ceiling, sparkline, svg

SVG = "{http://www.w3.org/2000/svg}"


def test_a_sparkline_has_one_block_per_value_scaled_to_the_top() -> None:
    assert sparkline([0, 50, 100]) == BLOCKS[0] + BLOCKS[4] + BLOCKS[8]
    # Against a shared top, a slower run draws lower bars.
    assert sparkline([50, 50], top=100) == BLOCKS[4] * 2
    assert sparkline([]) == ""
    assert sparkline([0, 0]) == BLOCKS[0] * 2


def test_the_axis_ends_at_a_round_number_above_the_peak() -> None:
    assert _nice_ceiling(5_724) == 10_000
    assert _nice_ceiling(4_100) == 5_000
    assert _nice_ceiling(180) == 200
    assert _nice_ceiling(0.0) == 1.0


def test_the_chart_is_svg_with_a_line_and_a_legend_entry_per_series() -> None:
    document = svg(
        [
            Panel(
                "Accepted ballots per second", "ballots/s", {"batched": [5000, 5600], "one": [800]}
            ),
            Panel("Latency p99", "ms", {"batched <&>": [40.0, 45.5]}),
        ]
    )
    root = ET.fromstring(document)
    assert root.tag == f"{SVG}svg"
    assert len(root.findall(f"{SVG}polyline")) == 3
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "batched" in texts
    assert "batched <&>" in texts  # escaped in the document, intact when read
    assert "10k" in texts  # the y axis top over a 5,600 peak
