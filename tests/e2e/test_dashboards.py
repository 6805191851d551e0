"""The dashboards in a real browser: Debian's chromium driven by Playwright.

Each method's page shows the values of its JSON results; a ballot shows on an open page
within 2 s without a reload; axe-core finds no serious or critical violation; screenshots
are kept under .cardinal/screenshots/ (the README's copies live in docs/screenshots/).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from api import context as api_context
from api.routes import pages, streams
from infra.store.migrations import migrate
from tests.databases import create_database, drop_database
from tests.integration.client import VotingClient, bearer, options
from tests.servers import ADMIN, running_api, settings_for

CHROMIUM = os.environ.get("CARDINAL_CHROMIUM", "/usr/bin/chromium")
AXE = (Path(__file__).parent / "assets" / "axe.min.js").read_text()
SHOTS = Path(".cardinal") / "screenshots"
README_SHOTS = Path("docs") / "screenshots"
WAIT_MS = 20_000

RANKINGS = [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "c", "b"], ["b", "a", "c"]]
SCORES = [{"a": 2, "b": 1, "c": 0}, {"a": -1, "b": 2, "c": 0}, {"a": 1, "b": 1, "c": 2}]
BALLOTS: dict[str, list[dict[str, Any]]] = {
    "plurality": [{"choice": c} for c in "aabcb"] + [{"choice": "a"}],
    "approval": [{"approve": ["a", "b"]}, {"approve": ["b"]}, {"approve": ["c", "b"]}],
    "borda": [{"ranking": r} for r in RANKINGS],
    "score": [{"scores": s} for s in SCORES],
    "star": [{"scores": {k: v + 2 for k, v in s.items()}} for s in SCORES],
    "irv": [{"ranking": r} for r in [*RANKINGS, ["c", "b"], ["c"]]],
    "schulze": [{"ranking": r} for r in RANKINGS],
    "ranked_pairs": [{"ranking": r} for r in RANKINGS],
    "copeland": [{"ranking": r} for r in RANKINGS],
    "minimax": [{"ranking": r} for r in RANKINGS],
    "stv": [{"ranking": r} for r in [*RANKINGS, ["a", "b"], ["a"], ["c"]]],
}
RULES: dict[str, dict[str, Any]] = {"stv": {"seats": 2}}


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    url = create_database("cardinal_pages")
    migrate(url)
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
async def site(database_url: str) -> AsyncIterator[str]:
    async with running_api(settings_for(database_url)) as url:
        yield url


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    # axe is injected as a script: the page's own CSP (self only) would refuse it.
    context = await browser.new_context(bypass_csp=True, viewport={"width": 1100, "height": 900})
    opened = await context.new_page()
    yield opened
    await context.close()


@pytest.fixture
async def voting(site: str) -> AsyncIterator[VotingClient]:
    async with httpx.AsyncClient(base_url=site, timeout=30) as http:
        yield VotingClient(http)


async def _election(voting: VotingClient, method: str, *, close: bool = True) -> str:
    election = await voting.create_election(
        method,
        public_results=True,
        live_results_step=1,
        title=f"Lunch vote ({method})",
        **RULES.get(method, {}),
    )
    await voting.open(election["id"])
    for n, ballot in enumerate(BALLOTS[method]):
        response = await voting.cast(election["id"], ballot, f"voter-{n}")
        assert response.status_code == 201, response.text
    if close:
        await voting.close(election["id"])
    else:  # a page opened next shows every ballot: the tally has counted the last one
        counted = await voting.results(election["id"], min_position=response.json()["position"])
        assert "warning" not in counted.headers, "the tally did not count the last ballot"
    return str(election["id"])


async def _results(voting: VotingClient, election_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:  # the close reaches the tally shortly after it is recorded
        body: dict[str, Any] = (
            await voting.http.get(f"/api/elections/{election_id}/results")
        ).json()
        if body["closed_at_position"] is not None or time.monotonic() > deadline:
            return body
        await voting.results(election_id, min_position=body["position"] + 1)


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}" if value.is_integer() else f"{value:.3f}".rstrip("0")
    return str(value)


async def _scan(page: Page) -> list[dict[str, Any]]:
    await page.add_script_tag(content=AXE)
    found: dict[str, Any] = await page.evaluate("async () => await axe.run(document)")
    return [v for v in found["violations"] if v["impact"] in ("serious", "critical")]


async def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    if os.environ.get("CARDINAL_README_SCREENSHOTS") and name in ("overview", "irv", "schulze"):
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHOTS / f"{name}.png", README_SHOTS / f"{name}.png")


@pytest.mark.parametrize("method", list(BALLOTS))
async def test_each_method_page_shows_its_json_results(
    method: str, voting: VotingClient, site: str, page: Page
) -> None:
    election_id = await _election(voting, method)
    results = await _results(voting, election_id)
    await page.goto(f"{site}/elections/{election_id}")
    winners = page.locator("#winners")
    await winners.wait_for(timeout=WAIT_MS)
    assert await winners.get_attribute("data-winners") == " ".join(results["winners"])
    assert await page.locator("#standing").get_attribute("data-state") == "final"
    ballots = page.locator("#standing [data-figure=ballots]")
    assert await ballots.inner_text() == str(results["ballots"])
    for option in results["options"]:
        for key, value in option.items():
            if key in ("id", "label", "histogram"):
                continue
            cell = page.locator(f'#figures [data-option="{option["id"]}"][data-figure="{key}"]')
            assert await cell.inner_text() == _shown(value), (method, option["id"], key)
    if method == "irv":
        for index, one in enumerate(results["rounds"]):
            for option, count in one["counts"].items():
                cell = page.locator(f'#rounds [data-round="{index}"][data-option="{option}"]')
                assert await cell.inner_text() == str(count)
    if method == "stv":
        assert (
            await page.locator("#stv-quota [data-figure=quota]").inner_text() == (results["quota"])
        )
        for index, stage in enumerate(results["stages"]):
            for option, votes in stage["counts"].items():
                cell = page.locator(f'#stages [data-stage="{index}"][data-option="{option}"]')
                assert await cell.inner_text() == votes
    if results["pairwise"] is not None:
        for a, row in results["pairwise"].items():
            for b, count in row.items():
                against = results["pairwise"][b][a]
                outcome = "win" if count > against else ("loss" if count < against else "tie")
                cell = page.locator(f'#pairwise [data-pair="{a}>{b}"]')
                assert await cell.get_attribute("data-outcome") == outcome
                assert await cell.inner_text() == f"{outcome}: {count} to {against}"
        assert await page.locator("#heat-map").count() == 1
    assert await page.locator("svg.chart").count() >= 1
    assert await page.locator("#chain-head").count() == 1
    await _shot(page, method)
    if method in ("irv", "schulze", "score", "stv"):
        assert await _scan(page) == []


ROW_HEADERS = """() => Array.from(document.querySelectorAll(
    "#figures tbody tr, #rounds tbody tr, #stages tbody tr"))
  .filter((row) => !(row.firstElementChild.tagName === "TH"
    && row.firstElementChild.getAttribute("scope") === "row")).length"""


async def test_tables_have_row_headers_and_charts_a_name_of_their_own(
    voting: VotingClient, site: str, page: Page
) -> None:
    """Data rows had no header cell, and the bar chart's name and heading repeated the
    panel's "Results" (review a11y, 5)."""
    for method in ("plurality", "irv", "stv"):
        election_id = await _election(voting, method, close=False)
        await page.goto(f"{site}/elections/{election_id}")
        await page.locator("#winners").wait_for(timeout=WAIT_MS)
        assert await page.locator("#figures tbody tr").count() == 3
        assert await page.evaluate(ROW_HEADERS) == 0, method
        if method == "plurality":
            chart = page.get_by_role("img", name="Bar chart: Votes per option", exact=False)
            assert await chart.count() == 1  # (the phone's chart is hidden)
            headings = page.get_by_role("heading", name="Results", exact=True)
            assert await headings.count() == 1


SCROLL_STOPS = """() => Array.from(document.querySelectorAll(".table-wrap, .chart-scroll"))
  .map((box) => [box.scrollWidth > box.clientWidth, box.getAttribute("tabindex")])"""


