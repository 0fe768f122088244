"""The web page at ``/`` (plain HTML/CSS/JS shipped in the package, no build step), or the
file ``--serve-html-path`` names, read on each request as sd-server does."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse

from .app import state_of
from .generation import RequestError

router = APIRouter(tags=["page"])
STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@router.get("/", include_in_schema=False)
async def index(request: Request):
    path = state_of(request).settings.serve_html_path
    if path:
        try:
            return HTMLResponse(Path(path).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return PlainTextResponse("Error: Unable to read HTML file", status_code=500)
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str):
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in TYPES or not path.is_file():
        raise RequestError("not found", 404)
    return FileResponse(path, media_type=TYPES[path.suffix])
