"""The dashboards where things are not as planned, in a real browser (Debian's chromium
driven by Playwright): an error page that recovers by itself, no JavaScript, a phone's
320 px, an unknown election, a draft, a token still to be given (the browser review of
the dashboards)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from api import context as api_context
from infra.store.migrations import migrate
from tests.databases import create_database, drop_database
from tests.integration.client import VotingClient
from tests.servers import ADMIN, running_api, settings_for

from .test_dashboards import CHROMIUM, WAIT_MS

UNKNOWN = "00000000-0000-4000-8000-0000000000ff"
# The page scrolls sideways: what the reviewer's phone showed.
SIDEWAYS = "document.documentElement.scrollWidth > document.documentElement.clientWidth"


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    url = create_database("cardinal_fallbacks")
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
    context = await browser.new_context(bypass_csp=True, viewport={"width": 1100, "height": 900})
    yield await context.new_page()
    await context.close()


@pytest.fixture
async def phone(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(bypass_csp=True, viewport={"width": 320, "height": 700})
    yield await context.new_page()
    await context.close()


@pytest.fixture
async def voting(site: str) -> AsyncIterator[VotingClient]:
    async with httpx.AsyncClient(base_url=site, timeout=30) as http:
        yield VotingClient(http)


async def test_an_error_page_tries_again_by_itself_and_shows_the_page_once_it_answers(
    site: str, page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error page said "Try again in 2 s." and nothing tried: the tab stayed on the
    error after the database came back. It asks again (not before its Retry-After), says
    so in a status, and reloads once the page answers."""
    asked: list[float] = []
    page.on(
        "request",
        lambda request: asked.append(time.monotonic()) if UNKNOWN in request.url else None,
    )

    def unavailable(_: object) -> str:
        raise psycopg.OperationalError("the database is down")

    with monkeypatch.context() as down:
        down.setattr(api_context, "election_id", unavailable)
        answer = await page.goto(f"{site}/elections/{UNKNOWN}")
        assert answer is not None
        assert answer.status == 503
        assert answer.headers["retry-after"] == "2"
        status = page.locator('#retrying[role="status"]')
        await expect(status).to_have_text("Retrying automatically…", timeout=5_000)
        assert await page.locator("#pause").is_hidden()
        deadline = time.monotonic() + 8
        while len(asked) < 2 and time.monotonic() < deadline:
            await page.wait_for_timeout(100)
        assert len(asked) >= 2, "the error page never asked again"
        assert asked[1] - asked[0] >= 1.8, "asked again before its Retry-After"
    # The database is back: the next try answers, and the page shows.
    await expect(page.locator("h1")).to_have_text("Election results", timeout=WAIT_MS)
    await page.locator("#token-form").wait_for(state="visible", timeout=WAIT_MS)


async def test_without_javascript_no_dead_controls_and_the_page_says_what_needs_it(
    browser: Browser, site: str, voting: VotingClient
) -> None:
    """Without JavaScript, "Pause updates" and "Live updates: connecting" did nothing,
    and a private page showed a heading alone."""
    election = await voting.create_election("plurality")
    context = await browser.new_context(java_script_enabled=False)
    try:
        bare = await context.new_page()
        for path in ("/", f"/elections/{election['id']}"):
            await bare.goto(site + path)
            assert await bare.locator("#pause").is_hidden(), path
            assert await bare.locator("#mode").is_hidden(), path
            said = bare.locator("#noscript")
            assert await said.is_visible(), path
            assert "need JavaScript" in await said.inner_text()
    finally:
        await context.close()