async def test_only_boxes_that_scroll_are_tab_stops(
    voting: VotingClient, site: str, browser: Browser
) -> None:
    """Every table's box was a tab stop, scrolling or not (review a11y, 6): only one that
    overflows takes focus, so that a keyboard can scroll it."""
    election_id = await _election(voting, "irv", close=False)
    for width in (1100, 390):
        context = await browser.new_context(viewport={"width": width, "height": 800})
        try:
            page = await context.new_page()
            await page.goto(f"{site}/elections/{election_id}")
            await page.locator("#winners").wait_for(timeout=WAIT_MS)
            await page.wait_for_function(
                f"({SCROLL_STOPS})().every(([wide, stop]) => (stop === '0') === wide)",
                timeout=5_000,
            )
            boxes = await page.evaluate(SCROLL_STOPS)
            if width == 1100:
                assert not [box for box in boxes if box[0]], boxes
        finally:
            await context.close()
    phone = await browser.new_context(viewport={"width": 390, "height": 800})
    try:
        page = await phone.new_page()
        await page.goto(f"{site}/")
        await page.locator("#overview").wait_for(timeout=WAIT_MS)
        assert await page.locator("#overview").locator("xpath=..").get_attribute("tabindex") == "0"
    finally:
        await phone.close()


async def test_a_right_to_left_title_reads_right_to_left_and_final_results_have_no_pause(
    voting: VotingClient, site: str, page: Page
) -> None:
    """An RTL election's h1 was laid out left to right, and "Pause updates" stayed on
    results that change no more (review a11y, 6)."""
    election = await voting.create_election(
        "plurality", public_results=True, live_results_step=1, title="בחירות לוועד (2026)"
    )
    await voting.open(election["id"])
    await voting.cast(election["id"], {"choice": "a"}, "v1")
    await page.goto(f"{site}/elections/{election['id']}")
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    assert await page.locator("h1").evaluate("(h1) => h1.matches(':dir(rtl)')")
    assert await page.locator("#pause").is_visible()  # open: there is something to pause
    await voting.close(election["id"])
    await page.locator("#mode", has_text="final").wait_for(timeout=WAIT_MS)
    await page.locator("#pause").wait_for(state="hidden", timeout=5_000)
    await page.reload()  # opened on final results
    await page.locator("#mode", has_text="final").wait_for(timeout=WAIT_MS)
    assert await page.locator("#pause").is_hidden()


async def test_the_overview_lists_elections_and_passes_axe(
    voting: VotingClient, site: str, page: Page
) -> None:
    election_id = await _election(voting, "plurality", close=False)
    await page.goto(site + "/")
    row = page.locator(f'#overview tr[data-election="{election_id}"]')
    await row.wait_for(timeout=WAIT_MS)
    assert "live" in await row.inner_text()
    assert await row.locator("[data-figure=ballot_entries]").inner_text() == str(
        len(BALLOTS["plurality"])
    )
    # Each row is headed by its election's title (review a11y: a screen reader read the
    # figures of a row without the election they belong to).
    assert await row.locator('th[scope="row"]').inner_text() == "Lunch vote (plurality)"
    await _shot(page, "overview")
    assert await _scan(page) == []


async def test_a_ballot_shows_on_an_open_page_within_two_seconds(
    voting: VotingClient, site: str, page: Page
) -> None:
    election_id = await _election(voting, "plurality", close=False)
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    before = len(BALLOTS["plurality"])
    ballots = page.locator("#standing [data-figure=ballots]")
    # The page may have loaded before the last of them reached the tally: it catches up.
    await page.wait_for_function(
        f"document.querySelector('#standing [data-figure=ballots]').textContent === '{before}'",
        timeout=WAIT_MS,
    )
    response = await voting.cast(election_id, {"choice": "c"}, "late-voter")
    assert response.status_code == 201
    recorded = time.monotonic()
    await page.wait_for_function(
        f"document.querySelector('#standing [data-figure=ballots]').textContent === '{before + 1}'",
        timeout=WAIT_MS,
    )
    assert time.monotonic() - recorded < 2.0
    assert "position" in await page.locator("#announce").inner_text()
    # Paused: the page holds still while ballots arrive, and catches up on resume.
    await page.locator("#pause").click()
    assert await page.locator("#pause").get_attribute("aria-pressed") == "true"
    await voting.cast(election_id, {"choice": "c"}, "paused-voter")
    await voting.results(election_id, min_position=response.json()["position"] + 1)
    await page.wait_for_timeout(1000)
    assert await ballots.inner_text() == str(before + 1)
    await page.locator("#pause").click()
    await page.wait_for_function(
        f"document.querySelector('#standing [data-figure=ballots]').textContent === '{before + 2}'",
        timeout=WAIT_MS,
    )


async def test_a_private_election_asks_for_a_token_once(
    voting: VotingClient, site: str, page: Page
) -> None:
    election = await voting.create_election("plurality", live_results_step=1)
    await voting.open(election["id"])
    await voting.cast(election["id"], {"choice": "b"}, "v1")
    await page.goto(f"{site}/elections/{election['id']}")
    await page.locator("#token-form").wait_for(state="visible", timeout=WAIT_MS)
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    assert await page.evaluate("sessionStorage.getItem('cardinal-token')") == ADMIN
    await page.reload()
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    assert await page.locator("#token-form").is_hidden()
    anonymous = await voting.http.get(f"/elections/{election['id']}/panel")
    assert anonymous.status_code == 401
    assert (
        await voting.http.get(f"/elections/{election['id']}/panel", headers=bearer(ADMIN))
    ).status_code == 200


async def test_a_results_page_fits_a_phone_and_works_from_the_keyboard(
    voting: VotingClient, site: str, browser: Browser
) -> None:
    election_id = await _election(voting, "schulze", close=False)
    context = await browser.new_context(viewport={"width": 390, "height": 800})
    try:
        phone = await context.new_page()
        await phone.goto(f"{site}/elections/{election_id}")
        await phone.locator("#heat-map").wait_for(timeout=WAIT_MS)
        # No sideways scrolling of the page: wide tables scroll inside their own box.
        assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
        for _ in range(6):  # the skip link, the nav link, then the pause control
            await phone.keyboard.press("Tab")
            if await phone.evaluate("document.activeElement.id") == "pause":
                break
        assert await phone.evaluate("document.activeElement.id") == "pause"
        await phone.keyboard.press("Space")
        assert await phone.locator("#pause").get_attribute("aria-pressed") == "true"
        assert await phone.locator("#mode").inner_text() == "Live updates: paused"
        await _shot(phone, "phone")
    finally:
        await context.close()


async def test_a_slow_answer_never_puts_older_results_back_on_the_page(
    voting: VotingClient, site: str, page: Page
) -> None:
    """Each event fetched the panel at once and showed whichever answer came last: one
    delayed answer put older results back, for good (review helper-30). Fetches now run
    one at a time, and an answer older than what is shown is dropped."""
    election_id = await _election(voting, "plurality", close=False)
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    before = len(BALLOTS["plurality"])
    delayed: list[float] = []

    async def slow_first(route: Route) -> None:
        if delayed:
            await route.continue_()
            return
        delayed.append(time.monotonic())
        answer = await route.fetch()  # the panel as it is now
        await asyncio.sleep(3)
        await route.fulfill(response=answer)

    await page.route("**/panel", slow_first)
    first = await voting.cast(election_id, {"choice": "c"}, "slow-1")
    await page.wait_for_function("true")  # let the event arrive
    deadline = time.monotonic() + 10
    while not delayed:
        assert time.monotonic() < deadline, "the page did not fetch its panel"
        await asyncio.sleep(0.05)
    await voting.results(election_id, min_position=first.json()["position"])
    await voting.cast(election_id, {"choice": "c"}, "slow-2")
    await page.wait_for_function(
        f"document.querySelector('#standing [data-figure=ballots]').textContent === '{before + 2}'",
        timeout=WAIT_MS,
    )
    await page.wait_for_timeout(max(0.0, delayed[0] + 3.5 - time.monotonic()) * 1000)
    assert await page.locator("#standing [data-figure=ballots]").inner_text() == str(before + 2)


