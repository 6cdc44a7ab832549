"""The demo page: one static page, shipped in this package, that a browser gets from `GET /`.

The page (index.html, demo.css, demo.js beside this file) calls the transformer's public V2
REST endpoint like any other client, so it needs no route of its own beyond the files. They are
read once at start, the model's name and version written into the HTML, and served from
memory with a Content-Security-Policy that lets the page reach this server only.

`GET /` stays kserve's liveness answer (`{"status": "alive"}`) for anything that does not ask
for HTML (probes, curl); only a request that accepts text/html gets the page.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from common import kserve_compat

PAGE_PATH = "/"
ASSET_PREFIX = "/demo/"
ASSETS = {"demo.css": "text/css; charset=utf-8", "demo.js": "text/javascript; charset=utf-8"}
TEMPLATE = "index.html"

# Everything the page loads or calls comes from this server; blob: and data: are the
# thumbnails (object URLs of the user's own files) and the empty favicon.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files, and a new image must never run an old script against a new server.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class DemoPage:
    """The page's files, ready to send: the filled-in HTML and the assets by name."""

    html: bytes
    assets: dict[str, bytes]


def load(model_name: str, model_version: str, default_top_k: int, max_top_k: int) -> DemoPage:
    """Read the packaged files and fill in the model's facts; raises OSError if one is missing."""
    files = resources.files(__package__)
    text = files.joinpath(TEMPLATE).read_text(encoding="utf-8")
    values = {
        "model_name": model_name,
        "model_version": model_version,
        "top_k": str(default_top_k),
        "max_top_k": str(max_top_k),
    }
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    assets = {name: files.joinpath(name).read_bytes() for name in ASSETS}
    return DemoPage(html=text.encode("utf-8"), assets=assets)


def wants_html(scope: Scope) -> bool:
    """Whether an HTTP request's Accept header asks for text/html (a browser navigating)."""
    for key, value in scope.get("headers") or []:
        if key == b"accept":
            return b"text/html" in value.lower()
    return False


class BrowserRoute(Route):
    """A GET route that only matches requests accepting HTML; others fall through to the next."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE and not wants_html(scope):
            return Match.NONE, {}
        return match, child_scope


def routes(page: DemoPage) -> list[BaseRoute]:
    """The page's routes: `/` for browsers and one per asset under /demo/."""

    async def index(request: Request) -> Response:
        return Response(page.html, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    def asset_endpoint(name: str) -> Route:
        content, media_type = page.assets[name], ASSETS[name]

        async def asset(request: Request) -> Response:
            return Response(content, media_type=media_type, headers=SECURITY_HEADERS)

        return Route(ASSET_PREFIX + name, asset, methods=["GET"], include_in_schema=False)

    return [
        BrowserRoute(PAGE_PATH, index, methods=["GET"], include_in_schema=False),
        *(asset_endpoint(name) for name in ASSETS),
    ]


def install(app: FastAPI, page: DemoPage) -> None:
    """Put the page's routes first on `app`, ahead of kserve's own `GET /`."""
    kserve_compat.add_routes_first(app, routes(page))
