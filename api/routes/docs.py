"""The contract (/openapi.json) and an interactive reference (/docs) served from this API.

The reference is Swagger UI from the swagger-ui-bundle-v2 package, installed with the
project: no CDN, so /docs works on a network without one and loads nothing from elsewhere
(its Content-Security-Policy says so: scripts and styles from this origin only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from api.contract import openapi
from api.responses import JSONResponse
from domain.errors import NotFound

TITLE = "Cardinal Vote API"
VERSION = "1"
DESCRIPTION = (
    "An event-sourced voting backend. Errors are application/problem+json (RFC 9457). "
    "Sign in with POST /api/auth/login for an administrator's access token, or use a role "
    "token; voters in a token election present their voter token."
)
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Cardinal Vote API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""
# A separate file, so that the page's policy needs no 'unsafe-inline' for scripts.
INIT = (
    'window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", '
    "deepLinking: true});\n"
)
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)
# Only the package's files that the page loads: the package's directory also holds Swagger
# UI's demo page (it fetches petstore.swagger.io), an OAuth2 redirect page and a template,
# which served from this origin would run here without the page's policy.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
ASSET_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "public, max-age=300",
}


async def document(request: Request) -> Response:
    """The OpenAPI 3.1 document, built once from the app's routes."""
    found: dict[str, Any] | None = getattr(request.app.state, "openapi", None)
    if found is None:
        found = openapi(request.app.routes, title=TITLE, version=VERSION, description=DESCRIPTION)
        request.app.state.openapi = found
    return JSONResponse(found)


async def page(_: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_POLICY})


async def init(_: Request) -> Response:
    return Response(INIT, media_type="text/javascript", headers=ASSET_HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise NotFound(f"no asset {name[:40]!r}")
    return Response(
        (Path(swagger_ui_path) / name).read_bytes(), media_type=ASSETS[name], headers=ASSET_HEADERS
    )


def routes() -> list[BaseRoute]:
    """The contract's routes (none of them in the contract itself)."""
    return [
        Route("/openapi.json", document, methods=["GET"], include_in_schema=False),
        Route("/docs", page, methods=["GET"], include_in_schema=False),
        Route("/docs/init.js", init, methods=["GET"], include_in_schema=False),
        Route("/docs/static/{name}", asset, methods=["GET"], include_in_schema=False),
    ]