async def test_a_failed_first_fetch_is_tried_again(
    voting: VotingClient, site: str, page: Page
) -> None:
    """A 503 when the token was entered left the page blank for good (review helper-30)."""
    election = await voting.create_election("plurality", live_results_step=1)
    await voting.open(election["id"])
    await voting.cast(election["id"], {"choice": "b"}, "v1")
    await page.goto(f"{site}/elections/{election['id']}")
    await page.locator("#token-form").wait_for(state="visible", timeout=WAIT_MS)
    refused: list[str] = []

    async def busy_once(route: Route) -> None:
        if refused:
            await route.continue_()
            return
        refused.append(route.request.url)
        await route.fulfill(
            status=503,
            headers={"Retry-After": "1", "Content-Type": "application/problem+json"},
            body='{"title": "Service unavailable", "status": 503, "detail": "busy"}',
        )

    await page.route("**/panel", busy_once)
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    assert refused
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)


async def test_an_unknown_election_is_a_page_not_a_problem_document(site: str, page: Page) -> None:
    """A person who follows a stale link gets a page with a way back (it was raw
    problem+json, review helper-30), and the page follows nothing. Without a token, an id
    that names no election gets the page of an election without public results (a 404
    there told anyone which ids name a private one: security review F3); the panel, read
    with a token, says there is none."""
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    answer = await page.goto(f"{site}/elections/00000000-0000-4000-8000-000000000000")
    assert answer is not None
    assert answer.status == 200
    assert "text/html" in answer.headers["content-type"]
    assert await page.locator("h1").inner_text() == "Election results"
    await page.locator("#token").wait_for(timeout=WAIT_MS)  # as for a private election
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    missing = page.locator("#missing")
    await missing.wait_for(timeout=WAIT_MS)
    assert "There is no election at this address" in await missing.inner_text()
    await page.wait_for_timeout(500)
    assert not [url for url in requests if "/stream" in url or "undefined" in url]
    malformed = await page.goto(f"{site}/elections/not-an-id")
    assert malformed is not None
    assert malformed.status == 404
    assert await page.locator("h1").inner_text() == "Election not found"
    icon = await page.request.get(f"{site}/favicon.ico")
    assert icon.status == 204  # (no 404 in the console of every page)


async def test_a_panel_outage_is_retried_with_backoff_not_once_per_event(
    voting: VotingClient, site: str, page: Page
) -> None:
    """Each event fetched the panel at once, whatever the backoff: a busy election's
    viewers each sent four requests a second to a failing server (review helper-36)."""
    election_id = await _election(voting, "plurality", close=False)
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    failing: list[float] = []
    outage = [True]

    async def down(route: Route) -> None:
        if not outage[0]:
            await route.continue_()
            return
        failing.append(time.monotonic())
        await route.fulfill(status=503, headers={"Retry-After": "1"}, body="busy")

    await page.route("**/panel", down)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 3.0:  # events keep coming, about 4 a second
        await voting.cast(election_id, {"choice": "b"}, f"busy-{n}")
        n += 1
        await asyncio.sleep(0.2)
    outage[0] = False
    assert failing
    assert len(failing) <= 4, [round(t - started, 2) for t in failing]
    await page.wait_for_function(
        f"document.querySelector('#standing [data-figure=ballots]').textContent === "
        f"'{len(BALLOTS['plurality']) + n}'",
        timeout=WAIT_MS,
    )


async def test_a_fetch_that_fails_while_streaming_is_tried_again(
    voting: VotingClient, site: str, page: Page
) -> None:
    """The fetch for an event failed, and the page kept the older results, the close's
    perhaps, until another event came (review helper-34)."""
    election_id = await _election(voting, "plurality", close=False)
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    failed: list[str] = []

    async def fail_once(route: Route) -> None:
        if failed:
            await route.continue_()
            return
        failed.append(route.request.url)
        await route.fulfill(status=503, headers={"Retry-After": "1"}, body="busy")

    await page.route("**/panel", fail_once)
    await voting.close(election_id)
    await page.locator("#standing[data-state=final]").wait_for(timeout=WAIT_MS)
    assert failed


async def test_an_overview_with_more_elections_than_it_shows_says_how_many_more(
    voting: VotingClient, site: str, page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overview listed every election (2,000 elections: 8 MB a page): it shows at most
    OVERVIEW_LIMIT, the open ones first, and says how many it leaves out."""
    monkeypatch.setattr(streams, "OVERVIEW_LIMIT", 1)
    await voting.create_election("plurality", public_results=True, title="Left out")
    shown = await _election(voting, "plurality", close=False)
    await page.goto(site + "/")
    await page.locator(f'#overview tr[data-election="{shown}"]').wait_for(timeout=WAIT_MS)
    assert await page.locator("#overview tbody tr").count() == 1
    more = page.locator("#more")
    await more.wait_for(timeout=WAIT_MS)
    assert "more election" in await more.inner_text()
    assert "not shown here" in await more.inner_text()
    assert await _scan(page) == []


async def test_the_public_overview_shows_an_election_opening(
    voting: VotingClient, site: str, page: Page
) -> None:
    """The public overview's position moves only with what it shows; an opening changes
    what it shows without moving it, and the page must follow all the same."""
    election = await voting.create_election("plurality", public_results=True, title="Opens later")
    await page.goto(f"{site}/")
    row = page.locator(f"tr[data-election='{election['id']}']")
    await row.wait_for(timeout=WAIT_MS)
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    assert "draft" in await row.inner_text()
    await voting.open(election["id"])
    await page.wait_for_function(
        f"document.querySelector(\"tr[data-election='{election['id']}']\").textContent"
        ".includes('open')",
        timeout=WAIT_MS,
    )


CITIES = [
    ("zurich", "Zürich"),
    ("tokyo", "Tokyo"),
    ("cairo", "القاهرة Cairo"),
    ("sao", "São Paulo"),
    ("reykjavik", "Reykjavík"),
    ("moscow", "Москва"),
    ("telaviv", "תל אביב"),
    ("ouaga", "Ouagadougou"),
]

# Every word of every table cell on one line: a word or a figure broken across lines has
# client rectangles at more than one height. (And a figure's cell, "94 (+3)", as a whole.)
BROKEN_WORDS = """() => {
  const broken = [];
  const lines = (range) =>
    new Set(Array.from(range.getClientRects()).map((r) => Math.round(r.top))).size;
  for (const cell of document.querySelectorAll("#panel td, #panel th, #panel caption")) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        if (lines(range) > 1) broken.push(m[0]);
      }
    }
    if (cell.classList.contains("num")) {
      const range = document.createRange();
      range.selectNodeContents(cell);
      if (lines(range) > 1) broken.push(cell.textContent);
    }
  }
  return broken;
}"""


async def _cast_many(
    voting: VotingClient, election_id: str, ballots: list[dict[str, Any]], prefix: str
) -> None:
    for start in range(0, len(ballots), 25):
        answers = await asyncio.gather(
            *(
                voting.cast(election_id, ballot, f"{prefix}-{start + n}")
                for n, ballot in enumerate(ballots[start : start + 25])
            )
        )
        assert all(a.status_code == 201 for a in answers), [a.text for a in answers]


async def test_table_cells_keep_words_and_figures_whole(
    voting: VotingClient, site: str, browser: Browser
) -> None:
    """overflow-wrap: anywhere on cells gave a phone one-letter columns, 94 read "9/4",
    and headers "Vot/es" at desktop width (review dash, 1). Cells break between words
    only; a wide table scrolls in its own box, never the page. Its sections are headings
    that name the figures (review dash, 9), and axe stays clean."""
    ids = [c for c, _ in CITIES]
    election = await voting.create_election(
        "irv",
        public_results=True,
        live_results_step=1,
        title="Best city",
        options=[{"id": c, "label": label} for c, label in CITIES],
    )
    await voting.open(election["id"])
    ballots = [{"ranking": ids[n % 8 :] + ids[: n % 8]} for n in range(8)]
    ballots += [{"ranking": ["zurich", "tokyo"]}] * 94 + [{"ranking": ["tokyo"]}] * 61
    ballots += [{"ranking": ["cairo", "sao"]}] * 30 + [{"ranking": ["sao", "tokyo"]}] * 10
    await _cast_many(voting, election["id"], ballots, "city")
    await voting.close(election["id"])
    for width in (375, 1100):
        context = await browser.new_context(
            bypass_csp=True, viewport={"width": width, "height": 800}
        )
        try:
            screen = await context.new_page()
            await screen.goto(f"{site}/elections/{election['id']}")
            await screen.locator("#standing[data-state=final]").wait_for(timeout=WAIT_MS)
            await screen.locator("#rounds").wait_for(timeout=WAIT_MS)
            assert await screen.evaluate(BROKEN_WORDS) == [], width
            assert await screen.evaluate("document.documentElement.scrollWidth") <= width
            await _shot(screen, f"irv-cities-{width}")
            if width == 375:
                named = await screen.evaluate(
                    """() => Array.from(document.querySelectorAll("figure")).map((f) => {
                      const h = document.getElementById(f.getAttribute("aria-labelledby"));
                      return h ? h.tagName : null; })"""
                )
                assert named
                assert set(named) == {"H3"}, named
                assert await screen.locator("#panel h3").count() >= 4
                assert await _scan(screen) == []
        finally:
            await context.close()


async def test_every_heat_map_figure_fits_its_cell(
    voting: VotingClient, site: str, page: Page
) -> None:
    """Cells 66 wide held "win 107-6" of "win 107-68": the next cell covered the rest
    (review dash, 2). Each cell's text now fits inside its rectangle."""
    election = await voting.create_election(
        "schulze", public_results=True, live_results_step=1, title="Three-digit pairs"
    )
    await voting.open(election["id"])
    ballots = [{"ranking": ["a", "b", "c"]}] * 107 + [{"ranking": ["b", "c", "a"]}] * 68
    await _cast_many(voting, election["id"], ballots, "pair")
    await voting.close(election["id"])
    await page.goto(f"{site}/elections/{election['id']}")
    await page.locator("#standing[data-state=final]").wait_for(timeout=WAIT_MS)
    cells = await page.evaluate(
        """() => Array.from(document.querySelectorAll("#heat-map rect")).map((rect) => {
          const text = rect.nextElementSibling;
          return [text.textContent,
                  Number(text.getAttribute("x")) + text.getComputedTextLength(),
                  Number(rect.getAttribute("x")) + Number(rect.getAttribute("width"))];
        })"""
    )
    assert len(cells) == 6
    assert "win 107-68" in [text for text, _, _ in cells]
    assert [c for c in cells if c[1] > c[2]] == []


