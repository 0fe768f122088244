"""One request, whatever its API family, becomes one :class:`ImageSpec`: the CLI's values
dict (``p``, :mod:`pysdcpp.cli`'s shape) started from the server's default generation
values, the request's fields laid over it, plus the decoded images.  :func:`execute` then
calls :meth:`pysdcpp.Context.generate` with the same keyword arguments that ``pysdcpp``
(the CLI) passes for the same values, and encodes the images as sd-server does (PNG
with sd-cli's ``parameters`` text, or JPEG/WEBP).

The native schema (:class:`NativeParams`) is sd-server's ``SDGenerationParams::from_json_str``
(vendored ``examples/common/common.cpp``): the sdcpp API's request body and the JSON of
``<sd_cpp_extra_args>`` blocks in OpenAI/sdapi prompts.  Unlike sd-server, which skips a
field of the wrong type or an unknown sampler name, every field is checked and a bad one
is a 400 that names it.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import cli

OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
CACHE_MODES = ("disabled",) + cli.CACHE_MODES


class RequestError(Exception):
    """A request the server refuses: HTTP `status` with a JSON body ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


# --- the native schema (sd-server's from_json_str), strictly typed --------------------------------
I32 = Annotated[int, Field(ge=-(1 << 31), le=(1 << 31) - 1)]
I64 = Annotated[int, Field(ge=-(1 << 63), le=(1 << 63) - 1)]
F32 = Annotated[float, Field(ge=-float(np.finfo(np.float32).max), le=float(np.finfo(np.float32).max))]


class Strict(BaseModel):
    """JSON types as sd.cpp's fields take them: an integer field takes no 1.5, "1" or true;
    a number takes integers; no NaN or Infinity.  Fields a schema does not know are ignored,
    as sd-server ignores them (WebUI clients send many)."""
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class Slg(Strict):
    layers: Optional[list[I32]] = None
    layer_start: Optional[F32] = None
    layer_end: Optional[F32] = None
    scale: Optional[F32] = None


class Guidance(Strict):
    txt_cfg: Optional[F32] = None
    img_cfg: Optional[F32] = None
    distilled_guidance: Optional[F32] = None
    slg: Optional[Slg] = None


class SampleParams(Strict):
    scheduler: Optional[str] = None
    sample_method: Optional[str] = None
    sample_steps: Optional[I32] = None
    eta: Optional[F32] = None
    shifted_timestep: Optional[I32] = None
    custom_sigmas: Optional[list[F32]] = None
    flow_shift: Optional[F32] = None
    guidance: Optional[Guidance] = None


class Hires(Strict):
    enabled: Optional[bool] = None
    upscaler: Optional[str] = None
    scale: Optional[F32] = None
    target_width: Optional[I32] = None
    target_height: Optional[I32] = None
    steps: Optional[I32] = None
    denoising_strength: Optional[F32] = None
    upscale_tile_size: Optional[I32] = None


class VaeTiling(Strict):
    enabled: Optional[bool] = None
    tile_size_x: Optional[I32] = None
    tile_size_y: Optional[I32] = None
    target_overlap: Optional[F32] = None
    rel_size_x: Optional[F32] = None
    rel_size_y: Optional[F32] = None


class Lora(Strict):
    path: str
    multiplier: F32 = 1.0
    is_high_noise: bool = False


class NativeParams(Strict):
    """``POST /sdcpp/v1/img_gen``'s body and ``<sd_cpp_extra_args>``'s JSON (api.md).  A field
    left out or null keeps the server's default."""
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    clip_skip: Optional[I32] = None
    width: Optional[I32] = None
    height: Optional[I32] = None
    strength: Optional[F32] = None
    seed: Optional[I64] = None
    batch_count: Optional[I32] = None
    auto_resize_ref_image: Optional[bool] = None
    increase_ref_index: Optional[bool] = None
    control_strength: Optional[F32] = None
    embed_image_metadata: Optional[bool] = None
    init_image: Optional[str] = None
    ref_images: Optional[list[str]] = None
    mask_image: Optional[str] = None
    control_image: Optional[str] = None
    sample_params: Optional[SampleParams] = None
    lora: Optional[list[Lora]] = None
    hires: Optional[Hires] = None
    vae_tiling_params: Optional[VaeTiling] = None
    cache_mode: Optional[str] = None
    cache_option: Optional[str] = None
    scm_mask: Optional[str] = None
    scm_policy_dynamic: Optional[bool] = None


