"""FakeZapier's app catalogue: ``GET /v2/apps`` (Get Apps), in the published spec's shape.

The spec (`tests/spec/zapier-partner-api.yml`, operation ``get-v2-apps``) types the 200 body as
an array of `ExpandedAppsResponse` envelopes ``{data: [Apps], meta, links}`` and takes
``query`` (apps whose titles match), ``category``, ``ids`` (comma-separated; not with
``category``), ``limit`` (default 10) and ``offset``. Apps come most popular first: here, in
the order the catalogue lists them.

`FakeCatalog.app_profiles` (``{app_id: FakeApp}``) holds what is served; the app ids are the
same ones `FakeCatalog.apps` keys its actions and connections by.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import quote

import attrs
from aiohttp import web

__all__ = ["FakeApp", "get_apps"]

_IMAGE: Final = "https://zapier-images.imgix.net/storage/services/{slug}.png"
_SIZES: Final = ("16x16", "32x32", "64x64", "128x128")


@attrs.frozen(kw_only=True)
class FakeApp:
    """An app of the emulated catalogue, as Get Apps describes it.

    Args:
        title: Its name, e.g. ``"Slack"``.
        description: What it is.
        categories: Category slugs, e.g. ``("team-chat",)``.
        selected_api: The implementation the Actions API names (``"SlackCLIAPI@1.0.0"``); it
            appears in ``links.connect_new_authentication``. None: an app that needs no
            connection (the link is null).
        hex_color: Its brand colour.
    """

    title: str
    description: str = ""
    categories: tuple[str, ...] = ()
    selected_api: str | None = None
    hex_color: str = "ff4f00"


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def app_body(app_id: str, app: FakeApp, action_types: list[str]) -> dict[str, Any]:
    """One app in the spec's `Apps` shape."""
    image = _IMAGE.format(slug=_slug(app.title))
    connect = None
    if app.selected_api is not None:
        redirect = quote("https://api.zapier.com/v2/authentications/redirect", safe="")
        connect = f"https://zapier.com/engine/auth/start/{app.selected_api}?redirect={redirect}"
    return {
        "id": app_id,
        "type": "app",
        "image": image,
        "links": {"connect_new_authentication": connect},
        "action_types": action_types,
        "title": app.title,
        "images": {f"url_{size}": f"{image}?w={size.split('x')[0]}" for size in _SIZES},
        "hex_color": app.hex_color,
        "categories": [{"slug": slug} for slug in app.categories],
        "description": app.description,
    }


def _error(status: int, detail: str, parameter: str) -> tuple[int, Any]:
    error = {
        "status": status,
        "code": "invalid",
        "title": "invalid",
        "detail": detail,
        "source": {"parameter": parameter},
        "meta": None,
    }
    return status, {"errors": [error]}


def get_apps(
    request: web.Request,
    profiles: Mapping[str, FakeApp],
    *,
    action_types: Callable[[str], list[str]],
    envelope: Callable[[list[Any], Mapping[str, Any], Any], Any],
) -> tuple[int, Any]:
    """Answer ``GET /v2/apps``.

    Args:
        request: The request (its query is read).
        profiles: The catalogue, most popular first.
        action_types: An app id's action types (from the actions the catalogue holds).
        envelope: Wraps ``(data, meta, links)`` as the catalogue answers lists.
    """
    query = request.query
    try:
        limit = int(query.get("limit", "10"))
        offset = int(query.get("offset", "0"))
    except ValueError:
        return _error(400, "limit and offset must be integers.", "limit")
    if limit < 1 or offset < 0:
        return _error(400, "limit must be >= 1 and offset >= 0.", "limit")
    if "ids" in query and "category" in query:
        return _error(400, "ids cannot be combined with category.", "ids")
    chosen = list(profiles.items())
    if "ids" in query:
        wanted = {part for part in query["ids"].split(",") if part}
        chosen = [(i, a) for i, a in chosen if i in wanted]
    if "category" in query:
        chosen = [(i, a) for i, a in chosen if query["category"] in a.categories]
    text = query.get("query", "").strip().casefold()
    if text:
        words = text.split()
        chosen = [(i, a) for i, a in chosen if all(w in a.title.casefold() for w in words)]
    page = chosen[offset : offset + limit]
    url = request.url
    nxt = offset + limit
    links = {
        "next": str(url.update_query(offset=str(nxt), limit=str(limit)))
        if nxt < len(chosen)
        else None,
        "previous": str(url.update_query(offset=str(max(0, offset - limit)), limit=str(limit)))
        if offset > 0
        else None,
    }
    data = [app_body(i, a, action_types(i)) for i, a in page]
    meta = {"count": len(chosen), "limit": limit, "offset": offset}
    return 200, envelope(data, meta, links)
