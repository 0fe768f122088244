"""The ASGI application: :func:`create_app` builds it from :class:`Settings` (FastAPI on
Starlette; any ASGI server hosts it, ``pysdcpp-server`` runs it with uvicorn).

Why FastAPI: Starlette underneath (routing, multipart forms, static files, CORS, the
test client), pydantic for strict request validation with field paths in the errors,
and llama-cpp-python's server uses it too, so operators know it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware

from . import generation
from .generation import ImageSpec, RequestError
from .jobs import CANCELLED, COMPLETED, JobQueue, LocalBackend
from .settings import Settings

log = logging.getLogger("pysdcpp.server")

MODEL_EXTS = (".gguf", ".pt", ".pth", ".safetensors")


class ServerState:
    """What every route reads (sd-server's ServerRuntime): settings, the job queue and its
    backend, the LoRA and upscaler directories."""

    def __init__(self, settings: Settings, backend):
        self.settings = settings
        self.backend = backend
        self.jobs = JobQueue(backend, settings.max_queue_size, settings.job_ttl)

    # -- requests -------------------------------------------------------------------------------
    def new_spec(self, **kw) -> ImageSpec:
        return ImageSpec(p=self.settings.default_request(), **kw)

    def decode_image(self, data, what: str, channels: int, width: int = 0, height: int = 0):
        s = self.settings
        return generation.decode_image(data, what, channels, width, height,
                                       max_pixels=4 * s.max_width * s.max_height)

    def finalize(self, spec: ImageSpec) -> ImageSpec:
        return generation.finalize(spec, self.settings)

    async def run_sync(self, request: Request, spec: ImageSpec) -> list[bytes]:
        """Queue a job and wait for it (OpenAI, sdapi).  A client that goes away before it is
        done cancels it: queued, it is dropped; generating, sd.cpp stops at its next step."""
        job = self.jobs.submit(spec.kind, spec, keep=False)
        waiter = asyncio.ensure_future(job.done.wait())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this handler is cancelled (Ray Serve does so on a disconnect)
            waiter.cancel()
            gone.cancel()
            if not job.done.is_set():
                log.info("client went away: cancelling %s", job.id)
                self.jobs.cancel(job)
        if job.status == COMPLETED:
            return job.result
        if job.status == CANCELLED:
            raise RequestError("the request was cancelled (client disconnected)", 499)
        if not job.done.is_set():
            raise RequestError("the request was cancelled (client disconnected)", 499)
        raise RequestError(job.error["message"], 500)

    # -- directories (sd-server's refresh_lora_cache / refresh_upscaler_cache) ------------------
    def loras(self) -> list[dict]:
        root = self.settings.lora_model_dir or "."
        out = []
        # a directory that changes while it is walked (files come and go) is not an error
        for folder, _dirs, files in os.walk(root, onerror=lambda _e: None):
            for name in files:
                path = Path(folder) / name
                if path.suffix.lower() in MODEL_EXTS and path.is_file():
                    out.append({"name": path.stem, "path": path.relative_to(root).as_posix(), "fullpath": str(path)})
        return sorted(out, key=lambda e: e["path"])

    def lora_full_path(self, path: str) -> str:
        return next((e["fullpath"] for e in self.loras() if e["path"] == path), "")

    def upscalers(self) -> list[dict]:
        root = self.settings.hires_upscalers_dir
        out = []
        if root and os.path.isdir(root):
            for entry in os.scandir(root):
                if entry.is_file() and os.path.splitext(entry.name)[1].lower() in MODEL_EXTS:
                    out.append({"name": os.path.splitext(entry.name)[0],
                                "fullpath": os.path.normpath(os.path.abspath(entry.path))})
        return sorted(out, key=lambda e: e["name"])

    @property
    def model_path(self) -> str:
        return self.settings.model_path


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone away (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def read_json(request: Request):
    """The body as JSON: 400 for an empty body or bad JSON (sd-server: "empty body",
    "invalid json"); NaN and Infinity are not JSON."""
    body = await request.body()
    if not body.strip():
        raise RequestError("empty body")

    def no_constants(name):
        raise ValueError(f"{name} is not valid JSON")
    try:
        return json.loads(body, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"invalid json: {exc}") from None


def state_of(request: Request) -> ServerState:
    return request.app.state.server


class BodyLimit:
    """413 for a body over `limit` bytes, by its Content-Length or as it streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._refuse(scope, receive, send)
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)
        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send):
        response = JSONResponse({"error": f"request body is larger than this server's limit of {self.limit} "
                                          "bytes (--max-body-size)"}, status_code=413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(settings: Settings | None = None, *, context=None, backend=None) -> FastAPI:
    """The server as an ASGI app.  Give `settings` (:func:`pysdcpp.server.settings.parse` or
    :meth:`Settings.for_model`); the model is loaded here unless a `context` (a
    :class:`pysdcpp.Context` built from them) or a `backend` (Ray's) is given."""
    from . import openai, page, sdapi, sdcpp

    if settings is None:
        raise TypeError("create_app() needs settings")
    owned = None
    if backend is None:
        if context is None:
            import pysdcpp

            context = owned = pysdcpp.Context(**settings.context_kwargs())
        backend = LocalBackend(context, generation.execute)
    state = ServerState(settings, backend)

    @asynccontextmanager
    async def lifespan(app):
        yield
        log.info("shutting down: cancelling %d queued or generating jobs", state.jobs.pending)
        await state.jobs.close()
        if isinstance(backend, LocalBackend):
            backend.close()
        if owned is not None:
            owned.close()

    app = FastAPI(title="pysdcpp-server", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.server = state
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True, allow_methods=["*"],
                       allow_headers=["*"])
    app.add_middleware(BodyLimit, limit=settings.max_body_size)

    @app.exception_handler(RequestError)
    async def request_error(_request, exc: RequestError):
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        return JSONResponse({"error": "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                for e in exc.errors())}, status_code=400)

    @app.exception_handler(Exception)
    async def server_error(_request, exc: Exception):
        log.exception("unexpected error")
        return JSONResponse({"error": "server_error", "message": f"{type(exc).__name__}: {exc}"},
                            status_code=500)

    for module in (openai, sdapi, sdcpp, page):
        app.include_router(module.router)
    return app
