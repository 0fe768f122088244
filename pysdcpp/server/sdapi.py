"""The AUTOMATIC1111/WebUI-shaped family (vendored ``examples/server/routes_sdapi.cpp``):
``POST /sdapi/v1/txt2img`` and ``/img2img`` (synchronous, base64 PNGs), and the ``GET``
lists WebUI clients read at start-up."""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
from fastapi import APIRouter, Request

from .. import HiresUpscaler, SampleMethod, Scheduler
from .app import read_json, state_of
from .generation import (F32, I32, I64, Lora, NativeParams, RequestError, Strict, apply_native, b64,
                         extract_extra_args, parse_native, set_size_if_unset, _enum)

router = APIRouter(tags=["sdapi"])

# WebUI's sampler names that sd-server also takes (its get_sdapi_sample_method), besides sd.cpp's own
WEBUI_SAMPLERS = {
    "euler a": "euler_a", "k_euler_a": "euler_a", "euler": "euler", "k_euler": "euler", "heun": "heun",
    "k_heun": "heun", "dpm2": "dpm2", "k_dpm_2": "dpm2", "lcm": "lcm", "ddim": "ddim_trailing",
    "dpm++ 2m": "dpm++2m", "k_dpmpp_2m": "dpm++2m", "res multistep": "res_multistep",
    "k_res_multistep": "res_multistep", "res 2s": "res_2s", "k_res_2s": "res_2s",
}
# WebUI's scheduler labels (its /sdapi/v1/schedulers), for those sd.cpp has; "Automatic" = sd.cpp's choice
WEBUI_SCHEDULERS = {"automatic": "default", "uniform": "discrete", "karras": "karras", "exponential": "exponential",
                    "sgm uniform": "sgm_uniform", "kl optimal": "kl_optimal", "align your steps": "ays",
                    "simple": "simple"}


class Txt2ImgRequest(Strict):
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    width: Optional[I32] = None
    height: Optional[I32] = None
    steps: Optional[I32] = None
    cfg_scale: Optional[F32] = None
    seed: Optional[I64] = None
    batch_size: Optional[I32] = None
    clip_skip: Optional[I32] = None
    sampler_name: Optional[str] = None
    scheduler: Optional[str] = None
    lora: Optional[list[Lora]] = None
    extra_images: Optional[list[str]] = None
    enable_hr: Optional[bool] = None
    hr_upscaler: Optional[str] = None
    hr_scale: Optional[F32] = None
    hr_resize_x: Optional[I32] = None
    hr_resize_y: Optional[I32] = None
    hr_steps: Optional[I32] = None
    denoising_strength: Optional[F32] = None


class Img2ImgRequest(Txt2ImgRequest):
    init_images: Optional[list[str]] = None
    mask: Optional[str] = None
    inpainting_mask_invert: Optional[Union[bool, I32]] = None


def _sampler(name: str):
    if name in ("", "default"):
        return None
    key = WEBUI_SAMPLERS.get(name.lower(), name)
    return _enum("--sampling-method", key, "sampler_name")


def _scheduler(name: str):
    key = WEBUI_SCHEDULERS.get(name.lower(), name)
    return _enum("--scheduler", key, "scheduler")


