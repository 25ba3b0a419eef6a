"""Pictures by URL, for browsers, `curl` and `<img>` tags (a converter: query -> data plane ->
PNG or GIF), beside the playground page and /openapi.json. Each picture is named before
anything runs (`Plan.digest`, from the model file's bytes and the inputs: the strong ETag), so
a matching If-None-Match is a 304 without generating; caches revalidate every use (`no-cache`),
`private` when the server asks for a token. HEAD answers every GET route.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from importlib import resources

from aiohttp import web

from service.contract import SEED_SPEC, ContractError, SeedRanges, seed_ranges
from service.edge.call import Category
from service.edge.http_edge import NUMBER, mounted, route
from service.plane.dataplane import DataPlane, Format, Request, Walk

# A cache may keep a picture but asks each time whether it is still the one (a 304, nothing
# generated): no URL's bytes are fixed for good, since a reload or a repository load may
# serve another file under the same name and version.
CACHE = "no-cache"
PICTURE_QUERY = ("label", "psi", "version")
WALK_QUERY = ("a", "b", "frames", "method", *PICTURE_QUERY)


class ImageRoutes:
    def __init__(self, plane: DataPlane, private: bool):
        self.plane = plane
        self.scope = "private" if private else "public"
        # Fixed for the server's life: read once, not per request.
        self.page = resources.files("service.doors").joinpath("static/playground.html"
                                                              ).read_bytes()
        self.api_document: dict = {}  # set by the server once every route is known

    def routes(self) -> list[tuple[str, str, object]]:
        """(method, path, handler) of each route."""
        return mounted(self)

    @route("GET /", Category.PAGE)
    async def playground(self, request, call):
        return web.Response(body=self.page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    @route("GET /openapi.json", Category.PAGE)
    async def openapi(self, request, call):
        return web.json_response(self.api_document)

    @route("GET /v1/models", Category.METADATA)
    async def list_models(self, request, call):
        described = [asdict(self.plane.describe(m)) for m in self.plane.registry]
        return web.json_response({"models": [
            {**d, "default": d.pop("is_default"), "default_version": d.pop("is_default_version")}
            for d in described]})

    @route("GET /v1/models/{name}/images/{seed}.png", Category.INFERENCE, query=PICTURE_QUERY,
           cacheable=True)
    async def image(self, request, call):
        text = request.match_info["seed"]
        try:
            if not text.isascii() or not text.isdigit():
                raise ValueError
            [(seed, _)] = seed_ranges([text])
        except ValueError:
            raise ContractError(f"{text!r} is not a seed: use a number 0..2**64-1, e.g. "
                                "/images/7.png") from None
        return await self._picture(request, call, Format.PNG, seeds=[seed])

    @route("GET /v1/models/{name}/grid.png", Category.INFERENCE,
           query=("seeds", *PICTURE_QUERY), cacheable=True)
    async def grid(self, request, call):
        text = request.query.get("seeds", "")
        if not re.fullmatch(SEED_SPEC, text):
            raise ContractError(f"?seeds= {'is missing' if not text else repr(text)}: send "
                                "seeds as in grid.png?seeds=0-15 or seeds=3,9,20-22")
        return await self._picture(request, call, Format.PNG_GRID,
                                   seeds=SeedRanges(seed_ranges([text])))

    @route("GET /v1/models/{name}/interpolation.png", Category.INFERENCE, query=WALK_QUERY,
           cacheable=True)
    async def interpolation_strip(self, request, call):
        return await self._picture(request, call, Format.PNG_GRID, walk=_walk(request))

    @route("GET /v1/models/{name}/interpolation.gif", Category.INFERENCE, query=WALK_QUERY,
           cacheable=True)
    async def interpolation_gif(self, request, call):
        return await self._picture(request, call, Format.GIF, walk=_walk(request))

    async def _picture(self, request: web.Request, call, fmt: Format, **what):
        """A cacheable picture of seeds or of a walk: named first, generated only if needed."""
        version = request.query.get("version", "")
        plan = self.plane.prepare(Request(
            request.match_info["name"], version, labels=_label(request),
            psi=_psi(request), format=fmt, **what), call)
        headers = {"ETag": f'"{plan.digest}"', "Cache-Control": f"{self.scope}, {CACHE}"}
        if plan.latent_rule:
            headers["Latent-Rule"] = plan.latent_rule
        if f'"{plan.digest}"' in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        result = await self.plane.run(plan, call)
        body = result.pngs[0] if fmt is Format.PNG else result.picture
        return web.Response(body=body, content_type="image/gif" if fmt is Format.GIF
                            else "image/png", headers=headers)


def _walk(request: web.Request) -> Walk:
    """Frames from seed ?a= to seed ?b= (?frames=, default 16; ?method=slerp|lerp)."""
    return Walk(_int_query(request, "a"), _int_query(request, "b"),
                _int_query(request, "frames", 16), request.query.get("method", "slerp"))


def _label(request: web.Request) -> list[int]:
    text = request.query.get("label")
    if text is None:
        return []
    if not text.isascii() or not text.isdigit():
        raise ContractError(f"label {text!r} is not a class number")
    return [int(text)]


def _psi(request: web.Request) -> str | float:
    """?psi= as sent (the contract rounds it), if it is written as a JSON number."""
    text = request.query.get("psi")
    if text is None:
        return 1.0
    if not NUMBER.fullmatch(text):
        raise ContractError(f"psi {text!r} is not a number: send one in (0, 1], e.g. 0.7")
    return text


def _int_query(request: web.Request, name: str, default: int | None = None) -> int:
    """A whole number 0 or more, written in digits alone."""
    text = request.query.get(name)
    if text is None and default is not None:
        return default
    if text is None or not text.isascii() or not text.isdigit():
        raise ContractError(f"?{name}= {'is missing' if text is None else repr(text)}: "
                            "send a whole number, e.g. ?a=3&b=13&frames=16")
    return int(text)


def _etags(header: str) -> set[str]:
    return {tag.strip() for tag in header.split(",")} if header else set()
