"""The native async family (vendored ``examples/server/routes_sdcpp.cpp``):
``GET /sdcpp/v1/capabilities``, ``POST /sdcpp/v1/img_gen`` (202 + a job to poll),
``GET /sdcpp/v1/jobs/{id}``, ``POST /sdcpp/v1/jobs/{id}/cancel``.

A kind of job is a schema, a parser into an :class:`ImageSpec`-like spec, a result shape
and defaults/features for capabilities (:data:`KINDS`); ``vid_gen`` is one more entry
once :class:`pysdcpp.Context` generates video.  Beyond sd-server: a generating job can be
cancelled (sd.cpp stops at its next step), and a job reports ``progress``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .. import SampleMethod, Scheduler
from .app import read_json, state_of
from .generation import OUTPUT_FORMATS, NativeRequest, apply_native, b64, finite_or_none, parse_native
from .jobs import COMPLETED, GENERATING, QUEUED
from .sdapi import latent_modes

router = APIRouter(tags=["sdcpp"])


@dataclass(frozen=True)
class Kind:
    name: str
    parse: Callable           # (state, body) -> spec, raises RequestError
    result: Callable          # (job) -> the "result" object of a completed job
    defaults: Callable        # (settings) -> defaults_by_mode[name]
    output_formats: tuple
    features: dict


def _parse_img_gen(state, body):
    req = parse_native(body, model=NativeRequest)
    spec = state.new_spec(output_format=req.output_format if req.output_format is not None else "png",
                          output_compression=req.output_compression if req.output_compression is not None else 100)
    for name, value in apply_native(spec.p, req, state).items():
        setattr(spec, name, value)
    return state.finalize(spec)


def _img_gen_result(job) -> dict:
    return {"output_format": job.info["output_format"],
            "images": [{"index": i, "b64_json": b64(img), "seed": job.info["seed"] + i}
                       for i, img in enumerate(job.result)]}


def _sample_params_json(p: dict) -> dict:
    name = lambda enum, v: "default" if v is None else enum(v).cli_name  # noqa: E731
    return {"scheduler": name(Scheduler, p["scheduler"]), "sample_method": name(SampleMethod, p["sampling_method"]),
            "sample_steps": p["steps"], "eta": finite_or_none(p["eta"]), "shifted_timestep": p["timestep_shift"],
            "flow_shift": finite_or_none(p["flow_shift"]),
            "guidance": {"txt_cfg": p["cfg_scale"], "img_cfg": finite_or_none(p["img_cfg_scale"]),
                         "distilled_guidance": p["guidance"],
                         "slg": {"layers": list(p["skip_layers"]), "layer_start": p["skip_layer_start"],
                                 "layer_end": p["skip_layer_end"], "scale": p["slg_scale"]}}}


def _img_gen_defaults(settings) -> dict:
    p = settings.values
    (tx, ty), (rx, ry) = p["vae_tile_size"], p["vae_relative_tile_size"]
    return {
        "prompt": p["prompt"], "negative_prompt": p["negative_prompt"], "clip_skip": p["clip_skip"],
        "width": p["width"] if p["width"] > 0 else 512, "height": p["height"] if p["height"] > 0 else 512,
        "strength": p["strength"], "seed": p["seed"], "batch_count": p["batch_count"],
        "auto_resize_ref_image": p["auto_resize_ref_image"], "increase_ref_index": p["increase_ref_index"],
        "control_strength": p["control_strength"], "sample_params": _sample_params_json(p),
        "hires": {"enabled": p["hires_enabled"], "upscaler": p["hires_upscaler"], "scale": p["hires_scale"],
                  "target_width": p["hires_width"], "target_height": p["hires_height"], "steps": p["hires_steps"],
                  "denoising_strength": p["hires_denoising_strength"],
                  "upscale_tile_size": p["hires_upscale_tile_size"]},
        "vae_tiling_params": {"enabled": p["vae_tiling"], "tile_size_x": tx, "tile_size_y": ty,
                              "target_overlap": p["vae_tile_overlap"], "rel_size_x": rx, "rel_size_y": ry},
        "cache_mode": p["cache_mode"], "cache_option": p["cache_option"], "scm_mask": p["scm_mask"],
        "scm_policy_dynamic": p["scm_policy_dynamic"], "output_format": "png", "output_compression": 100,
    }


KINDS = {
    "img_gen": Kind("img_gen", _parse_img_gen, _img_gen_result, _img_gen_defaults, tuple(OUTPUT_FORMATS),
                    {"init_image": True, "mask_image": True, "control_image": True, "ref_images": True,
                     "lora": True, "vae_tiling": True, "hires": True, "cache": True, "cancel_queued": True,
                     "cancel_generating": True}),
}


def job_json(state, job) -> dict:
    """sd-server's make_async_job_json, plus ``progress``."""
    out = {"id": job.id, "kind": job.kind, "status": job.status, "created": job.created,
           "started": job.started, "completed": job.completed, "queue_position": state.jobs.position(job),
           "result": None, "error": None,
           "progress": {"step": job.step, "steps": job.steps, "elapsed": round(job.elapsed, 3)}}
    if job.status == COMPLETED:
        out["result"] = KINDS[job.kind].result(job)
    elif job.error is not None:
        out["error"] = job.error
    return out