async def _any2img(request: Request, img2img: bool) -> dict:
    state = state_of(request)
    body = await read_json(request)
    req = parse_native(body, model=Img2ImgRequest if img2img else Txt2ImgRequest)
    if (req.width if req.width is not None else 512) <= 0 or (req.height if req.height is not None else 512) <= 0:
        raise RequestError("width and height must be positive")
    if not req.prompt:
        raise RequestError("prompt required")
    spec = state.new_spec()
    p = spec.p
    p.update(prompt=req.prompt, negative_prompt=req.negative_prompt or "",
             seed=req.seed if req.seed is not None else -1,
             width=req.width if req.width is not None else -1, height=req.height if req.height is not None else -1)
    if req.steps is not None:
        p["steps"] = req.steps
    if req.batch_size is not None:
        p["batch_count"] = req.batch_size
    if req.cfg_scale is not None:
        p["cfg_scale"] = float(np.float32(req.cfg_scale))
    if not img2img and req.enable_hr:
        hires = {"enabled": True, "scale": req.hr_scale, "target_width": req.hr_resize_x,
                 "target_height": req.hr_resize_y, "steps": req.hr_steps,
                 "denoising_strength": req.denoising_strength, "upscaler": req.hr_upscaler}
        apply_native(p, NativeParams.model_validate({"hires": {k: v for k, v in hires.items() if v is not None}}),
                     state)
    images = extract_extra_args(p, state)
    for name, value in images.items():
        setattr(spec, name, value)
    if req.clip_skip is not None and req.clip_skip > 0:
        p["clip_skip"] = req.clip_skip
    if req.sampler_name:
        p["sampling_method"] = _sampler(req.sampler_name)
    if req.scheduler:
        p["scheduler"] = _scheduler(req.scheduler)
    if req.lora is not None:
        apply_native(p, NativeParams(lora=req.lora), state)
    if img2img:
        sized = p["width"] > 0 and p["height"] > 0
        w, h = (p["width"], p["height"]) if sized else (0, 0)
        if not req.init_images:
            raise RequestError("init_images required (an array of base64 images)")
        spec.init_image = state.decode_image(req.init_images[0], "init_images[0]", 3, w, h)
        set_size_if_unset(p, spec.init_image)
        if req.mask is not None:
            mask = state.decode_image(req.mask, "mask", 1, w, h)
            set_size_if_unset(p, mask)
            if req.inpainting_mask_invert:
                mask = 255 - mask
            spec.mask_image = mask
        else:  # sd-server's assign_solid_mask: repaint everything
            spec.mask_image = np.full((_resolved(p["height"]), _resolved(p["width"]), 1), 255, np.uint8)
        if req.denoising_strength is not None and req.denoising_strength >= 0:
            p["strength"] = float(np.float32(min(req.denoising_strength, 1.0)))
    for i, data in enumerate(req.extra_images or ()):
        sized = p["width"] > 0 and p["height"] > 0
        image = state.decode_image(data, f"extra_images[{i}]", 3, p["width"] if sized else 0,
                                   p["height"] if sized else 0)
        set_size_if_unset(p, image)
        spec.ref_images.append(image)
    state.finalize(spec)
    images = await state.run_sync(request, spec)
    return {"images": [b64(img) for img in images], "parameters": body, "info": ""}


def _resolved(v: int) -> int:
    return v if v > 0 else 512


@router.post("/sdapi/v1/txt2img")
async def txt2img(request: Request):
    return await _any2img(request, img2img=False)


@router.post("/sdapi/v1/img2img")
async def img2img(request: Request):
    return await _any2img(request, img2img=True)


@router.get("/sdapi/v1/loras")
async def loras(request: Request):
    return [{"name": e["name"], "path": e["path"]} for e in state_of(request).loras()]


@router.get("/sdapi/v1/upscalers")
async def upscalers(request: Request):
    def entry(name, model_name=None, model_path=None):
        return {"name": name, "model_name": model_name, "model_path": model_path, "model_url": None, "scale": 4}
    return ([entry(n) for n in ("None", "Lanczos", "Nearest")]
            + [entry(e["name"], "ESRGAN_4x", e["fullpath"]) for e in state_of(request).upscalers()])


def latent_modes() -> list[str]:
    """sd.cpp's latent hires upscalers, by its own names."""
    return [m.cli_name for m in HiresUpscaler if m.cli_name.startswith("Latent")]


@router.get("/sdapi/v1/latent-upscale-modes")
async def latent_upscale_modes():
    return [{"name": name} for name in latent_modes()]


@router.get("/sdapi/v1/samplers")
async def samplers():
    return [{"name": n, "aliases": [n], "options": {}} for n in ["default", *(m.cli_name for m in SampleMethod)]]


@router.get("/sdapi/v1/schedulers")
async def schedulers():
    return [{"name": n, "label": n} for n in ["default", *(m.cli_name for m in Scheduler)]]


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


@router.get("/sdapi/v1/sd-models")
async def sd_models(request: Request):
    path = state_of(request).model_path
    return [{"title": _stem(path), "model_name": _stem(path), "filename": os.path.basename(path),
             "hash": "8888888888", "sha256": "8" * 64, "config": None}]


@router.get("/sdapi/v1/options")
async def options(request: Request):
    return {"samples_format": "png", "sd_model_checkpoint": _stem(state_of(request).model_path)}