class NativeRequest(NativeParams):
    """The sdcpp API's body: the native fields plus the HTTP-only output options."""
    output_format: Optional[str] = None
    output_compression: Optional[I32] = None


# json name -> the CLI's destination (p's key), per nested object
_TOP = ("prompt", "negative_prompt", "clip_skip", "width", "height", "strength", "seed", "batch_count",
        "auto_resize_ref_image", "increase_ref_index", "control_strength", "embed_image_metadata",
        "cache_mode", "cache_option", "scm_mask", "scm_policy_dynamic")
_SAMPLE = {"sample_steps": "steps", "eta": "eta", "shifted_timestep": "timestep_shift", "flow_shift": "flow_shift",
           "custom_sigmas": "sigmas"}
_GUIDANCE = {"txt_cfg": "cfg_scale", "img_cfg": "img_cfg_scale", "distilled_guidance": "guidance"}
_SLG = {"layers": "skip_layers", "layer_start": "skip_layer_start", "layer_end": "skip_layer_end",
        "scale": "slg_scale"}
_HIRES = {"enabled": "hires_enabled", "upscaler": "hires_upscaler", "scale": "hires_scale",
          "target_width": "hires_width", "target_height": "hires_height", "steps": "hires_steps",
          "denoising_strength": "hires_denoising_strength", "upscale_tile_size": "hires_upscale_tile_size"}


def validation_message(exc: ValidationError, prefix: str = "") -> str:
    """One line per wrong field: ``sample_params.sample_steps: Input should be a valid integer``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"] if x not in ("body",))
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r:.40})"
        parts.append(f"{prefix}{loc}: {err['msg']}{shown}")
    return "; ".join(parts)


def parse_native(data: Any, what: str = "request", model: type[Strict] = NativeRequest) -> Strict:
    if not isinstance(data, dict):
        raise RequestError(f"{what} must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestError(validation_message(exc, f"{what}: " if what != "request" else "")) from None


# --- images in (sd-server's decode_base64_image + load_image_from_memory) --------------------------
@dataclass
class ImageSpec:
    """What one job generates: the CLI-shaped values and the decoded input images."""
    p: dict
    init_image: Optional[np.ndarray] = None
    mask_image: Optional[np.ndarray] = None
    control_image: Optional[np.ndarray] = None
    ref_images: list = field(default_factory=list)
    output_format: str = "png"
    output_compression: int = 100
    kind: str = "img_gen"


def decode_image(data: str | bytes, what: str, channels: int, width: int = 0, height: int = 0,
                 max_pixels: int = 1 << 26) -> np.ndarray:
    """A base64 string (or a data URL, or raw bytes from a multipart upload) as an HxWxC uint8
    array, cropped and resized to width x height when both are set and differ (sd-server's
    load_image_common)."""
    from PIL import Image

    if isinstance(data, str):
        text = data.split(",", 1)[1] if "," in data else data  # data:image/png;base64,....
        text = "".join(text.split())
        text += "=" * (-len(text) % 4) if len(text) % 4 != 1 else ""
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{what}: not valid base64") from None
    else:
        raw = data
    if not raw:
        raise RequestError(f"{what}: empty image")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
    except Image.DecompressionBombError:  # PIL's own guard, past 2x its MAX_IMAGE_PIXELS
        raise RequestError(f"{what}: the image is larger than this server takes") from None
    except Exception:  # PIL raises many kinds for a broken file
        raise RequestError(f"{what}: not a readable image (PNG, JPEG, WEBP, BMP, ...)") from None
    if w * h > max_pixels:
        raise RequestError(f"{what}: {w}x{h} is larger than this server takes ({max_pixels} pixels)")
    try:
        return cli._load_image(io.BytesIO(raw), channels, max(width, 0), max(height, 0))
    except (cli.RunError, OSError, ValueError, Image.DecompressionBombError):
        raise RequestError(f"{what}: not a readable image") from None


# --- requests into values --------------------------------------------------------------------------
def _f32(x: float) -> float:
    return float(np.float32(x))


def _enum(flag: str, text: str, field_name: str):
    """A sampler/scheduler name through the CLI's own parser (sd.cpp's str_to_*); "default"
    (what capabilities reports for an unset one) means sd.cpp's choice."""
    if text in ("default", ""):
        return None
    try:
        return cli.BY_NAME[flag].parse(text)
    except cli.UsageError as exc:
        raise RequestError(f"{field_name}: {exc}") from None