async def test_the_live_region_speaks_at_most_every_twenty_seconds(
    voting: VotingClient, site: str, page: Page
) -> None:
    """The polite live region spoke on every event, up to 4 times a second (review dash,
    3): it now speaks at most every 20 s, and at once when the results become final."""
    election_id = await _election(voting, "plurality", close=False)
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    await page.evaluate(
        """() => { window.said = [];
          new MutationObserver(() => window.said.push(
            document.getElementById("announce").textContent))
            .observe(document.getElementById("announce"),
                     { childList: true, characterData: true, subtree: true }); }"""
    )
    before = len(BALLOTS["plurality"])
    for n in range(12):  # for the winner, "a": the winners do not change
        response = await voting.cast(election_id, {"choice": "a"}, f"chatty-{n}")
        assert response.status_code == 201
        await page.wait_for_function(
            "document.querySelector('#standing [data-figure=ballots]').textContent === "
            f"'{before + n + 1}'",
            timeout=WAIT_MS,
        )
        await asyncio.sleep(0.25)
    said = await page.evaluate("window.said")
    assert len(said) <= 1, said
    await voting.close(election_id)
    await page.wait_for_function("window.said.some((text) => text.includes('final'))", timeout=5000)


async def test_the_live_region_says_leading_while_open_and_winner_at_the_close(
    voting: VotingClient, site: str, page: Page
) -> None:
    """An open election counted exactly (not in steps) was announced "Winner: Option A"
    (accessibility review): until the close it only leads."""
    election_id = await _election(voting, "plurality", close=False)
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    response = await voting.cast(election_id, {"choice": "a"}, "late-voter")
    assert response.status_code == 201
    announce = page.locator("#announce")
    await expect(announce).to_contain_text("(preliminary)", timeout=WAIT_MS)
    said = await announce.inner_text()
    assert "Leading: Option A" in said
    assert "Winner" not in said
    await voting.close(election_id)
    await expect(announce).to_contain_text("(final)", timeout=WAIT_MS)
    assert "Winner: Option A" in await announce.inner_text()


async def test_a_change_of_leader_waits_ten_seconds_after_the_last_announcement(
    voting: VotingClient, site: str, page: Page
) -> None:
    """A change of the leaders was spoken at once, a second after the last announcement,
    and could be every second (accessibility review): it now waits until 10 s have passed
    since the last one, and the final results are still spoken at once."""
    election_id = await _election(voting, "plurality", close=False)  # a 3, b 2, c 1
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    await page.evaluate(
        """() => { window.said = [];
          new MutationObserver(() => window.said.push({
              text: document.getElementById("announce").textContent,
              at: performance.now() / 1000 }))
            .observe(document.getElementById("announce"),
                     { childList: true, characterData: true, subtree: true }); }"""
    )
    assert (await voting.cast(election_id, {"choice": "c"}, "first")).status_code == 201
    await page.wait_for_function("window.said.length === 1", timeout=WAIT_MS)
    for n in range(2):  # b 4: the leader changes, on the heels of that announcement
        assert (await voting.cast(election_id, {"choice": "b"}, f"b-{n}")).status_code == 201
    await expect(page.locator("#winners")).to_have_attribute("data-winners", "b", timeout=WAIT_MS)
    assert len(await page.evaluate("window.said")) == 1  # (it was spoken as it showed)
    await page.wait_for_function("window.said.length === 2", timeout=WAIT_MS)
    said = await page.evaluate("window.said")
    assert "Leading: Option B" in said[1]["text"]
    assert said[1]["at"] - said[0]["at"] >= 9.9, said
    await voting.close(election_id)  # just after that announcement: said at once all the same
    await page.wait_for_function(
        "window.said.some((one) => one.text.includes('(final)'))", timeout=5000
    )


async def test_an_update_keeps_the_panel_in_place_and_the_focus(
    voting: VotingClient, site: str, page: Page
) -> None:
    """The panel was rebuilt on every update, which lost a screen reader's place and the
    focus (accessibility review): what is still there keeps its node, updated in place."""
    election_id = await _election(voting, "plurality", close=False)  # a 3, b 2, c 1
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    await page.evaluate(
        """() => {
          const heading = document.getElementById("figures-heading");
          heading.tabIndex = -1;
          heading.focus();
          window.kept = { heading, winners: document.getElementById("winners"),
            ballots: document.querySelector("#standing [data-figure=ballots]"),
            bar: document.querySelector("#chart-votes rect"),
            cell: document.querySelector('#figures [data-option="a"][data-figure="votes"]') };
        }"""
    )
    before = len(BALLOTS["plurality"])
    for n, choice in enumerate("ac"):  # then a tie-free change of the standings
        assert (await voting.cast(election_id, {"choice": choice}, f"v-{n}")).status_code == 201
        await expect(page.locator("#standing [data-figure=ballots]")).to_have_text(
            str(before + n + 1), timeout=WAIT_MS
        )
    kept = await page.evaluate(
        """() => ({
          nodes: [document.getElementById("figures-heading"), document.getElementById("winners"),
            document.querySelector("#standing [data-figure=ballots]"),
            document.querySelector("#chart-votes rect"),
            document.querySelector('#figures [data-option="a"][data-figure="votes"]')]
            .map((node, i) => node === Object.values(window.kept)[i]),
          focused: document.activeElement === window.kept.heading,
          votes: window.kept.cell.textContent,
        })"""
    )
    assert kept == {"nodes": [True] * 5, "focused": True, "votes": "4"}


