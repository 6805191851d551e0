"""The dashboards: an overview of the elections and one results page per election.

Server-rendered HTML (api/dashboard.py) with one small vendored script that follows the
results stream and swaps in the re-rendered panel; no CDN, no build step. A page's token
(for elections without public results) stays in the browser's sessionStorage and goes
out as an Authorization header, never in a URL.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from api import context
from api.dashboard import e, results_panel
from api.problems import HANDLERS
from api.routes.results import current_results, reader
from api.routes.streams import overview, overview_reader
from domain.application import VotingApplication
from domain.election import Election
from domain.errors import NotFound

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
# The heading of a results page whose election is not public (its title is in the panel).
PRIVATE = "Election results"


def routes() -> list[BaseRoute]:
    return [
        Route("/", overview_page, methods=["GET"], include_in_schema=False),
        Route("/results", to_overview, methods=["GET"], include_in_schema=False),
        Route("/overview/panel", overview_panel, methods=["GET"], include_in_schema=False),
        Route("/elections/{election_id}", results_page, methods=["GET"], include_in_schema=False),
        Route(
            "/elections/{election_id}/panel",
            results_fragment,
            methods=["GET"],
            include_in_schema=False,
        ),
        Route("/static/{name}", asset, methods=["GET"], include_in_schema=False),
        Route("/favicon.ico", no_icon, methods=["GET"], include_in_schema=False),
    ]


def _page(title: str, body: str, data: dict[str, str]) -> HTMLResponse:
    # The token field is a text field drawn masked (dashboard.css): a password field made
    # the browser's password manager offer to save the administrator's token. The live
    # controls come hidden and the script shows them: without it they did nothing, and
    # the page says what it cannot do instead (the <noscript> line, where there is a
    # stream to follow).
    attributes = " ".join(f'data-{k}="{e(v)}"' for k, v in data.items())
    noscript = (
        '<noscript><p id="noscript">Live updates and entering a token need JavaScript; '
        "reload for the latest results.</p></noscript>"
        if "stream" in data
        else ""
    )
    html = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · Cardinal Vote</title>
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/dashboard.js" defer></script></head>
<body {attributes}>
<a class="skip" href="#main">Skip to the results</a>
<header><nav aria-label="Dashboards"><a href="/">All elections</a></nav>
<div class="controls">
<button type="button" id="pause" aria-pressed="false" hidden>Pause updates</button>
<span id="mode" class="mode" hidden>Live updates: connecting</span>
<button type="button" id="forget-token" hidden>Forget token</button></div></header>
<main id="main" tabindex="-1">
<h1 dir="auto">{e(title)}</h1>{noscript}
<form id="token-form" class="token" hidden>
<p id="token-why">These results need a token. It is kept only for this browser session.</p>
<p id="token-error" class="token-error" role="alert"></p>
<label for="token">Token</label> <input id="token" name="token" type="text" class="secret"
autocomplete="off" autocapitalize="off" spellcheck="false"
aria-describedby="token-error token-why">
<button type="submit">Show results</button>
</form>
<div id="panel" aria-busy="false">{body}</div>
<div id="announce" class="visually-hidden" aria-live="polite" aria-atomic="true"></div>
</main></body></html>"""
    return HTMLResponse(html, headers=HEADERS)


def _error_page(request: Request, exc: Exception) -> HTMLResponse:
    """A failure a person at a browser meets: a page that says what went wrong (the
    problem document's title and detail, as the API answers it) and follows nothing,
    not raw problem+json. The handler is the API's own: it logs what it logs."""
    handler = next(
        (HANDLERS[kind] for kind in type(exc).__mro__ if kind in HANDLERS), HANDLERS[Exception]
    )
    answer = handler(request, exc)
    try:
        problem = json.loads(bytes(answer.body))
    except ValueError:
        problem = {}
    return problem_page(
        int(problem.get("status") or answer.status_code or 500),
        str(problem.get("title") or ""),
        str(problem.get("detail") or ""),
        answer.headers.get("Retry-After"),
    )


def problem_page(status: int, title: str, detail: str, retry: str | None) -> HTMLResponse:
    """The error page of a problem (its status, Retry-After and words). For a 5xx or a
    429 the script asks for the page again, with backoff, and reloads it once it answers
    (dashboard.js): "try again" alone left the tab on the error after the store was back."""
    title = title or "Something went wrong"
    detail = detail.rstrip(".") or "no detail was given"
    again = f" Try again in {e(retry)} s." if retry else " Try again in a moment."
    page = _page(
        title,
        f'<p id="error" data-status="{status}" data-retry="{e(retry or "")}">'
        f"The page could not be shown: {e(detail)}."
        f'{again if status >= 500 or status == 429 else ""} <a href="/">All elections</a></p>',
        {"kind": "error"},
    )
    page.status_code = status
    if retry:
        page.headers["Retry-After"] = retry
    return page


# The dashboards' pages (not their panels, fetched by the script, nor /static, /docs,
# /metrics or the API): what a person at a browser opens.
PAGE_PATH = re.compile(r"/(?:elections/[^/]+)?")


def guard_page(scope: Scope, status: int, title: str, detail: str, retry: str) -> Response | None:
    """What RequestGuard answers instead of its problem document when it cuts a read (the
    store down, a deadline passed): the error page, for a page asked for by a browser
    (its Accept names text/html). It answered problem+json, which a fresh tab showed raw
    during an outage and kept showing after it. None for anything else."""
    if scope["method"] not in ("GET", "HEAD") or not PAGE_PATH.fullmatch(scope["path"]):
        return None
    accept = b",".join(value for name, value in scope["headers"] if name == b"accept")
    if b"text/html" not in accept.lower():
        return None
    return problem_page(status, title, detail, retry)