def apply_native(p: dict, req: NativeParams, state, what: str = "") -> dict:
    """Lay a native request over values `p` (from_json_str's order); returns the images given."""
    for name in _TOP:
        v = getattr(req, name)
        if v is not None:
            p[name] = _f32(v) if isinstance(v, float) else v
    sp = req.sample_params
    if sp is not None:
        for name, dest in _SAMPLE.items():
            v = getattr(sp, name)
            if v is not None:
                p[dest] = [_f32(x) for x in v] if dest == "sigmas" else (_f32(v) if isinstance(v, float) else v)
        if sp.sample_method is not None:
            p["sampling_method"] = _enum("--sampling-method", sp.sample_method, what + "sample_params.sample_method")
        if sp.scheduler is not None:
            p["scheduler"] = _enum("--scheduler", sp.scheduler, what + "sample_params.scheduler")
        g = sp.guidance
        if g is not None:
            for name, dest in _GUIDANCE.items():
                if getattr(g, name) is not None:
                    p[dest] = _f32(getattr(g, name))
            if g.slg is not None:
                for name, dest in _SLG.items():
                    v = getattr(g.slg, name)
                    if v is not None:
                        p[dest] = list(v) if dest == "skip_layers" else _f32(v)
    if req.hires is not None:
        for name, dest in _HIRES.items():
            v = getattr(req.hires, name)
            if v is not None:
                p[dest] = _f32(v) if isinstance(v, float) else v
    t = req.vae_tiling_params
    if t is not None:
        if t.enabled is not None:
            p["vae_tiling"] = t.enabled
        (tx, ty), (rx, ry) = p["vae_tile_size"], p["vae_relative_tile_size"]
        p["vae_tile_size"] = (t.tile_size_x if t.tile_size_x is not None else tx,
                              t.tile_size_y if t.tile_size_y is not None else ty)
        p["vae_relative_tile_size"] = (_f32(t.rel_size_x) if t.rel_size_x is not None else rx,
                                       _f32(t.rel_size_y) if t.rel_size_y is not None else ry)
        if t.target_overlap is not None:
            p["vae_tile_overlap"] = _f32(t.target_overlap)
    if req.lora is not None:
        p["_loras"] = {}
        for i, item in enumerate(req.lora):
            if item.is_high_noise:
                raise RequestError(f"{what}lora[{i}]: is_high_noise LoRAs are for video (Wan2.2) models")
            full = state.lora_full_path(item.path)
            if not full:
                raise RequestError(f"{what}lora[{i}]: invalid lora path: {item.path} (see GET /sdapi/v1/loras)")
            p["_loras"][full] = _f32(p["_loras"].get(full, 0.0) + item.multiplier)
    # images, decoded against the size given so far (sd-server's order)
    w, h = (p["width"], p["height"]) if p["width"] > 0 and p["height"] > 0 else (0, 0)
    images = {}
    for name, channels in (("init_image", 3), ("mask_image", 1), ("control_image", 3)):
        v = getattr(req, name)
        if v is not None:
            images[name] = state.decode_image(v, what + name, channels, w, h)
    if req.ref_images is not None:
        images["ref_images"] = [state.decode_image(v, f"{what}ref_images[{i}]", 3, w, h)
                                for i, v in enumerate(req.ref_images)]
    return images


_EXTRA_ARGS = re.compile(r"<sd_cpp_extra_args>(.*?)</sd_cpp_extra_args>")


def extract_extra_args(p: dict, state) -> dict:
    """sd-server's extract_and_remove_sd_cpp_extra_args on p["prompt"]: the first block's JSON
    is laid over `p` as a native request, every block is removed from the prompt."""
    import json

    m = _EXTRA_ARGS.search(p["prompt"])
    if not m:
        return {}
    p["prompt"] = _EXTRA_ARGS.sub("", p["prompt"])
    try:
        data = json.loads(m.group(1))
    except ValueError as exc:
        raise RequestError(f"invalid sd_cpp_extra_args: {exc}") from None
    req = parse_native(data, "sd_cpp_extra_args", NativeParams)
    return apply_native(p, req, state, "sd_cpp_extra_args.")