async def test_a_burst_of_events_fetches_the_panel_at_most_once_a_second(
    voting: VotingClient, site: str, page: Page
) -> None:
    """Every event fetched the whole panel again, back to back (review dash, 4)."""
    election_id = await _election(voting, "plurality", close=False)
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    # Timed in the page, where the script decides (the test process's view of a request,
    # through the browser's network stack and the driver, lags by a varying amount on a
    # busy machine: 2.61 s and 3.37 s apart there for fetches 1 s apart here).
    await page.evaluate(
        """() => {
            window.panelFetches = [];
            const fetchOf = window.fetch;
            window.fetch = (resource, init) => {
                if (String(resource).endsWith("/panel")) {
                    window.panelFetches.push(performance.now() / 1000);
                }
                return fetchOf(resource, init);
            };
        }"""
    )
    # A burst of a fixed size (a loop timed at 3 s cast 14 ballots, not 15, on a machine
    # busy with other suites): 20 ballots 50 ms apart, a second or more.
    n = 20
    for k in range(n):
        response = await voting.cast(election_id, {"choice": "b"}, f"burst-{k}")
        assert response.status_code == 201
        await asyncio.sleep(0.05)
    await page.wait_for_function(
        "document.querySelector('#standing [data-figure=ballots]').textContent === "
        f"'{len(BALLOTS['plurality']) + n}'",
        timeout=WAIT_MS,
    )
    fetched: list[float] = await page.evaluate("() => window.panelFetches")
    gaps = [later - earlier for earlier, later in itertools.pairwise(fetched)]
    assert fetched
    assert len(fetched) < n  # coalesced: not a fetch per event
    assert min(gaps, default=1.0) > 0.9, [round(t - fetched[0], 2) for t in fetched]


async def _private_page(voting: VotingClient, site: str, page: Page) -> str:
    election = await voting.create_election("plurality", live_results_step=1)
    await voting.open(election["id"])
    await voting.cast(election["id"], {"choice": "b"}, "v1")
    await page.goto(f"{site}/elections/{election['id']}")
    await page.locator("#token-form").wait_for(state="visible", timeout=WAIT_MS)
    return str(election["id"])


async def test_a_refused_token_on_the_overview_is_said_and_keeps_focus(
    voting: VotingClient, site: str, page: Page
) -> None:
    """On the overview a refused token was never announced and focus left the field for
    the panel (review a11y, 2): the field is marked invalid, keeps focus, and an alert
    says why."""
    await _election(voting, "plurality", close=False)
    await page.goto(site + "/")
    await page.locator("#overview").wait_for(timeout=WAIT_MS)
    await page.fill("#token", "not-a-token")
    await page.press("#token", "Enter")
    await page.wait_for_function(
        """() => document.getElementById("token").getAttribute("aria-invalid") === "true"
            && document.getElementById("token-error").textContent.includes("not accepted")""",
        timeout=WAIT_MS,
    )
    await page.locator("#overview").wait_for(timeout=WAIT_MS)  # the public listing again
    await page.wait_for_function("document.activeElement.id === 'token'", timeout=5_000)
    assert await page.locator("#token-error").get_attribute("role") == "alert"


async def test_a_stale_token_on_a_public_page_is_forgotten_without_taking_focus(
    voting: VotingClient, site: str, page: Page
) -> None:
    """A token kept in the session from before (expired, or refused elsewhere) made a public
    results page move focus into the token field as it loaded, and raise an alert about a
    token the reader had not just given (the merge review): it is forgotten quietly, and
    the public results are shown."""
    election_id = await _election(voting, "plurality", close=False)
    await page.goto(site + "/")
    await page.evaluate("sessionStorage.setItem('cardinal-token', 'stale-token')")
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    await page.wait_for_function(
        "sessionStorage.getItem('cardinal-token') === null", timeout=WAIT_MS
    )
    assert await page.evaluate("document.activeElement.id") != "token"
    assert await page.locator("#token-error").inner_text() == ""
    assert await page.locator("#token").get_attribute("aria-invalid") is None


async def test_an_empty_token_is_said_not_ignored(
    voting: VotingClient, site: str, page: Page
) -> None:
    """Submitting the token form empty did nothing at all (review a11y, 2)."""
    await _private_page(voting, site, page)
    await page.press("#token", "Enter")
    await page.wait_for_function(
        """() => document.getElementById("token-error").textContent === "Enter a token."
            && document.getElementById("token").getAttribute("aria-invalid") === "true"
            && document.activeElement.id === 'token' """,
        timeout=5_000,
    )
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    assert await page.locator("#token").get_attribute("aria-invalid") is None
    assert await page.locator("#token-error").inner_text() == ""


async def test_a_lost_stream_is_tried_again_gradually_before_polling(
    voting: VotingClient, site: str, page: Page
) -> None:
    """A token page (fetch-read stream) went to polling after 3 failures 2 s apart, and
    said so for 30 s after a short API restart (review dash, 6): it now tries again after
    1, 2, 4 and 8 s first."""
    await _private_page(voting, site, page)
    refused: list[float] = []

    async def restarting(route: Route) -> None:
        if len(refused) < 3:
            refused.append(time.monotonic())
            await route.abort("connectionrefused")
            return
        await route.continue_()

    await page.route("**/results/stream", restarting)
    await page.evaluate(
        """() => { window.modes = [];
          new MutationObserver(() => window.modes.push(
            document.getElementById("mode").textContent))
            .observe(document.getElementById("mode"),
                     { childList: true, characterData: true, subtree: true }); }"""
    )
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    modes = await page.evaluate("window.modes")
    assert len(refused) == 3
    assert not [m for m in modes if "polling" in m], modes
    assert any("reconnecting" in m for m in modes), modes


async def test_the_token_prompt_speaks_to_a_person_and_a_token_can_be_forgotten(
    voting: VotingClient, site: str, page: Page
) -> None:
    """The prompt read "send an Authorization: Bearer <token> header", and a stored token
    could not be taken back (review dash, 8)."""
    await _private_page(voting, site, page)
    why = await page.locator("#token-why").inner_text()
    assert "Authorization" not in why
    assert "Bearer" not in why
    assert "not public" in why
    assert await page.locator("#forget-token").is_hidden()
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    forget = page.locator("#forget-token")
    assert await forget.is_visible()
    await forget.click()
    await page.locator("#token-form").wait_for(state="visible", timeout=WAIT_MS)
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.locator("#forget-token").is_hidden()
    assert await page.locator("#winners").count() == 0


async def test_a_draft_page_says_not_open_yet(voting: VotingClient, site: str, page: Page) -> None:
    """A draft read "preliminary: the election is draft" with the note on steps of 10
    while open (review dash, 5)."""
    election = await voting.create_election("plurality", public_results=True, title="Later")
    await page.goto(f"{site}/elections/{election['id']}")
    standing = page.locator("#standing")
    await standing.wait_for(timeout=WAIT_MS)
    assert "Not open yet" in await standing.inner_text()
    text = await page.locator("#panel").inner_text()
    assert "preliminary" not in text.lower()
    assert "steps of" not in text


# Playwright turns Chrome's back/forward cache off; a person's Chrome has it on.
BFCACHE = ["--disable-back-forward-cache"]
# Set when a page comes back from that cache (the key outlives "Forget token").
PROBE = """addEventListener("pageshow", (event) => {
  if (event.persisted) sessionStorage.setItem("probe-restored", location.pathname);
});"""


async def _restored_without_private_results(page: Page, path: str) -> None:
    await page.go_back(wait_until="commit")  # a restored page fires no load
    restored = f'() => sessionStorage.getItem("probe-restored") === {path!r}'
    await page.wait_for_function(restored, timeout=WAIT_MS)  # from the cache, not anew
    await page.wait_for_function(
        """() => !document.getElementById("token-form").hidden
            && !document.querySelector("#winners")""",
        timeout=WAIT_MS,
    )
    await page.evaluate('sessionStorage.removeItem("probe-restored")')


async def test_back_after_forget_token_shows_nothing_the_token_read(
    voting: VotingClient, site: str
) -> None:
    """After "Forget token", Back brought the private results page (and the overview with
    the private elections) back from the back/forward cache as it was, still streaming
    (review web, 1)."""
    election = await voting.create_election(
        "plurality", live_results_step=1, title="Board seat (private)"
    )
    await voting.open(election["id"])
    await voting.cast(election["id"], {"choice": "b"}, "v1")
    public_id = await _election(voting, "plurality", close=False)
    row = f'#overview tr[data-election="{election["id"]}"]'
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, ignore_default_args=BFCACHE
        )
        try:
            page = await (await browser.new_context()).new_page()
            await page.add_init_script(PROBE)
            # A results page read with the token; Forget on the overview; Back.
            await page.goto(f"{site}/elections/{election['id']}")
            await page.fill("#token", ADMIN)
            await page.press("#token", "Enter")
            await page.locator("#winners").wait_for(timeout=WAIT_MS)
            await page.click("nav a[href='/']")
            await page.locator(row).wait_for(timeout=WAIT_MS)
            await page.click("#forget-token")
            await page.locator(row).wait_for(state="detached", timeout=WAIT_MS)
            await _restored_without_private_results(page, f"/elections/{election['id']}")
            assert "Board seat" not in await page.locator("body").inner_text()
            # The overview read with the token; Forget on a public page; Back.
            await page.goto(f"{site}/")
            await page.fill("#token", ADMIN)
            await page.press("#token", "Enter")
            await page.locator(row).wait_for(timeout=WAIT_MS)
            await page.click(f'#overview a[href="/elections/{public_id}"]')
            await page.locator("#forget-token").wait_for(timeout=WAIT_MS)
            await page.click("#forget-token")
            await page.locator("#forget-token").wait_for(state="hidden", timeout=WAIT_MS)
            await page.go_back(wait_until="commit")  # a restored page fires no load
            await page.wait_for_function(
                """() => sessionStorage.getItem("probe-restored") === "/"
                    && document.querySelector("#overview")""",
                timeout=WAIT_MS,
            )
            await page.locator(row).wait_for(state="detached", timeout=WAIT_MS)
            assert "Board seat" not in await page.locator("body").inner_text()
        finally:
            await browser.close()


