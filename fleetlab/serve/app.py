"""The Starlette application: the page, its static files, and the JSON API.

Reads need no token on a loopback address (anyone who can reach it is on this machine); writes always do, and so does
everything when the server listens beyond loopback. A bad request gets a 4xx with one sentence and writes nothing.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from fleetlab import api
from fleetlab.errors import FleetlabError, StoreError
from fleetlab.serve import views

STATIC = Path(__file__).parent / "static"
_log = logging.getLogger("fleetlab.serve")
MAX_BODY = 4 * 1024 * 1024  # a submission's whole files; a train.py is tens of kilobytes


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _json(obj: Any, status: int = 200) -> Response:
    # NaN and infinities (a run's extras may hold them) become null: a browser's JSON.parse refuses them
    text = json.dumps(json.loads(json.dumps(obj, default=str), parse_constant=lambda _: None))
    return Response(text, status_code=status, media_type="application/json")


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _version(opened: api.Opened) -> str:
    """Changes whenever anyone commits to the store: the database and its write-ahead log's size and mtime."""
    parts = []
    for suffix in ("", "-wal"):
        try:
            st = os.stat(str(opened.store.path) + suffix)
            parts.append(f"{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            parts.append("-")
    return "/".join(parts)


def build_app(directory: str | os.PathLike | None, token: str, loopback: bool = True) -> Starlette:
    """The dashboard and API over the project at `directory`; `token` guards writes (and reads off loopback)."""
    opened = api.open_project(directory)
    cache: dict[str, tuple[str, Any]] = {}
    cache_lock = threading.Lock()

    def cached(name: str, fn: Callable[[], Any]) -> Any:
        """Heavier views (analysis, lineage) are recomputed only when the store changed."""
        v = _version(opened)
        with cache_lock:
            hit = cache.get(name)
        if hit and hit[0] == v:
            return hit[1]
        value = fn()
        with cache_lock:
            cache[name] = (v, value)
        return value

    def authorize(request: Request, write: bool) -> None:
        if not write and loopback:
            return
        header = request.headers.get("authorization", "")
        if not header:
            raise HTTPError(401, "this request needs the server's token as `Authorization: Bearer <token>`")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPError(403, "the token in the Authorization header is not this server's")

    async def respond(request: Request, write: bool, work: Callable[[], Awaitable[Response]]) -> Response:
        """Authorize, do the work, and turn every refusal into a status and one sentence."""
        try:
            authorize(request, write)
            return await work()
        except HTTPError as e:
            return _json({"error": str(e)}, e.status)
        except StoreError as e:
            return _json({"error": str(e)}, 404 if str(e).startswith("no ") else 500)
        except FleetlabError as e:
            return _json({"error": str(e)}, 400)
        except Exception as e:  # a bug: one sentence to the client, the traceback in the server's log
            _log.exception("%s failed", request.url.path)
            return _json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    def endpoint(fn: Callable[[Request], Any], raw: bool = False):
        async def handler(request: Request) -> Response:
            async def work() -> Response:
                out = await run_in_threadpool(fn, request)  # the store is read off the event loop
                return out if raw else _json(out)
            return await respond(request, False, work)
        return handler

    # -- reads ------------------------------------------------------------------------------------------------------
    def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":
            return FileResponse(_plotly_js(), headers={"Cache-Control": "max-age=86400"})
        path = STATIC / name
        if "/" in name or not path.is_file():
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(path, headers={"Cache-Control": "no-store"})

    def exp_id(request: Request) -> str:
        return request.path_params["id"]

    def log(request: Request) -> Response:
        return PlainTextResponse(api.log_text(opened, exp_id(request), views.LOG_TAIL_CHARS))

    def diff(request: Request) -> Any:
        against = request.query_params.get("against", "parent")
        return views.diff_view(opened, exp_id(request), against)

    def notes(request: Request) -> Any:
        last = request.query_params.get("last")
        if last is not None and not last.isdigit():
            raise HTTPError(400, "?last= must be a whole number")
        return opened.store.notes(limit=int(last) if last else None)

    # -- writes -----------------------------------------------------------------------------------------------------
    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise HTTPError(413, f"the request body is over {MAX_BODY // 1024 // 1024} MiB")
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        return body

    def field(body: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
        v = body.get(name)
        if v is None:
            if required:
                raise HTTPError(400, f"the request needs \"{name}\"")
            return None
        if not isinstance(v, kind) or isinstance(v, bool):
            raise HTTPError(400, f"\"{name}\" must be a {'string' if kind is str else kind.__name__}")
        return v

    def post(fn: Callable[[dict[str, Any]], Any], allowed: set[str]):
        async def handler(request: Request) -> Response:
            async def work() -> Response:
                body = await body_of(request)
                extra = sorted(set(body) - allowed)
                if extra:
                    raise HTTPError(400, f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")
                return _json(await run_in_threadpool(fn, body), 201)
            return await respond(request, True, work)
        return handler

    def submit(body: dict[str, Any]) -> Any:
        description = field(body, "description", str, required=True)
        files = field(body, "files", dict, required=True)
        if not files or not all(isinstance(v, str) for v in files.values()):
            raise HTTPError(400, "\"files\" must map file names to their whole text, e.g. {\"train.py\": \"...\"}")
        replicates = field(body, "replicates", int)
        ids = views.submit_files(opened, files, description, replicates=1 if replicates is None else replicates,
                                 parent=field(body, "parent", str), agent=field(body, "agent", str))
        return {"ids": ids}

    def add_note(body: dict[str, Any]) -> Any:
        text = field(body, "text", str, required=True)
        n = api.add_note(opened, field(body, "author", str) or "dashboard", text, field(body, "experiment", str))
        return {"id": n}

    routes = [
        Route("/", page),
        Route("/static/{name:path}", static),
        Route("/favicon.ico", lambda r: Response(status_code=204)),
        Route("/api/version", endpoint(lambda r: {"version": _version(opened)})),
        Route("/api/status", endpoint(lambda r: api.status(opened))),
        Route("/api/experiments", endpoint(lambda r: api.results(opened))),
        Route("/api/experiments/{id}", endpoint(lambda r: views.experiment_detail(opened, exp_id(r)))),
        Route("/api/experiments/{id}/diff", endpoint(diff)),
        Route("/api/experiments/{id}/log", endpoint(log, raw=True)),
        Route("/api/progress", endpoint(lambda r: cached("progress", lambda: views.progress(opened)))),
        Route("/api/lineage", endpoint(lambda r: cached("lineage", lambda: views.lineage(opened)))),
        Route("/api/analysis", endpoint(lambda r: cached("analysis", lambda: views.analysis(opened)))),
        Route("/api/notes", endpoint(notes), methods=["GET"]),
        Route("/api/notes", post(add_note, {"text", "author", "experiment"}), methods=["POST"]),
        Route("/api/submit", post(submit, {"description", "files", "parent", "replicates", "agent"}),
              methods=["POST"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        opened.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.opened = opened
    return app


__all__ = ["build_app"]
