"""The OpenAI-shaped family (vendored ``examples/server/routes_openai.cpp``):
``POST /v1/images/generations``, ``POST /v1/images/edits`` (multipart), ``GET /v1/models``.
Synchronous for the client; ``<sd_cpp_extra_args>{...}</sd_cpp_extra_args>`` in the prompt
carries native fields."""
from __future__ import annotations

import re
import time
from typing import Optional

from fastapi import APIRouter, Request

from .app import read_json, state_of
from .generation import I32, RequestError, Strict, b64, extract_extra_args, parse_native, set_size_if_unset

router = APIRouter(tags=["OpenAI"])


class GenerationsRequest(Strict):
    prompt: Optional[str] = None
    n: Optional[I32] = None
    size: Optional[str] = None
    output_format: Optional[str] = None
    output_compression: Optional[I32] = None


def _size(text: str | None, width: int, height: int) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (OpenAI's ``auto`` or none: the defaults)."""
    if not text or text == "auto":
        return width, height
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not m:
        raise RequestError(f"size must be WIDTHxHEIGHT (like 512x512), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _n(value) -> int:
    if value is None:
        return 1
    if value < 1:
        raise RequestError(f"n must be at least 1, got {value}")
    return value


def _response(spec, images: list[bytes]) -> dict:
    return {"created": int(time.time()), "data": [{"b64_json": b64(img)} for img in images],
            "output_format": spec.output_format}


@router.get("/v1/models")
async def models():
    return {"data": [{"id": "sd-cpp-local", "object": "model", "owned_by": "local"}]}


@router.post("/v1/images/generations")
async def generations(request: Request):
    state = state_of(request)
    req = parse_native(await read_json(request), model=GenerationsRequest)
    if not req.prompt:
        raise RequestError("prompt required")
    spec = state.new_spec()
    p = spec.p
    # sd-server's defaults: the command line's -W/-H when set, else 512x512
    width, height = _size(req.size, p["width"] if p["width"] > 0 else 512, p["height"] if p["width"] > 0 else 512)
    p.update(prompt=req.prompt, width=width, height=height, batch_count=_n(req.n))
    spec.output_format = req.output_format if req.output_format is not None else "png"
    spec.output_compression = req.output_compression if req.output_compression is not None else 100
    extra = extract_extra_args(p, state)
    _apply_extra_images(spec, extra)
    state.finalize(spec)
    return _response(spec, await state.run_sync(request, spec))


def _apply_extra_images(spec, images: dict) -> None:
    for name, value in images.items():
        setattr(spec, name, value)


@router.post("/v1/images/edits")
async def edits(request: Request):
    state = state_of(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError("Content-Type must be multipart/form-data")
    try:
        form = await request.form()
    except Exception as exc:  # python-multipart's parse errors
        raise RequestError(f"invalid multipart body: {exc}") from None
    prompt = form.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise RequestError("prompt required")
    files = [f for f in form.getlist("image[]") if not isinstance(f, str)]
    if not files:
        files = [f for f in form.getlist("image") if not isinstance(f, str)][:1]
    if not files:
        raise RequestError("at least one image[] required")

    def field(name: str, default):
        value = form.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise RequestError(f"{name} must be a form field, not a file")
        return value

    try:
        n = _n(int(field("n", "1")))
        compression = int(field("output_compression", "100"))
    except ValueError:
        raise RequestError("n and output_compression must be integers") from None
    width, height = _size(field("size", ""), -1, -1)
    spec = state.new_spec(output_format=field("output_format", "png"), output_compression=compression)
    if spec.output_format.lower() == "webp":
        raise RequestError("invalid output_format, must be one of [png, jpeg]")
    p = spec.p
    p.update(prompt=prompt, width=width, height=height, batch_count=n)
    for i, f in enumerate(files):
        image = state.decode_image(await f.read(), f"image[{i}]", 3, max(width, 0), max(height, 0))
        set_size_if_unset(p, image)
        spec.ref_images.append(image)
    spec.init_image = spec.ref_images[0]
    mask = form.get("mask")
    if mask is not None and not isinstance(mask, str):
        sized = p["width"] > 0 and p["height"] > 0
        spec.mask_image = state.decode_image(await mask.read(), "mask", 1, p["width"] if sized else 0,
                                             p["height"] if sized else 0)
        set_size_if_unset(p, spec.mask_image)
    _apply_extra_images(spec, extract_extra_args(p, state))
    state.finalize(spec)
    return _response(spec, await state.run_sync(request, spec))
