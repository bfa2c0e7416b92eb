"""The demo chat page of the route service: `/demo/` and the browser client module, as static files.

Owns serving a fixed list of files shipped in the package (`router/demo/`):
the page, its script and its style at `/demo/`, and the browser client
(`clients/js/ringcast.js`, shipped as `router/demo/ringcast.js`, a symlink to
it in the source tree) at `/clients/ringcast.js`, so a page on any origin can
import it. Only the paths in `FILES` are served: no path is taken from the
request, so nothing outside that list can be reached. The files are read once,
when the routes are added: a missing file fails the router's start, not a
visitor's request.

It must not hold state, talk to workers or Redis (the page does, through the
client), or serve anything but these files.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

DEMO_PATH = "/demo/"
CLIENT_PATH = "/clients/ringcast.js"
# URL path -> (file in router/demo/, content type)
FILES = {
    DEMO_PATH: ("index.html", "text/html; charset=utf-8"),
    "/demo/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/demo/demo.css": ("demo.css", "text/css; charset=utf-8"),
    CLIENT_PATH: ("ringcast.js", "text/javascript; charset=utf-8"),
}
HEADERS = {
    "Cache-Control": "no-cache",  # a redeployed router serves the new page at once
    "X-Content-Type-Options": "nosniff",
    "Access-Control-Allow-Origin": "*",  # public files: a page on any origin may import the client module
}


def read_file(name: str) -> bytes:
    return resources.files("router").joinpath("demo", name).read_bytes()


def add_routes(app: web.Application) -> None:
    """Register GET for every path in FILES, and /demo -> /demo/."""
    for path, (name, content_type) in FILES.items():
        body = read_file(name)

        async def serve(request: web.Request, body: bytes = body, content_type: str = content_type) -> web.Response:
            return web.Response(body=body, headers={**HEADERS, "Content-Type": content_type})

        app.router.add_get(path, serve)

    async def to_demo(request: web.Request) -> web.Response:
        raise web.HTTPFound(DEMO_PATH)

    app.router.add_get(DEMO_PATH.rstrip("/"), to_demo)