async def test_forget_token_forgets_every_voter_token_of_the_tab(
    voting: VotingClient, site: str, page: Page
) -> None:
    """Forget on one page left the voter tokens kept for other pages (review web, 2)."""
    election_id, tokens = await voting.token_election(live_results_step=1)
    await page.goto(f"{site}/elections/{election_id}")
    await page.fill("#token", tokens[0])
    await page.press("#token", "Enter")
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    await page.goto(f"{site}/")
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#forget-token").wait_for(timeout=WAIT_MS)
    await page.evaluate('sessionStorage.setItem("unrelated", "kept")')
    await page.click("#forget-token")
    await page.locator("#forget-token").wait_for(state="hidden", timeout=WAIT_MS)
    assert await page.evaluate("Object.keys(sessionStorage)") == ["unrelated"]
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#token-form").wait_for(state="visible", timeout=WAIT_MS)
    assert await page.locator("#winners").count() == 0


async def test_the_json_results_of_a_private_election_open_with_the_token(
    voting: VotingClient, site: str, page: Page
) -> None:
    """Over 20 options the page links the JSON results instead of the pairwise chart, and
    the link answered 401 for a private election: a link cannot send the token (review
    web, 3). The token holder now gets them as a file."""
    ids = [f"o{n}" for n in range(21)]
    election = await voting.create_election("schulze", options=options(*ids), live_results_step=1)
    await voting.open(election["id"])
    await voting.cast(election["id"], {"ranking": ids}, "v1")
    await page.goto(f"{site}/elections/{election['id']}")
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    link = page.locator("#pairwise-omitted a")
    await link.wait_for(timeout=WAIT_MS)
    async with page.expect_download(timeout=WAIT_MS) as info:
        await link.click()
    download = await info.value
    saved = await download.path()
    assert saved is not None
    results = json.loads(await asyncio.to_thread(Path(saved).read_text))
    assert results["election_id"] == election["id"]
    assert results["pairwise"]["o0"]["o1"] == 1


async def test_the_token_field_is_not_a_password_field(
    voting: VotingClient, site: str, page: Page
) -> None:
    """A password field made Chrome's password manager offer to save the administrator's
    token (review web, 5): a masked text field, labelled, and clean for axe."""
    await _private_page(voting, site, page)
    field = page.locator("#token")
    assert await field.get_attribute("type") == "text"
    assert await field.get_attribute("autocomplete") == "off"
    assert await field.get_attribute("spellcheck") == "false"
    assert await page.evaluate("document.querySelector('#token').labels[0].textContent") == "Token"
    masked = "getComputedStyle(document.querySelector('#token')).webkitTextSecurity"
    assert await page.evaluate(masked) == "disc"
    assert await page.evaluate("document.querySelectorAll('input[type=password]').length") == 0
    assert await _scan(page) == []


async def test_a_long_title_does_not_widen_the_overview(
    voting: VotingClient, site: str, browser: Browser
) -> None:
    """One unbroken 170-letter title made the overview's table 1,600 px wide, its other
    columns out of sight (review dash-2, 2); its entries column said "Ballot entries"
    beside a results page's smaller "Ballots counted" (review dash-2, 5)."""
    election = await voting.create_election(
        "plurality", public_results=True, title="Supercalifragilistic" * 8 + "expialidocious"
    )
    for width in (390, 1280):
        context = await browser.new_context(viewport={"width": width, "height": 800})
        try:
            screen = await context.new_page()
            await screen.goto(f"{site}/")
            await screen.locator(f'#overview tr[data-election="{election["id"]}"]').wait_for(
                timeout=WAIT_MS
            )
            assert await screen.evaluate("document.documentElement.scrollWidth") <= width
            title = await screen.evaluate(
                f"""document.querySelector('tr[data-election="{election["id"]}"] th')
                    .getBoundingClientRect().right"""
            )
            assert title <= width, width
            if width == 1280:  # room for every column: the table does not scroll at all
                wrap = await screen.evaluate(
                    """(() => { const w = document.querySelector(".table-wrap");
                        return [w.scrollWidth, w.clientWidth]; })()"""
                )
                assert wrap[0] <= wrap[1], wrap
            header = await screen.locator("#overview thead").inner_text()
            assert "revisions" in header
            assert "withdrawals" in header
        finally:
            await context.close()