@router.get("/sdcpp/v1/capabilities")
async def capabilities(request: Request):
    state = state_of(request)
    s = state.settings
    path = s.model_path
    modes = list(KINDS)
    current = modes[0]
    defaults = {k: KINDS[k].defaults(s) for k in modes}
    formats = {k: list(KINDS[k].output_formats) for k in modes}
    features = {k: KINDS[k].features for k in modes}
    return {
        "model": {"name": os.path.basename(path), "stem": os.path.splitext(os.path.basename(path))[0], "path": path},
        "current_mode": current, "supported_modes": modes,
        "defaults": defaults[current], "defaults_by_mode": defaults,
        "limits": {"min_width": 8, "max_width": s.max_width, "min_height": 8, "max_height": s.max_height,
                   "max_batch_count": s.max_batch_count, "max_queue_size": s.max_queue_size,
                   "max_steps": s.max_steps, "max_body_size": s.max_body_size},
        "samplers": [m.cli_name for m in SampleMethod], "schedulers": [m.cli_name for m in Scheduler],
        "output_formats": formats[current], "output_formats_by_mode": formats,
        "features": features[current], "features_by_mode": features,
        "loras": [{"name": e["name"], "path": e["path"]} for e in state.loras()],
        "upscalers": [{"name": n} for n in ("None", "Lanczos", "Nearest", *latent_modes())]
                     + [{"name": e["name"]} for e in state.upscalers()],
    }


async def _submit(request: Request, kind: str):
    state = state_of(request)
    body = await read_json(request)
    spec = KINDS[kind].parse(state, body)
    job = state.jobs.submit(kind, spec, info={"output_format": spec.output_format, "seed": spec.p.get("seed")})
    return JSONResponse({"id": job.id, "kind": job.kind, "status": job.status, "created": job.created,
                         "poll_url": f"/sdcpp/v1/jobs/{job.id}"}, status_code=202)


@router.post("/sdcpp/v1/img_gen")
async def img_gen(request: Request):
    return await _submit(request, "img_gen")


@router.get("/sdcpp/v1/jobs/{job_id}")
async def get_job(job_id: str, request: Request):
    state = state_of(request)
    return job_json(state, state.jobs.get(job_id))


@router.post("/sdcpp/v1/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request):
    """Queued: cancelled at once.  Generating: sd.cpp is asked to stop and the answer waits
    (up to 10 s) for it, so that it normally says "cancelled"."""
    import asyncio

    state = state_of(request)
    job = state.jobs.get(job_id)
    if job.status in (QUEUED, GENERATING):
        state.jobs.cancel(job)
        try:
            await asyncio.wait_for(asyncio.shield(job.done.wait()), timeout=10)
        except asyncio.TimeoutError:
            pass
    return job_json(state, job)