async def overview_page(request: Request) -> Response:
    try:
        return await _overview_page(request)
    except Exception as exc:  # a person at a browser: a page, not a problem document
        return _error_page(request, exc)


async def _overview_page(request: Request) -> Response:
    panel = _overview_html(await overview(context.services(request), everyone=False))
    return _page(
        "Elections",
        panel,
        {"panel": "/overview/panel", "stream": "/api/elections/stream", "kind": "overview"},
    )


async def to_overview(_: Request) -> Response:
    return RedirectResponse("/", status_code=308)


async def overview_panel(request: Request) -> Response:
    document = await overview(context.services(request), everyone=overview_reader(request))
    return HTMLResponse(_overview_html(document), headers=HEADERS)


def _overview_html(document: dict[str, Any]) -> str:
    rows = []
    stepped = False
    for election in document["elections"]:
        entries = election["ballot_entries"]
        shown = "hidden until close" if entries is None else str(entries)
        step = int(election.get("live_results_step") or 1)
        open_now = election["status"] == "open" and not election["final"]
        if entries is not None and open_now and step > 1:  # in whole steps: at least this many
            stepped = True
            shown = f'{entries}+<span class="visually-hidden"> (in steps of {step})</span>'
        state = (
            "final"
            if election["final"]
            else "at the close"
            if entries is None
            else "live"
            if election["status"] == "open"
            else "—"
        )
        rows.append(
            f'<tr data-election="{e(election["id"])}">'
            f'<th scope="row" class="title"><a href="/elections/{e(election["id"])}">'
            f"<bdi>{e(election['title'])}</bdi></a></th>"
            f"<td>{e(election['status'])}</td><td>{e(election['method'])}</td>"
            f'<td data-figure="ballot_entries">{shown}'
            f"</td><td>{state}</td></tr>"
        )
    more = _more(document)
    if stepped:
        more = (
            '<p id="stepped-note">+: while an election is open, its count is published in '
            "steps of ballot entries (10 unless the election sets another step): the figure "
            "is the last step reached, so at least this many.</p>" + more
        )
    if not rows:
        return (
            f'<p id="overview" data-position="{document["position"]}">No elections to show. '
            "Elections without public results appear after you enter a token.</p>"
        )
    return (
        '<div class="table-wrap" role="region" aria-label="Elections">'
        f'<table id="overview" data-position="{document["position"]}">'
        "<caption>Elections, the open ones first, then the newest</caption><thead><tr>"
        '<th scope="col">Election</th><th scope="col">Status</th><th scope="col">Method</th>'
        # Entries, not ballots: a revision or a withdrawal is one too (the results page
        # counts ballots). The documents each reader may see have the same counts.
        '<th scope="col">Ballot entries (casts, revisions, withdrawals)</th>'
        '<th scope="col">Results</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{more}"
    )


def _more(document: dict[str, Any]) -> str:
    """How many elections the overview leaves out, and where a role finds them all."""
    more = int(document.get("more", 0))
    if not more:
        return ""
    counted, are = (f"{more} more elections", "are") if more > 1 else ("1 more election", "is")
    listing = document.get("listing")
    if listing is None:
        return f'<p id="more">{counted} with public results {are} not shown here.</p>'
    # The listing needs the token, and a link cannot send it: the script fetches it with
    # the token and offers it as a file (data-json), as the results page's JSON link.
    return (
        f'<p id="more">{counted} {are} not shown here: <a href="{e(listing)}" '
        'data-json="elections.json">the listing</a> has every one, oldest first, a page at a '
        "time (JSON; this link saves its first page).</p>"
    )


async def results_page(request: Request) -> Response:
    services = context.services(request)
    try:
        election_id = context.election_id(request)
        election = await _election_or_none(services.app, election_id)
    except NotFound:  # not an election id at all: a page, not a problem document
        page = _page(
            "Election not found",
            '<p>There is no election at this address. <a href="/">All elections</a></p>',
            {"kind": "missing"},
        )
        page.status_code = 404
        return page
    except Exception as exc:  # the database down, say: a page too
        return _error_page(request, exc)
    public = election is not None and election.rules.public_results
    data = {
        "panel": f"/elections/{election_id}/panel",
        "stream": f"/api/elections/{election_id}/results/stream",
        "kind": "results",
        "public": "true" if public else "false",
    }
    body = ""
    if public and "authorization" not in request.headers:
        try:
            body = await _panel_html(request)
        except Exception:  # hidden until the close: the script shows why
            body = ""
    # The page itself needs no token: an election without public results is named only
    # in its panel, which does.
    return _page(election.title if public and election is not None else PRIVATE, body, data)


async def _election_or_none(app: VotingApplication, election_id: UUID) -> Election | None:
    """The election, or None for an id that names none: its page is then served as an
    election without public results is (200, no title, its panel asks for a token). A
    404 there, where the API answers 401 to both without a token, told anyone whether an
    id names a private election (security review F3); with a token, the panel says 404."""
    try:
        return await app.election(election_id)
    except NotFound:
        return None


async def results_fragment(request: Request) -> Response:
    return HTMLResponse(await _panel_html(request), headers=HEADERS)


async def _panel_html(request: Request) -> str:
    election_id, election, exact = await reader(request)
    document = await current_results(context.services(request), election_id, election, exact=exact)
    return results_panel(document, "Results" if election.rules.public_results else election.title)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise NotFound(f"no asset {name[:40]!r}")
    return Response(
        (STATIC / name).read_bytes(),
        media_type=ASSETS[name],
        headers={"Cache-Control": "public, max-age=300"},
    )


async def no_icon(request: Request) -> Response:
    """Browsers ask for one on every page: no icon, and no 404 in their console."""
    return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})