async def test_the_listing_link_of_the_overview_works_with_the_token(
    voting: VotingClient, site: str, page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overview linked GET /api/elections, which answered a browser 401: a link
    cannot send the token (review dash-2, 7). The script fetches it with the token."""
    monkeypatch.setattr(streams, "OVERVIEW_LIMIT", 1)
    await voting.create_election("plurality", public_results=True, title="Also left out")
    await page.goto(f"{site}/")
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    link = page.locator("#more a")
    await link.wait_for(timeout=WAIT_MS)
    async with page.expect_download(timeout=WAIT_MS) as info:
        await link.click()
    saved = await (await info.value).path()
    assert saved is not None
    listing = json.loads(await asyncio.to_thread(Path(saved).read_text))
    assert listing["elections"]


async def test_results_published_at_the_close_show_within_seconds(
    voting: VotingClient, site: str, page: Page
) -> None:
    """A page waiting for results published at the close asked again every 30 s: they
    showed about 27 s after the close (review dash-2, 6). It also said so in the API's
    words (review dash-2, 21)."""
    election = await voting.create_election(
        "plurality", public_results=True, results_visibility="after_close", title="Sealed"
    )
    await voting.open(election["id"])
    await voting.cast(election["id"], {"choice": "a"}, "v1")
    await page.goto(f"{site}/elections/{election['id']}")
    note = page.locator("#not-published")
    await note.wait_for(timeout=WAIT_MS)
    said = await note.inner_text()
    assert "when the election closes" in said
    assert "admins" not in said
    await voting.close(election["id"])
    closed = time.monotonic()
    await page.locator("#standing[data-state=final]").wait_for(timeout=WAIT_MS)
    assert time.monotonic() - closed < 10


async def test_results_published_at_the_close_are_announced(
    voting: VotingClient, site: str, page: Page
) -> None:
    """Results that replaced the "not published" note were taken as the page's starting
    point and not spoken: the live region said nothing (review a11y, 1). They are news."""
    election = await voting.create_election(
        "plurality", public_results=True, results_visibility="after_close", title="Sealed"
    )
    await voting.open(election["id"])
    await voting.cast(election["id"], {"choice": "a"}, "v1")
    await page.goto(f"{site}/elections/{election['id']}")
    await page.locator("#not-published").wait_for(timeout=WAIT_MS)
    await voting.close(election["id"])
    await page.locator("#standing[data-state=final]").wait_for(timeout=WAIT_MS)
    await page.wait_for_function(
        "document.getElementById('announce').textContent.includes('(final)')", timeout=5_000
    )
    assert "Winner" in await page.locator("#announce").inner_text()


async def test_an_undecided_tie_is_marked_tied_not_winner(
    voting: VotingClient, site: str, page: Page
) -> None:
    """A tie left undecided read "Tied, not decided" in the headline but "(winner)", in
    the winner's colour, in the chart and the table (review a11y, 3)."""
    election = await voting.create_election("plurality", public_results=True, title="Tie")
    await voting.open(election["id"])
    await voting.cast(election["id"], {"choice": "a"}, "v1")
    await voting.cast(election["id"], {"choice": "b"}, "v2")
    await voting.close(election["id"])
    await page.goto(f"{site}/elections/{election['id']}")
    await page.locator("#standing[data-state=final]").wait_for(timeout=WAIT_MS)
    assert "Tied, not decided" in await page.locator("#winners").inner_text()
    chart = await page.locator("#chart-votes").text_content() or ""
    figures = await page.locator("#figures").inner_text()
    for shown in (chart, figures):
        assert "winner" not in shown
        assert shown.count("(tied)") == 2
    fills = await page.evaluate(
        """() => Array.from(document.querySelectorAll("#chart-votes rect"))
            .map((rect) => getComputedStyle(rect).fill)"""
    )
    assert "rgb(230, 159, 0)" not in fills  # the winner's orange
    assert len(set(fills)) == 2  # the tied options' own colour, and the others'


async def test_final_results_stop_following_the_stream(
    voting: VotingClient, site: str, page: Page
) -> None:
    """Final results said "Live updates: streaming" and held a stream slot for good
    (review dash-2, 22): once final and sealed, the page says so and closes the stream."""
    election_id = await _election(voting, "plurality", close=False)
    await page.goto(f"{site}/elections/{election_id}")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    await voting.close(election_id)
    await page.locator("#chain-head code").first.wait_for(timeout=WAIT_MS)
    await page.locator("#mode", has_text="final").wait_for(timeout=WAIT_MS)
    assert "streaming" not in await page.locator("#mode").inner_text()
    # Opened on final results, the page follows nothing.
    streamed: list[str] = []
    page.on(
        "request",
        lambda request: streamed.append(request.url) if "/stream" in request.url else None,
    )
    await page.reload()
    await page.locator("#mode", has_text="final").wait_for(timeout=WAIT_MS)
    assert streamed == []


async def test_a_private_page_is_named_once_its_token_reads_the_title(
    voting: VotingClient, site: str, page: Page
) -> None:
    """A private page kept "Election results" as its heading and tab title after the
    token showed which election it is (review dash-2, 17)."""
    election = await voting.create_election(
        "plurality", live_results_step=1, title="Treasurer (board only)"
    )
    await page.goto(f"{site}/elections/{election['id']}")
    await page.locator("#token-form").wait_for(state="visible", timeout=WAIT_MS)
    assert await page.title() == "Election results · Cardinal Vote"
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#results-heading").wait_for(timeout=WAIT_MS)
    assert await page.title() == "Treasurer (board only) · Cardinal Vote"
    await page.click("#forget-token")
    await page.locator("#token-form").wait_for(state="visible", timeout=WAIT_MS)
    assert await page.title() == "Election results · Cardinal Vote"


WATCH_MODES = """() => { window.modes = [];
  new MutationObserver(() => window.modes.push(document.getElementById("mode").textContent))
    .observe(document.getElementById("mode"),
             { childList: true, characterData: true, subtree: true }); }"""
REFUSED = '{"title": "Unauthorized", "status": 401, "detail": "the token has expired"}'
NO_ACCESS = '{"title": "Forbidden", "status": 403, "detail": "not this election"}'


def _counting(page: Page) -> list[str]:
    asked: list[str] = []
    page.on(
        "request",
        lambda request: (
            asked.append(request.url) if request.url.endswith(("/panel", "/stream")) else None
        ),
    )
    return asked


async def test_an_expired_token_asks_for_a_token_at_once_and_stops_following(
    voting: VotingClient, site: str, page: Page
) -> None:
    """A stream that ended with 401 (an expired JWT) was a network failure: "reconnecting
    in 1/2/4/8 s", then 20 s of polling old results, only then the prompt, and polls
    every 5 s after without a token that each pulled focus back to the token field
    (review dash-3, 1 and 2). Now: the prompt at once, saying the token was refused or
    has expired; the results kept, marked as no longer updating; nothing more is asked
    of the server until a token is given; focus moves to the field once."""
    await _private_page(voting, site, page)
    expired = [True]

    async def stream(route: Route) -> None:
        if expired[0]:
            await route.fulfill(
                status=401, headers={"Content-Type": "application/problem+json"}, body=REFUSED
            )
        else:
            await route.continue_()

    await page.route("**/results/stream", stream)
    await page.evaluate(WATCH_MODES)
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    why = page.locator("#token-why")
    await page.locator("#token-form").wait_for(state="visible", timeout=5_000)
    assert "expired" in await why.inner_text()
    assert "sign in" not in await why.inner_text()  # the page has no sign-in
    assert await page.locator("#token").get_attribute("aria-invalid") == "true"
    assert await page.locator("#winners").count() == 1  # the last results stay up...
    note = page.locator("#stale-note")
    assert "no longer updating" in await note.inner_text()  # ...marked as such
    assert await page.evaluate("document.activeElement.id") == "token"
    modes = await page.evaluate("window.modes")
    assert not [m for m in modes if "reconnecting" in m or "polling" in m], modes
    # A keyboard user moves on: nothing pulls them back, and nothing is fetched.
    asked = _counting(page)
    # (Not the pause, hidden while a token is asked for: there is nothing to pause.)
    assert await page.locator("#pause").is_hidden()
    await page.focus("header nav a")
    await page.wait_for_timeout(6_500)
    assert await page.evaluate("document.activeElement.textContent") == "All elections"
    assert asked == []
    # A new token: following again, the note gone, focus on the results' heading.
    expired[0] = False
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    assert await page.locator("#stale-note").count() == 0
    assert await page.evaluate("document.activeElement.id") == "results-heading"


@pytest.mark.parametrize(("status", "said"), [(401, "expired"), (403, "does not give access")])
async def test_a_refused_panel_fetch_asks_for_a_token_and_keeps_the_results(
    status: int, said: str, voting: VotingClient, site: str, page: Page
) -> None:
    """A panel fetch refused with 401 or 403 while streaming is no failure to retry
    (review dash-3, 1): the page asks at once and says which refusal it met."""
    election_id = await _private_page(voting, site, page)
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)

    async def refused(route: Route) -> None:
        await route.fulfill(
            status=status,
            headers={"Content-Type": "application/problem+json"},
            body=REFUSED if status == 401 else NO_ACCESS,
        )

    await page.route("**/panel", refused)
    await voting.cast(election_id, {"choice": "a"}, "after-expiry")
    await page.locator("#token-form").wait_for(state="visible", timeout=5_000)
    assert said in await page.locator("#token-why").inner_text()
    assert await page.locator("#winners").count() == 1
    assert "no longer updating" in await page.locator("#stale-note").inner_text()
    asked = _counting(page)
    await page.wait_for_timeout(6_000)
    assert asked == []
    assert "stopped" in await page.locator("#mode").inner_text()


async def test_chart_text_is_readable_on_a_phone(
    voting: VotingClient, site: str, browser: Browser
) -> None:
    """A bar chart's 600-unit box shrunk to a phone drew its 13 px text at 8 px (review
    dash-3, 4). Phones get a narrower chart, labels over their bars; desktops keep theirs."""
    election_id = await _election(voting, "plurality", close=False)
    smallest = """() => Math.min(...Array.from(document.querySelectorAll("svg.chart"))
        .filter((svg) => svg.getBoundingClientRect().width > 0 && svg.viewBox.baseVal)
        .flatMap((svg) => {
          const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
          return Array.from(svg.querySelectorAll("text")).map(
            (text) => parseFloat(getComputedStyle(text).fontSize) * scale);
        }))"""
    context = await browser.new_context(viewport={"width": 390, "height": 800})
    try:
        phone = await context.new_page()
        await phone.goto(f"{site}/elections/{election_id}")
        await phone.locator("#winners").wait_for(timeout=WAIT_MS)
        assert await phone.evaluate(smallest) >= 12
        assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
        await _shot(phone, "phone-plurality")
    finally:
        await context.close()
    desk = await browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = await desk.new_page()
        await page.goto(f"{site}/elections/{election_id}")
        await page.locator("#winners").wait_for(timeout=WAIT_MS)
        assert await page.locator("#chart-votes").is_visible()  # the desktop's, as it was
        assert await page.locator("svg.chart:visible").count() == 1
    finally:
        await desk.close()