def set_size_if_unset(p: dict, image: np.ndarray) -> None:
    if not (p["width"] > 0 and p["height"] > 0):
        p["width"], p["height"] = int(image.shape[1]), int(image.shape[0])


def finalize(spec: ImageSpec, settings) -> ImageSpec:
    """sd-server's resolve_and_validate (through the CLI's, which is the same), then this
    server's limits.  Raises RequestError."""
    p = spec.p
    if p["cache_mode"] not in ("",) + CACHE_MODES:
        raise RequestError(f"invalid cache mode '{p['cache_mode']}', must be one of [{', '.join(CACHE_MODES)}]")
    loras = p.pop("_loras", {})
    p["lora_model_dir"] = ""  # no <lora:...> tags in server prompts (api.md's global LoRA rule)
    try:
        cli._validate(p)
    except cli.UsageError as exc:
        raise RequestError(str(exc)) from None
    p["lora_map"] = loras
    w, h = cli._resolved(p["width"]), cli._resolved(p["height"])
    s = settings
    for name, v, top in (("width", w, s.max_width), ("height", h, s.max_height)):
        if v % 8:
            raise RequestError(f"{name} must be a multiple of 8, got {v}")
        if v > top:
            raise RequestError(f"{name} {v} is larger than this server's limit {top} (--max-{name})")
    if p["steps"] > s.max_steps:
        raise RequestError(f"steps {p['steps']} is more than this server's limit {s.max_steps} (--max-steps)")
    if p["batch_count"] > s.max_batch_count:
        raise RequestError(f"batch count {p['batch_count']} is more than this server's limit "
                           f"{s.max_batch_count} (--max-batch-count)")
    if p["hires_enabled"]:
        tw = p["hires_width"] or (round(w * p["hires_scale"]) if not p["hires_height"] else 0)
        th = p["hires_height"] or (round(h * p["hires_scale"]) if not p["hires_width"] else 0)
        if tw > s.max_width or th > s.max_height:
            raise RequestError(f"the hires target {tw}x{th} is larger than this server's limit "
                               f"{s.max_width}x{s.max_height}")
        if p["hires_steps"] > s.max_steps:
            raise RequestError(f"hires steps {p['hires_steps']} is more than this server's limit {s.max_steps}")
    for name in ("init_image", "mask_image"):
        arr = getattr(spec, name)
        if arr is not None and arr.shape[:2] != (h, w):
            raise RequestError(f"{name} is {arr.shape[1]}x{arr.shape[0]} but the image size is {w}x{h}")
    if spec.mask_image is not None and spec.init_image is None:
        raise RequestError("a mask needs an init image")
    fmt = spec.output_format.lower()
    if fmt not in OUTPUT_FORMATS:
        raise RequestError(f"invalid output_format, must be one of [{', '.join(OUTPUT_FORMATS)}]")
    spec.output_format = fmt
    spec.output_compression = min(max(spec.output_compression, 0), 100)
    return spec


# --- running and encoding ------------------------------------------------------------------------
def execute(ctx, spec: ImageSpec, progress: Callable | None = None) -> list[bytes]:
    """Generate on `ctx` (the caller's thread; the GIL is released while sd.cpp runs) and
    encode; the keyword arguments are the CLI's (:func:`pysdcpp.cli._gen_kwargs`)."""
    p = spec.p
    arrays = ctx.generate(p["prompt"], output="numpy", progress=progress, init_image=spec.init_image,
                          mask_image=spec.mask_image, control_image=spec.control_image,
                          ref_images=spec.ref_images or None, **cli._gen_kwargs(p))
    return [encode_image(a, spec, p["seed"] + i) for i, a in enumerate(arrays)]


def encode_image(array: np.ndarray, spec: ImageSpec, seed: int) -> bytes:
    """As sd-server's encode_image_to_vector: PNG and WEBP carry sd-cli's parameters text
    (when embed_image_metadata), JPEG none; JPEG/WEBP quality is output_compression."""
    fmt = OUTPUT_FORMATS[spec.output_format]
    params = cli.image_parameters(spec.p, seed) if spec.p["embed_image_metadata"] and fmt != "JPEG" else ""
    buf = io.BytesIO()
    cli.write_image(buf, array, params, fmt=fmt, quality=spec.output_compression)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def finite_or_none(x: float):
    return x if math.isfinite(x) else None
