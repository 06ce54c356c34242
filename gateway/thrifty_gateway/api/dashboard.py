"""`GET /dashboard`: the savings dashboard, static files shipped in the package.

The page itself holds no data and needs no key; it asks for the admin key in a form, keeps it
in the tab's sessionStorage and sends it as a bearer token to `/v1/thrifty/usage` and
`/v1/thrifty/budgets`. A strict Content-Security-Policy allows nothing but this origin.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

from thrifty_core.errors import NotFoundError

router = APIRouter()

ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _asset(name: str) -> Response:
    media = ASSETS.get(name)
    if media is None:
        raise NotFoundError(f"No dashboard file {name!r}.")
    data = resources.files("thrifty_gateway").joinpath("dashboard", name).read_bytes()
    return Response(data, media_type=media, headers=SECURITY_HEADERS)


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> Response:
    return _asset("index.html")


@router.get("/dashboard/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    return _asset(name)