async def test_chart_text_keeps_its_size_at_200_percent_zoom(
    voting: VotingClient, site: str, browser: Browser
) -> None:
    """At 200% zoom the page is half as many CSS px wide, and the bar charts, scaled to
    their column by their viewBox, drew their 13 px text at 7 to 10 px: zoom grew it by
    1.2, not 2 (accessibility review). Charts keep 13 px text at their natural size."""
    plurality = await _election(voting, "plurality", close=False)
    score = await _election(voting, "score", close=False)
    smallest = """() => Math.min(...Array.from(document.querySelectorAll("svg.chart"))
        .filter((svg) => svg.getBoundingClientRect().width > 0 && svg.viewBox.baseVal)
        .flatMap((svg) => {
          const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
          return Array.from(svg.querySelectorAll("text")).map(
            (text) => parseFloat(getComputedStyle(text).fontSize) * scale);
        }))"""
    sizes: dict[tuple[int, str], float] = {}
    for screen in (1100, 1280, 1440, 1920, 2560):
        # 200% zoom: the CSS viewport is half the screen, two device px to a CSS px.
        context = await browser.new_context(
            viewport={"width": screen // 2, "height": 700}, device_scale_factor=2
        )
        try:
            zoomed = await context.new_page()
            for method, election_id in (("plurality", plurality), ("score", score)):
                await zoomed.goto(f"{site}/elections/{election_id}")
                await zoomed.locator("#winners").wait_for(timeout=WAIT_MS)
                sizes[screen, method] = await zoomed.evaluate(smallest)
                assert await zoomed.evaluate("document.documentElement.scrollWidth") <= (
                    screen // 2
                )
        finally:
            await context.close()
    assert min(sizes.values()) >= 12.9, sizes


CONTRASTS = """() => {
  const rgb = (text) => text.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = (c) => {
    const [r, g, b] = c.map((v) => v / 255)
      .map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => {
    const [x, y] = [lum(rgb(a)), lum(rgb(b))].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  const page = getComputedStyle(document.body).backgroundColor;
  const bars = Array.from(document.querySelectorAll("#chart-votes rect"));
  return {
    text: Math.min(...Array.from(document.querySelectorAll("#chart-votes text, #heat-map text"))
      .map((text) => ratio(getComputedStyle(text).fill, page))),
    winner: bars.filter((r) => r.classList.contains("winner"))
      .map((r) => getComputedStyle(r).fill),
    others: bars.filter((r) => !r.classList.contains("winner"))
      .map((r) => getComputedStyle(r).fill),
  };
}"""


async def test_charts_stay_readable_in_forced_colours(
    voting: VotingClient, site: str, browser: Browser
) -> None:
    """In forced colours on a dark scheme the charts' text kept its #1a1a1a: it vanished
    on the black page (review a11y, 4). It takes the system's colours, and the winner's
    bar stays apart from the others'."""
    election_id = await _election(voting, "plurality", close=False)
    schulze_id = await _election(voting, "schulze", close=False)
    context = await browser.new_context(forced_colors="active", color_scheme="dark")
    try:
        page = await context.new_page()
        for one in (election_id, schulze_id):
            await page.goto(f"{site}/elections/{one}")
            await page.locator("#winners").wait_for(timeout=WAIT_MS)
            found = await page.evaluate(CONTRASTS)
            assert found["text"] >= 4.5, found
        await page.goto(f"{site}/elections/{election_id}")
        await page.locator("#winners").wait_for(timeout=WAIT_MS)
        found = await page.evaluate(CONTRASTS)
        assert found["winner"], found
        assert found["others"], found
        assert not set(found["winner"]) & set(found["others"]), found
        await _shot(page, "forced-colours")
    finally:
        await context.close()


async def test_a_wide_overview_on_a_phone_shows_that_it_scrolls(
    voting: VotingClient, site: str, browser: Browser
) -> None:
    """On a phone the overview's last columns were off-screen with nothing to say the
    table scrolls sideways (review dash-3, 6): an edge shadow says so."""
    await _election(voting, "plurality", close=False)
    context = await browser.new_context(viewport={"width": 390, "height": 800})
    try:
        phone = await context.new_page()
        await phone.goto(f"{site}/")
        wrap = phone.locator("#overview").locator("xpath=..")
        await wrap.wait_for(timeout=WAIT_MS)
        assert await wrap.evaluate("(el) => el.scrollWidth > el.clientWidth")
        shadow = await wrap.evaluate("(el) => getComputedStyle(el).backgroundImage")
        assert "radial-gradient" in shadow
        await _shot(phone, "phone-overview")
    finally:
        await context.close()


async def test_after_a_token_focus_goes_to_the_results_not_the_page(
    voting: VotingClient, site: str, page: Page
) -> None:
    """The token form hid itself with focus in it: focus fell to <body> (review dash-3,
    2). It goes to the results' heading."""
    await _private_page(voting, site, page)
    assert await page.evaluate("document.activeElement.id") == "token"
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    await page.wait_for_function("document.activeElement.id === 'results-heading'", timeout=5_000)


async def test_a_failing_page_is_an_error_page_not_a_problem_document(
    site: str, page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything but NotFound sent the browser raw problem+json (review dash-3, 7)."""

    async def broken(*_: object, **__: object) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(pages, "overview", broken)
    answer = await page.goto(site + "/")
    assert answer is not None
    assert answer.status == 500
    assert "text/html" in answer.headers["content-type"]
    assert await page.locator("h1").inner_text() == "Internal error"
    assert "unexpected error" in await page.locator("#error").inner_text()

    def unavailable(_: object) -> str:
        raise psycopg.OperationalError("the database is down")

    monkeypatch.setattr(api_context, "election_id", unavailable)
    answer = await page.goto(f"{site}/elections/00000000-0000-4000-8000-000000000000")
    assert answer is not None
    assert answer.status == 503
    assert "text/html" in answer.headers["content-type"]
    assert await page.locator("h1").inner_text() == "Database unavailable"
    assert "Try again" in await page.locator("#error").inner_text()


async def test_an_announcement_due_while_a_token_is_asked_for_is_said_once_results_show(
    voting: VotingClient, site: str, page: Page
) -> None:
    """A change of leaders waits its turn to be spoken; if it fell due while the panel
    showed no results (a token prompt, after a token that reads nothing), it was dropped
    and said nowhere until the position next changed. It is said as results show again."""
    election_id = await _private_page(voting, site, page)  # b 1
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#mode", has_text="streaming").wait_for(timeout=WAIT_MS)
    await page.evaluate(
        """() => { window.said = [];
          new MutationObserver(() => window.said.push({
              text: document.getElementById("announce").textContent,
              at: performance.now() / 1000 }))
            .observe(document.getElementById("announce"),
                     { childList: true, characterData: true, subtree: true }); }"""
    )
    assert (await voting.cast(election_id, {"choice": "c"}, "c-1")).status_code == 201
    await page.wait_for_function("window.said.length === 1", timeout=WAIT_MS)  # b and c
    assert (await voting.cast(election_id, {"choice": "c"}, "c-2")).status_code == 201
    await expect(page.locator("#winners")).to_have_attribute("data-winners", "c", timeout=WAIT_MS)
    # (due 10 s after the first: see test_a_change_of_leader_waits_ten_seconds_...)

    async def refused(route: Route) -> None:
        await route.fulfill(
            status=401, headers={"Content-Type": "application/problem+json"}, body=REFUSED
        )

    await page.route("**/panel", refused)
    assert (await voting.cast(election_id, {"choice": "c"}, "c-3")).status_code == 201
    await page.locator("#token-form").wait_for(state="visible", timeout=5_000)
    await page.unroute("**/panel", refused)
    await page.fill("#token", "not-a-token")  # reads nothing: the results go
    await page.press("#token", "Enter")
    await expect(page.locator("#winners")).to_have_count(0, timeout=5_000)
    since = await page.evaluate("performance.now() / 1000 - window.said[0].at")
    assert since < 9.5, "the results went only after the announcement fell due"
    await page.wait_for_timeout((11 - since) * 1000)  # it falls due with no results shown
    assert len(await page.evaluate("window.said")) == 1
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    await page.wait_for_function("window.said.length === 2", timeout=5_000)
    said = await page.evaluate("window.said")
    assert "Leading: Option C" in said[1]["text"], said