async def test_with_javascript_the_controls_show(site: str, page: Page) -> None:
    await page.goto(site + "/")
    await expect(page.locator("#mode")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#pause")).to_be_visible()
    assert await page.locator("#noscript").is_hidden()


async def test_a_tie_between_long_labels_fits_a_phone(
    site: str, phone: Page, voting: VotingClient
) -> None:
    """The tie's paragraph kept its long words whole: a 320 px page scrolled sideways."""
    word = "Supercalifragilisticexpialidocious-Wolfeschlegelsteinhausenbergerdorff"
    election = await voting.create_election(
        "plurality",
        public_results=True,
        live_results_step=1,
        options=[{"id": o, "label": f"{word} {o}"} for o in ("a", "b", "c")],
    )
    await voting.open(election["id"])
    for n, choice in enumerate("ab"):
        assert (await voting.cast(election["id"], {"choice": choice}, f"t{n}")).status_code == 201
    await voting.close(election["id"])
    await phone.goto(f"{site}/elections/{election['id']}")
    await phone.locator("#tie").wait_for(timeout=WAIT_MS)
    assert not await phone.evaluate(SIDEWAYS)


async def test_the_overview_with_a_stepped_count_fits_a_phone(
    site: str, phone: Page, voting: VotingClient
) -> None:
    """The visually hidden "(in steps of 10)" escaped the table's scrolling box and made
    the page scroll sideways at 320 px; the caption ran out of sight inside the box."""
    election = await voting.create_election("plurality", public_results=True)
    await voting.open(election["id"])
    await phone.goto(site + "/")
    await phone.locator(f'#overview tr[data-election="{election["id"]}"]').wait_for(timeout=WAIT_MS)
    assert await phone.locator("#overview .visually-hidden").count() >= 1
    assert not await phone.evaluate(SIDEWAYS)
    caption, box = await phone.evaluate(
        """() => [document.querySelector("#overview caption").getBoundingClientRect().right,
                  document.querySelector(".table-wrap").getBoundingClientRect().right]"""
    )
    assert caption <= box + 0.5, (caption, box)


async def test_an_unknown_election_with_a_token_is_said_and_focused(site: str, page: Page) -> None:
    """With a token, an unknown id's panel said "There is no election at this address"
    while focus sat on an emptied status and the heading and title still said "Election
    results": nothing was announced."""
    await page.goto(f"{site}/elections/{UNKNOWN}")
    await page.locator("#token-form").wait_for(state="visible", timeout=WAIT_MS)
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#missing").wait_for(timeout=WAIT_MS)
    await page.wait_for_function("document.activeElement.id === 'missing'", timeout=5_000)
    await expect(page.locator("h1")).to_have_text("Election not found")
    assert (await page.title()).startswith("Election not found")
    assert await page.locator("#mode").is_hidden()
    assert await page.locator("#pause").is_hidden()


async def test_a_draft_says_it_waits_for_the_election_to_open(
    site: str, page: Page, voting: VotingClient
) -> None:
    """A draft's page said "Live updates: streaming" beside "Not open yet"."""
    election = await voting.create_election("plurality", public_results=True, live_results_step=1)
    await page.goto(f"{site}/elections/{election['id']}")
    mode = page.locator("#mode")
    await expect(mode).to_have_text(
        "Live updates: waiting for the election to open", timeout=WAIT_MS
    )
    await voting.open(election["id"])
    await expect(mode).to_have_text("Live updates: streaming", timeout=WAIT_MS)


async def test_the_pause_shows_only_once_a_token_reads_the_results(
    site: str, page: Page, voting: VotingClient
) -> None:
    """While the page waited for a token, "Pause updates" paused nothing."""
    election = await voting.create_election("plurality", live_results_step=1)
    await voting.open(election["id"])
    await page.goto(f"{site}/elections/{election['id']}")
    await page.locator("#token-form").wait_for(state="visible", timeout=WAIT_MS)
    await expect(page.locator("#mode")).to_have_text("Live updates: waiting for a token")
    assert await page.locator("#pause").is_hidden()
    await page.fill("#token", ADMIN)
    await page.press("#token", "Enter")
    await page.locator("#winners").wait_for(timeout=WAIT_MS)
    await expect(page.locator("#pause")).to_be_visible()
