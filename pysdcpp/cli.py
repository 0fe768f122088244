"""``pysdcpp``: a drop-in for sd.cpp's ``sd-cli`` (image modes), built on :class:`pysdcpp.Context`.

The flags, their short names, value types, defaults and meanings are those of the
vendored ``examples/cli/main.cpp`` and ``examples/common/common.cpp``; values are
parsed with sd.cpp's own ``str_to_*`` functions.  Output files are named and
tagged as sd-cli does (``-o`` with ``%d`` patterns or ``_<n>`` batch suffixes, the
same ``parameters`` PNG text).  Flags of modes pysdcpp does not run (video,
convert, metadata, server) are parsed and then refused with one line and exit
status 2, never ignored.

Exit status: 0 ok; 1 a failed run (model load, generation, I/O); 2 bad arguments
or an unsupported flag; 130 interrupted.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

PROG = "pysdcpp"

# --- why a flag is refused -------------------------------------------------------------
VIDEO = "video generation (-M vid_gen) is not supported by pysdcpp yet; use sd-cli"
HIGH_NOISE = "is a video (Wan2.2 MoE, -M vid_gen) option, which pysdcpp does not support yet; use sd-cli"
CONVERT = "model conversion (-M convert) is not supported by pysdcpp; use sd-cli"
METADATA = "metadata inspection (-M metadata) is not supported by pysdcpp; use sd-cli"
SERVER = "is an sd-server option; pysdcpp-server takes it (pip install 'pysdcpp[server]')"

MODES = ("img_gen", "vid_gen", "convert", "upscale", "metadata")
PREVIEWS = ("none", "proj", "tae", "vae")
CACHE_MODES = ("easycache", "ucache", "dbcache", "taylorseer", "cache-dit", "spectrum")
# the weight-streaming flags -> sd_ctx_params_t field (present with the streaming patch only)
STREAM_FIELDS = {
    "--stream-layers": "stream_layers",
    "--stream-prefetch-depth": "stream_prefetch_depth",
    "--no-stream-residency": "stream_residency",
    "--no-pin-offloaded-params": "pin_offloaded_params",
    "--no-pin-params": "pin_offloaded_params",  # pysdcpp's short alias
}


class UsageError(Exception):
    """Bad command line: exit status 2."""


class RunError(Exception):
    """A failed run: exit status 1."""


@dataclass
class Opt:
    short: str
    long: str
    kind: str          # "string" | "int" | "float" | "bool" | "manual"
    dest: str
    desc: str
    group: str         # "cli" | "ctx" | "gen" | "pysdcpp" | "server"
    value: Any = True  # bool: the value stored when the flag is present
    parse: Callable[[str], Any] | None = None  # manual options taking a value
    append: bool = False
    refuse: str | None = None
    takes_value: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.short, self.long) if n)


# --- value parsers (sd-cli semantics, but strict: "12abc" is an error, not 12) ----------
def _int(text: str, bits: int = 32) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise UsageError(f"expected an integer, got {text!r}") from None
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not lo <= value <= hi:
        raise UsageError(f"{value} is out of range")
    return value


def _float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise UsageError(f"expected a number, got {text!r}") from None
    if math.isfinite(value) and abs(value) > float(np.finfo(np.float32).max):
        raise UsageError(f"{text} is out of range")
    return float(np.float32(value))  # a C float, as std::stof stores it


def _c_enum(label: str, fn_name: str, count_name: str):
    def parse(text: str):
        from ._native import lib

        value = getattr(lib, fn_name)(text.encode())
        if value == getattr(lib, count_name):
            raise UsageError(f"invalid {label} {text}")
        return int(value)
    return parse


def _choice(label: str, choices):
    def parse(text: str):
        if text not in choices:
            raise UsageError(f"invalid {label} {text}, must be one of [{', '.join(choices)}]")
        return text
    return parse


def _layers(text: str) -> list[int]:
    if not text or text[0] != "[" or text[-1] != "]":
        raise UsageError(f"expected a list like [7,8,9], got {text!r}")
    return [_int(tok) for tok in re.split(r"[, ]+", text[1:-1])] if text[1:-1] else []


def _sigmas(text: str) -> list[float]:
    s = text
    if s.startswith("["):
        s = s[1:]
    if s.endswith("]"):
        s = s[:-1]
    values = [_float(item) for item in (i.strip() for i in s.split(",")) if item]
    if not values and s:
        raise UsageError(f"could not parse any sigma values from {text!r}")
    return values


def _pair(conv):
    def parse(text: str):
        if "x" in text:
            x, y = text.split("x", 1)
            return conv(x), conv(y)
        v = conv(text)
        return v, v
    return parse


def _scm_policy(text: str) -> bool:
    if text not in ("dynamic", "static"):
        raise UsageError(f"invalid scm policy '{text}', must be 'dynamic' or 'static'")
    return text == "dynamic"


# --- the flag table: sd-cli's, group by group, in sd-cli's order ------------------------
def _table() -> list[Opt]:
    o: list[Opt] = []

    def S(short, long, dest, desc, group, **kw):
        o.append(Opt(short, long, "string", dest, desc, group, **kw))

    def I(short, long, dest, desc, group, **kw):  # noqa: E741
        o.append(Opt(short, long, "int", dest, desc, group, parse=_int, **kw))

    def F(short, long, dest, desc, group, **kw):
        o.append(Opt(short, long, "float", dest, desc, group, parse=_float, **kw))

    def B(short, long, dest, desc, group, value=True, **kw):
        o.append(Opt(short, long, "bool", dest, desc, group, value=value, takes_value=False, **kw))

    def M(short, long, dest, desc, group, parse=None, **kw):
        o.append(Opt(short, long, "manual", dest, desc, group, parse=parse,
                     takes_value=parse is not None, **kw))

    g = "cli"
    S("-o", "--output", "output_path", "path to write result image to. you can use printf-style %d format "
      "specifiers for image sequences (default: ./output.png) (eg. output_%03d.png). Single-file video outputs "
      "support .avi, .webm, and animated .webp", g)
    S("", "--image", "image_path", "path to the image to inspect (for metadata mode)", g, refuse=METADATA)
    S("", "--metadata-format", "metadata_format", "metadata output format, one of [text, json] (default: text)",
      g, refuse=METADATA)
    S("", "--preview-path", "preview_path", "path to write preview image to (default: ./preview.png). "
      "Multi-frame previews support .avi, .webm, and animated .webp", g)
    I("", "--preview-interval", "preview_interval", "interval in denoising steps between consecutive updates of "
      "the image preview file (default is 1, meaning updating at every step)", g)
    I("", "--output-begin-idx", "output_begin_idx", "starting index for output image sequence, must be "
      "non-negative (default 0 if specified %d in output path, 1 otherwise)", g)
    B("", "--canny", "canny_preprocess", "apply canny preprocessor (edge detection)", g)
    B("", "--convert-name", "convert_name", "convert tensor name (for convert mode)", g, refuse=CONVERT)
    B("-v", "--verbose", "verbose", "print extra info", g)
    B("", "--color", "color", "colors the logging tags according to level", g)
    B("", "--taesd-preview-only", "taesd_preview", "prevents usage of taesd for decoding the final image. "
      "(for use with --preview tae)", g)
    B("", "--preview-noisy", "preview_noisy", "enables previewing noisy inputs of the models rather than the "
      "denoised outputs", g)
    B("", "--metadata-raw", "metadata_raw", "include raw hex previews for unparsed metadata payloads", g,
      refuse=METADATA)
    B("", "--metadata-brief", "metadata_brief", "truncate long metadata text values in text output", g,
      refuse=METADATA)
    B("", "--metadata-all", "metadata_all", "include structural/container entries such as IHDR, IDAT, and "
      "non-metadata JPEG segments", g, refuse=METADATA)
    M("-M", "--mode", "mode", "run mode, one of [img_gen, vid_gen, upscale, convert, metadata], default: img_gen",
      g, parse=_choice("mode", MODES))
    M("", "--preview", "preview_method", "preview method. must be one of the following [none, proj, tae, vae] "
      "(default is none)", g, parse=_choice("preview method", PREVIEWS))
    M("-h", "--help", "help", "show this help message and exit", g)

    g = "ctx"
    S("-m", "--model", "model_path", "path to full model", g)
    S("", "--clip_l", "clip_l_path", "path to the clip-l text encoder", g)
    S("", "--clip_g", "clip_g_path", "path to the clip-g text encoder", g)
    S("", "--clip_vision", "clip_vision_path", "path to the clip-vision encoder", g)
    S("", "--t5xxl", "t5xxl_path", "path to the t5xxl text encoder", g)
    S("", "--llm", "llm_path", "path to the llm text encoder. For example: (qwenvl2.5 for qwen-image, "
      "mistral-small3.2 for flux2, ...)", g)
    S("", "--llm_vision", "llm_vision_path", "path to the llm vit", g)
    S("", "--qwen2vl", "llm_path", "alias of --llm. Deprecated.", g)
    S("", "--qwen2vl_vision", "llm_vision_path", "alias of --llm_vision. Deprecated.", g)
    S("", "--diffusion-model", "diffusion_model_path", "path to the standalone diffusion model", g)
    S("", "--high-noise-diffusion-model", "high_noise_diffusion_model_path",
      "path to the standalone high noise diffusion model", g)
    S("", "--vae", "vae_path", "path to standalone vae model", g)
    S("", "--taesd", "taesd_path", "path to taesd. Using Tiny AutoEncoder for fast decoding (low quality)", g)
    S("", "--tae", "taesd_path", "alias of --taesd", g)
    S("", "--control-net", "control_net_path", "path to control net model", g)
    S("", "--embd-dir", "embedding_dir", "embeddings directory", g)
    S("", "--lora-model-dir", "lora_model_dir", "lora model directory", g)
    S("", "--hires-upscalers-dir", "hires_upscalers_dir", "highres fix upscaler model directory", g)
    S("", "--tensor-type-rules", "tensor_type_rules",
      "weight type per tensor pattern (example: \"^vae\\.=f16,model\\.=q8_0\")", g)
    S("", "--photo-maker", "photo_maker_path", "path to PHOTOMAKER model", g)
    S("", "--upscale-model", "esrgan_path", "path to esrgan model.", g)
    I("-t", "--threads", "n_threads", "number of threads to use during computation (default: -1). If threads <= 0, "
      "then threads will be set to the number of CPU physical cores", g)
    I("", "--chroma-t5-mask-pad", "chroma_t5_mask_pad", "t5 mask pad size of chroma", g)
    I("", "--stream-prefetch-depth", "stream_prefetch_depth", "graph-cut segments whose weights --stream-layers "
      "copies ahead: 0 = synchronous copies, 1 (default)", g)
    F("", "--max-vram", "max_vram", "maximum VRAM budget in GiB for graph-cut segmented execution. "
      "0 disables graph splitting, < 0 means the free VRAM at startup minus |value| GiB", g)
    B("", "--force-sdxl-vae-conv-scale", "force_sdxl_vae_conv_scale", "force use of conv scale on sdxl vae", g)
    B("", "--offload-to-cpu", "offload_params_to_cpu", "place the weights in RAM to save VRAM, and automatically "
      "load them into VRAM when needed", g)
    B("", "--stream-layers", "stream_layers", "with --offload-to-cpu and --max-vram: copy the next graph-cut "
      "segment's weights to VRAM while the current one computes", g)
    B("", "--no-stream-residency", "stream_residency", "with --stream-layers: do not keep the leading segments' "
      "weights in VRAM across steps", g, value=False)
    B("", "--no-pin-offloaded-params", "pin_offloaded_params", "keep the --offload-to-cpu weights in pageable "
      "instead of pinned memory (slower copies, no overlap)", g, value=False)
    B("", "--mmap", "enable_mmap", "whether to memory-map model", g)
    B("", "--control-net-cpu", "control_net_cpu", "keep controlnet in cpu (for low vram)", g)
    B("", "--clip-on-cpu", "clip_on_cpu", "keep clip in cpu (for low vram)", g)
    B("", "--vae-on-cpu", "vae_on_cpu", "keep vae in cpu (for low vram)", g)
    B("", "--fa", "flash_attn", "use flash attention", g)
    B("", "--diffusion-fa", "diffusion_flash_attn", "use flash attention in the diffusion model only", g)
    B("", "--diffusion-conv-direct", "diffusion_conv_direct", "use ggml_conv2d_direct in the diffusion model", g)
    B("", "--vae-conv-direct", "vae_conv_direct", "use ggml_conv2d_direct in the vae model", g)
    B("", "--circular", "circular", "enable circular padding for convolutions", g)
    B("", "--circularx", "circular_x", "enable circular RoPE wrapping on x-axis (width) only", g)
    B("", "--circulary", "circular_y", "enable circular RoPE wrapping on y-axis (height) only", g)
    B("", "--chroma-disable-dit-mask", "chroma_use_dit_mask", "disable dit mask for chroma", g, value=False)
    B("", "--qwen-image-zero-cond-t", "qwen_image_zero_cond_t", "enable zero_cond_t for qwen image", g)
    B("", "--chroma-enable-t5-mask", "chroma_use_t5_mask", "enable t5 mask for chroma", g)
    M("", "--type", "wtype", "weight type (examples: f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K). "
      "If not specified, the default is the type of the weight file", g,
      parse=_c_enum("weight format", "str_to_sd_type", "SD_TYPE_COUNT"))
    M("", "--rng", "rng_type", "RNG, one of [std_default, cuda, cpu], default: cuda(sd-webui), cpu(comfyui)", g,
      parse=_c_enum("rng type", "str_to_rng_type", "RNG_TYPE_COUNT"))
    M("", "--sampler-rng", "sampler_rng_type", "sampler RNG, one of [std_default, cuda, cpu]. If not specified, "
      "use --rng", g, parse=_c_enum("sampler rng type", "str_to_rng_type", "RNG_TYPE_COUNT"))
    M("", "--prediction", "prediction", "prediction type override, one of [eps, v, edm_v, sd3_flow, flux_flow, "
      "flux2_flow]", g, parse=_c_enum("prediction type", "str_to_prediction", "PREDICTION_COUNT"))
    M("", "--lora-apply-mode", "lora_apply_mode", "the way to apply LoRA, one of [auto, immediately, at_runtime], "
      "default is auto. In auto mode, if the model weights contain any quantized parameters, the at_runtime mode "
      "will be used; otherwise, immediately will be used.The immediately mode may have precision and "
      "compatibility issues with quantized parameters, but it usually offers faster inference speed and, in some "
      "cases, lower memory usage. The at_runtime mode, on the other hand, is exactly the opposite.", g,
      parse=_c_enum("lora apply model", "str_to_lora_apply_mode", "LORA_APPLY_MODE_COUNT"))

    g = "gen"
    S("-p", "--prompt", "prompt", "the prompt to render", g)
    S("-n", "--negative-prompt", "negative_prompt", "the negative prompt (default: \"\")", g)
    S("-i", "--init-img", "init_image_path", "path to the init image", g)
    S("", "--end-img", "end_image_path", "path to the end image, required by flf2v", g, refuse=VIDEO)
    S("", "--mask", "mask_image_path", "path to the mask image", g)
    S("", "--control-image", "control_image_path", "path to control image, control net", g)
    S("", "--control-video", "control_video_path", "path to control video frames, It must be a directory path. "
      "The video frames inside should be stored as images in lexicographical (character) order. For example, if "
      "the control video path is `frames`, the directory contain images such as 00.png, 01.png, ... etc.", g,
      refuse=VIDEO)
    S("", "--pm-id-images-dir", "pm_id_images_dir", "path to PHOTOMAKER input id images dir", g)
    S("", "--pm-id-embed-path", "pm_id_embed_path", "path to PHOTOMAKER v2 id embed", g)
    S("", "--hires-upscaler", "hires_upscaler", "highres fix upscaler, Lanczos, Nearest, Latent, Latent (nearest), "
      "Latent (nearest-exact), Latent (antialiased), Latent (bicubic), Latent (bicubic antialiased), or a model "
      "name under --hires-upscalers-dir (default: Latent)", g)
    I("-H", "--height", "height", "image height, in pixel space (default: 512)", g)
    I("-W", "--width", "width", "image width, in pixel space (default: 512)", g)
    I("", "--steps", "steps", "number of sample steps (default: 20)", g)
    I("", "--high-noise-steps", "high_noise_steps", "(high noise) number of sample steps (default: -1 = auto)", g,
      refuse=HIGH_NOISE)
    I("", "--clip-skip", "clip_skip", "ignore last layers of CLIP network; 1 ignores none, 2 ignores one layer "
      "(default: -1). <= 0 represents unspecified, will be 1 for SD1.x, 2 for SD2.x", g)
    I("-b", "--batch-count", "batch_count", "batch count", g)
    I("", "--video-frames", "video_frames", "video frames (default: 1)", g, refuse=VIDEO)
    I("", "--fps", "fps", "fps (default: 24)", g, refuse=VIDEO)
    I("", "--timestep-shift", "timestep_shift", "shift timestep for NitroFusion models (default: 0). recommended N "
      "for NitroSD-Realism around 250 and 500 for NitroSD-Vibrant", g)
    I("", "--upscale-repeats", "upscale_repeats", "Run the ESRGAN upscaler this many times (default: 1)", g)
    I("", "--upscale-tile-size", "upscale_tile_size", "tile size for ESRGAN upscaling (default: 128)", g)
    I("", "--hires-width", "hires_width", "highres fix target width, 0 to use --hires-scale (default: 0)", g)
    I("", "--hires-height", "hires_height", "highres fix target height, 0 to use --hires-scale (default: 0)", g)
    I("", "--hires-steps", "hires_steps", "highres fix second pass sample steps, 0 to reuse --steps (default: 0)", g)
    I("", "--hires-upscale-tile-size", "hires_upscale_tile_size", "highres fix upscaler tile size, reserved for "
      "model-backed upscalers (default: 128)", g)
    F("", "--cfg-scale", "cfg_scale", "unconditional guidance scale: (default: 7.0)", g)
    F("", "--img-cfg-scale", "img_cfg_scale", "image guidance scale for inpaint or instruct-pix2pix models: "
      "(default: same as --cfg-scale)", g)
    F("", "--guidance", "guidance", "distilled guidance scale for models with guidance input (default: 3.5)", g)
    F("", "--slg-scale", "slg_scale", "skip layer guidance (SLG) scale, only for DiT models: (default: 0). 0 means "
      "disabled, a value of 2.5 is nice for sd3.5 medium", g)
    F("", "--skip-layer-start", "skip_layer_start", "SLG enabling point (default: 0.01)", g)
    F("", "--skip-layer-end", "skip_layer_end", "SLG disabling point (default: 0.2)", g)
    F("", "--eta", "eta", "noise multiplier (default: 0 for ddim_trailing, tcd, res_multistep and res_2s; 1 for "
      "euler_a, er_sde and dpm++2s_a)", g)
    F("", "--flow-shift", "flow_shift", "shift value for Flow models like SD3.x or WAN (default: auto)", g)
    F("", "--high-noise-cfg-scale", "high_noise_cfg_scale", "(high noise) unconditional guidance scale: "
      "(default: 7.0)", g, refuse=HIGH_NOISE)
    F("", "--high-noise-img-cfg-scale", "high_noise_img_cfg_scale", "(high noise) image guidance scale for inpaint "
      "or instruct-pix2pix models (default: same as --cfg-scale)", g, refuse=HIGH_NOISE)
    F("", "--high-noise-guidance", "high_noise_guidance", "(high noise) distilled guidance scale for models with "
      "guidance input (default: 3.5)", g, refuse=HIGH_NOISE)
    F("", "--high-noise-slg-scale", "high_noise_slg_scale", "(high noise) skip layer guidance (SLG) scale, only for "
      "DiT models: (default: 0)", g, refuse=HIGH_NOISE)
    F("", "--high-noise-skip-layer-start", "high_noise_skip_layer_start", "(high noise) SLG enabling point "
      "(default: 0.01)", g, refuse=HIGH_NOISE)
    F("", "--high-noise-skip-layer-end", "high_noise_skip_layer_end", "(high noise) SLG disabling point "
      "(default: 0.2)", g, refuse=HIGH_NOISE)
    F("", "--high-noise-eta", "high_noise_eta", "(high noise) noise multiplier (default: 0 for ddim_trailing, tcd, "
      "res_multistep and res_2s; 1 for euler_a, er_sde and dpm++2s_a)", g, refuse=HIGH_NOISE)
    F("", "--strength", "strength", "strength for noising/unnoising (default: 0.75)", g)
    F("", "--pm-style-strength", "pm_style_strength", "", g)
    F("", "--control-strength", "control_strength", "strength to apply Control Net (default: 0.9). 1.0 corresponds "
      "to full destruction of information in init image", g)
    F("", "--moe-boundary", "moe_boundary", "timestep boundary for Wan2.2 MoE model. (default: 0.875). Only "
      "enabled if `--high-noise-steps` is set to -1", g, refuse=HIGH_NOISE)
    F("", "--vace-strength", "vace_strength", "wan vace strength", g, refuse=VIDEO)
    F("", "--vae-tile-overlap", "vae_tile_overlap", "tile overlap for vae tiling, in fraction of tile size "
      "(default: 0.5)", g)
    F("", "--hires-scale", "hires_scale", "highres fix scale when target size is not set (default: 2.0)", g)
    F("", "--hires-denoising-strength", "hires_denoising_strength", "highres fix second pass denoising strength "
      "(default: 0.7)", g)
    B("", "--increase-ref-index", "increase_ref_index", "automatically increase the indices of references images "
      "based on the order they are listed (starting with 1).", g)
    B("", "--disable-auto-resize-ref-image", "auto_resize_ref_image", "disable auto resize of ref images", g,
      value=False)
    B("", "--disable-image-metadata", "embed_image_metadata", "do not embed generation metadata on image files", g,
      value=False)
    B("", "--vae-tiling", "vae_tiling", "process vae in tiles to reduce memory usage", g)
    B("", "--hires", "hires_enabled", "enable highres fix", g)
    M("-s", "--seed", "seed", "RNG seed (default: 42, use random seed for < 0)", g,
      parse=lambda t: _int(t, 64))
    M("", "--sampling-method", "sampling_method", "sampling method, one of [euler, euler_a, heun, dpm2, dpm++2s_a, "
      "dpm++2m, dpm++2mv2, ipndm, ipndm_v, lcm, ddim_trailing, tcd, res_multistep, res_2s, er_sde] (default: euler "
      "for Flux/SD3/Wan, euler_a otherwise)", g,
      parse=_c_enum("sample method", "str_to_sample_method", "SAMPLE_METHOD_COUNT"))
    M("", "--high-noise-sampling-method", "high_noise_sampling_method", "(high noise) sampling method, one of "
      "[euler, euler_a, heun, dpm2, dpm++2s_a, dpm++2m, dpm++2mv2, ipndm, ipndm_v, lcm, ddim_trailing, tcd, "
      "res_multistep, res_2s, er_sde] default: euler for Flux/SD3/Wan, euler_a otherwise", g,
      parse=_c_enum("high noise sample method", "str_to_sample_method", "SAMPLE_METHOD_COUNT"), refuse=HIGH_NOISE)
    M("", "--scheduler", "scheduler", "denoiser sigma scheduler, one of [discrete, karras, exponential, ays, gits, "
      "smoothstep, sgm_uniform, simple, kl_optimal, lcm, bong_tangent], default: discrete", g,
      parse=_c_enum("scheduler", "str_to_scheduler", "SCHEDULER_COUNT"))
    M("", "--sigmas", "sigmas", "custom sigma values for the sampler, comma-separated (e.g., "
      "\"14.61,7.8,3.5,0.0\").", g, parse=_sigmas)
    M("", "--skip-layers", "skip_layers", "layers to skip for SLG steps (default: [7,8,9])", g, parse=_layers)
    M("", "--high-noise-skip-layers", "high_noise_skip_layers", "(high noise) layers to skip for SLG steps "
      "(default: [7,8,9])", g, parse=_layers, refuse=HIGH_NOISE)
    M("-r", "--ref-image", "ref_image_paths", "reference image for Flux Kontext models (can be used multiple "
      "times)", g, parse=str, append=True)
    M("", "--cache-mode", "cache_mode", "caching method: 'easycache' (DiT), 'ucache' (UNET), "
      "'dbcache'/'taylorseer'/'cache-dit' (DiT block-level), 'spectrum' (UNET/DiT Chebyshev+Taylor forecasting)",
      g, parse=_choice("cache mode", CACHE_MODES))
    M("", "--cache-option", "cache_option", "named cache params (key=value format, comma-separated). "
      "easycache/ucache: threshold=,start=,end=,decay=,relative=,reset=; dbcache/taylorseer/cache-dit: "
      "Fn=,Bn=,threshold=,warmup=; spectrum: w=,m=,lam=,window=,flex=,warmup=,stop=. Examples: \"threshold=0.25\" "
      "or \"threshold=1.5,reset=0\"", g, parse=str)
    M("", "--scm-mask", "scm_mask", "SCM steps mask for cache-dit: comma-separated 0/1 (e.g., "
      "\"1,1,1,0,0,1,0,0,1,0\") - 1=compute, 0=can cache", g, parse=str)
    M("", "--scm-policy", "scm_policy_dynamic", "SCM policy: 'dynamic' (default) or 'static'", g,
      parse=_scm_policy)
    M("", "--vae-tile-size", "vae_tile_size", "tile size for vae tiling, format [X]x[Y] (default: 32x32)", g,
      parse=_pair(_int))
    M("", "--vae-relative-tile-size", "vae_relative_tile_size", "relative tile size for vae tiling, format [X]x[Y], "
      "in fraction of image size if < 1, in number of tiles per dim if >=1 (overrides --vae-tile-size)", g,
      parse=_pair(_float))

    g = "pysdcpp"
    B("", "--no-pin-params", "pin_offloaded_params", "alias of --no-pin-offloaded-params", g, value=False)

    g = "server"
    S("-l", "--listen-ip", "listen_ip", "server listen ip (default: 127.0.0.1)", g, refuse=SERVER)
    S("", "--serve-html-path", "serve_html_path", "path to HTML file to serve at root (optional)", g, refuse=SERVER)
    I("", "--listen-port", "listen_port", "server listen port (default: 1234)", g, refuse=SERVER)
    return o


OPTIONS = _table()
BY_NAME = {name: opt for opt in OPTIONS for name in opt.names}

# sd-cli's defaults (SDCliParams, SDContextParams, SDGenerationParams)
DEFAULTS: dict[str, Any] = dict(
    mode="img_gen", output_path="output.png", output_begin_idx=-1, image_path="", metadata_format="text",
    verbose=False, canny_preprocess=False, convert_name=False, preview_method="none", preview_interval=1,
    preview_path="preview.png", taesd_preview=False, preview_noisy=False, color=False, help=False,
    # context
    n_threads=-1, model_path="", clip_l_path="", clip_g_path="", clip_vision_path="", t5xxl_path="", llm_path="",
    llm_vision_path="", diffusion_model_path="", high_noise_diffusion_model_path="", vae_path="", taesd_path="",
    esrgan_path="", control_net_path="", embedding_dir="", photo_maker_path="", wtype=None, tensor_type_rules="",
    lora_model_dir=".", hires_upscalers_dir="", rng_type=None, sampler_rng_type=None, offload_params_to_cpu=False,
    max_vram=0.0, enable_mmap=False, control_net_cpu=False, clip_on_cpu=False, vae_on_cpu=False, flash_attn=False,
    diffusion_flash_attn=False, diffusion_conv_direct=False, vae_conv_direct=False, circular=False,
    circular_x=False, circular_y=False, chroma_use_dit_mask=True, chroma_use_t5_mask=False, chroma_t5_mask_pad=1,
    qwen_image_zero_cond_t=False, pin_offloaded_params=True, stream_layers=False, stream_prefetch_depth=1,
    stream_residency=True, prediction=None, lora_apply_mode=None, force_sdxl_vae_conv_scale=False,
    # generation
    prompt="", negative_prompt="", clip_skip=-1, width=-1, height=-1, batch_count=1, seed=42, strength=0.75,
    control_strength=float(np.float32(0.9)), auto_resize_ref_image=True, increase_ref_index=False,
    embed_image_metadata=True, init_image_path="", mask_image_path="", control_image_path="", ref_image_paths=[],
    steps=20, cfg_scale=7.0, img_cfg_scale=math.inf, guidance=3.5, slg_scale=0.0,
    skip_layer_start=float(np.float32(0.01)), skip_layer_end=float(np.float32(0.2)), eta=math.inf,
    timestep_shift=0, flow_shift=math.inf, sampling_method=None, scheduler=None, sigmas=[], skip_layers=[7, 8, 9],
    cache_mode="", cache_option="", scm_mask="", scm_policy_dynamic=True, vae_tiling=False, vae_tile_size=(0, 0),
    vae_tile_overlap=0.5, vae_relative_tile_size=(0.0, 0.0), pm_id_images_dir="", pm_id_embed_path="",
    pm_style_strength=20.0, upscale_repeats=1, upscale_tile_size=128, hires_enabled=False,
    hires_upscaler="Latent", hires_scale=2.0, hires_width=0, hires_height=0, hires_steps=0,
    hires_denoising_strength=float(np.float32(0.7)), hires_upscale_tile_size=128,
)


# --- parsing ---------------------------------------------------------------------------
def parse_args(argv: list[str], by_name: dict[str, Opt] | None = None) -> tuple[dict[str, Any], list[Opt]]:
    """sd-cli's parse_options: exact names, one value per value-taking flag.
    Returns the values and the options given, in order.  `by_name`: another
    option table (pysdcpp-server's) instead of sd-cli's."""
    by_name = BY_NAME if by_name is None else by_name
    values = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}
    given: list[Opt] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        opt = by_name.get(arg)
        if opt is None:
            raise UsageError(f"unknown argument: {arg}")
        given.append(opt)
        if opt.long == "--help":
            values["help"] = True
            i += 1
            continue
        if opt.takes_value:
            if i + 1 >= len(argv):
                raise UsageError(f"invalid parameter for argument: {arg} (missing value)")
            text = argv[i + 1]
            try:
                value = opt.parse(text) if opt.parse is not None else text
            except UsageError as exc:
                raise UsageError(f"invalid parameter for argument: {arg}: {exc}") from None
            i += 2
        else:
            value = opt.value
            i += 1
        if opt.append:
            values[opt.dest].append(value)
        else:
            values[opt.dest] = value
    return values, given


USAGE_TITLES = {"cli": "CLI Options:", "ctx": "Context Options:", "gen": "Generation Options:",
                "pysdcpp": "pysdcpp Options:", "server": "sd-server Options (accepted, refused: use pysdcpp-server):"}


def usage(prog: str = PROG, titles: dict[str, str] = USAGE_TITLES, options: list[Opt] = OPTIONS) -> str:
    from . import __version__

    lines = [f"pysdcpp {__version__} ({_version_string()})", f"Usage: {prog} [options]", ""]
    for group, title in titles.items():
        opts = [o for o in options if o.group == group]
        order = {"string": 0, "int": 1, "float": 2, "bool": 3, "manual": 4}
        opts.sort(key=lambda o: order[o.kind])
        names = []
        for o in opts:
            n = ", ".join(o.names)
            hint = {"string": " <string>", "int": " <int>", "float": " <float>"}.get(o.kind, "")
            names.append(n + hint)
        width = max(len(n) for n in names)
        lines.append(title)
        indent = 2 + width + 4
        import textwrap

        for n, o in zip(names, opts):
            desc = o.desc + (" [refused: not supported by pysdcpp]" if o.refuse else "")
            wrapped = textwrap.wrap(desc, max(40, 120 - indent)) or [""]
            lines.append("  " + n.ljust(width + 4) + wrapped[0])
            lines.extend(" " * indent + w for w in wrapped[1:])
        lines.append("")
    return "\n".join(lines)


def _version_string() -> str:
    from ._native import ffi, lib

    return (f"stable-diffusion.cpp version {ffi.string(lib.sd_version()).decode()}, "
            f"commit {ffi.string(lib.sd_commit()).decode()}")


def _check_supported(p: dict, given: list[Opt]) -> None:
    """Refuse, with one line, what pysdcpp does not run (never ignore it)."""
    mode = p["mode"]
    if mode == "vid_gen":
        raise UsageError(VIDEO)
    if mode == "convert":
        raise UsageError(CONVERT)
    if mode == "metadata":
        raise UsageError(METADATA)
    for opt in given:
        if opt.refuse:
            reason = opt.refuse
            raise UsageError(f"{opt.long} {reason}" if reason.startswith("is ") else f"{opt.long}: {reason}")
        if opt.long in STREAM_FIELDS:
            from ._params import CTX

            field = STREAM_FIELDS[opt.long]
            if field not in CTX.leaves:
                raise UsageError(f"{opt.long}: this pysdcpp build has no weight streaming "
                                 f"(sd_ctx_params_t has no `{field}` field)")


def _validate(p: dict) -> None:
    """sd-cli's resolve_and_validate (SDCliParams, SDContextParams, SDGenerationParams)."""
    from ._native import lib

    mode = p["mode"]
    if not p["output_path"]:
        raise UsageError("the following arguments are required: output_path")
    if mode != "upscale" and not p["model_path"] and not p["diffusion_model_path"]:
        raise UsageError("the following arguments are required: model_path/diffusion_model")
    if mode == "upscale" and not p["esrgan_path"]:
        raise UsageError("upscale mode needs an upscaler model (--upscale-model)")
    if p["n_threads"] <= 0:
        p["n_threads"] = lib.sd_get_num_physical_cores()
    _init_cache_params(p)
    if p["seed"] < 0:
        p["seed"] = random.randrange(1 << 31)
    if p["batch_count"] <= 0:
        raise UsageError("batch_count must be greater than 0")
    if p["steps"] <= 0:
        raise UsageError("the sample_steps must be greater than 0")
    if not 0.0 <= p["strength"] <= 1.0:
        raise UsageError("can only work with strength in [0.0, 1.0]")
    if p["cfg_scale"] < 0:
        raise UsageError("cfg_scale must be positive")
    if p["cache_mode"] in ("easycache", "ucache"):
        c = p["cache"]
        if c["reuse_threshold"] < 0:
            raise UsageError("cache threshold must be non-negative")
        if not (0.0 <= c["start_percent"] < 1.0 and 0.0 < c["end_percent"] <= 1.0
                and c["start_percent"] < c["end_percent"]):
            raise UsageError("cache start/end percents must satisfy 0.0 <= start < end <= 1.0")
    if not 0 <= p["timestep_shift"] <= 1000:
        raise UsageError("shifted_timestep must be in range [0, 1000]")
    if p["upscale_repeats"] < 1:
        raise UsageError("--upscale-repeats must be at least 1")
    if p["upscale_tile_size"] < 1:
        raise UsageError("--upscale-tile-size must be at least 1")
    p["hires_model_path"] = ""
    p["hires_upscaler_value"] = lib.SD_HIRES_UPSCALER_LATENT
    if p["hires_enabled"]:
        if not p["hires_upscaler"]:
            p["hires_upscaler"] = "Latent"
        value = lib.str_to_sd_hires_upscaler(p["hires_upscaler"].encode())
        if value == lib.SD_HIRES_UPSCALER_NONE:
            p["hires_enabled"] = False
            value = lib.SD_HIRES_UPSCALER_LATENT  # unused: hires is off
        elif value == lib.SD_HIRES_UPSCALER_COUNT:
            p["hires_model_path"] = _resolve_hires_model(p["hires_upscaler"], p["hires_upscalers_dir"])
            value = lib.SD_HIRES_UPSCALER_MODEL
        p["hires_upscaler_value"] = int(value)
    if p["hires_enabled"]:
        if p["hires_width"] < 0 or p["hires_height"] < 0:
            raise UsageError("hires target width and height must be >= 0")
        if p["hires_scale"] <= 0 and p["hires_width"] <= 0 and p["hires_height"] <= 0:
            raise UsageError("hires scale must be positive when target size is not set")
        if p["hires_steps"] < 0:
            raise UsageError("hires steps must be >= 0")
        if not 0.0 < p["hires_denoising_strength"] <= 1.0:
            raise UsageError("hires denoising strength must be in (0.0, 1.0]")
        if p["hires_upscale_tile_size"] < 1:
            raise UsageError("hires upscale tile size must be positive")
    if mode == "upscale" and not p["init_image_path"]:
        raise UsageError("upscale mode needs an init image (--init-img)")
    if p["mask_image_path"] and not p["init_image_path"]:
        raise UsageError("--mask needs an init image (-i/--init-img)")
    p["prompt_with_lora"] = p["prompt"]
    p["lora_map"], p["high_noise_lora_map"] = {}, {}
    if p["lora_model_dir"]:
        _extract_loras(p)
    if p["high_noise_lora_map"]:
        raise UsageError("<lora:|high_noise|...> in the prompt " + HIGH_NOISE)


def _resolve_hires_model(name: str, model_dir: str) -> str:
    if not model_dir:
        raise UsageError("hires upscaler directory is empty (--hires-upscalers-dir)")
    if not name or "/" in name or "\\" in name or Path(name).is_absolute() or Path(name).suffix:
        raise UsageError(f"hires upscaler must be a model name without path or extension: {name}")
    for ext in (".gguf", ".safetensors", ".pt", ".pth"):
        path = Path(model_dir) / (name + ext)
        if path.is_file():
            return os.path.normpath(str(path))
    raise UsageError(f"can not find hires upscaler {name} in {os.path.normpath(model_dir)}")


_LORA_RE = re.compile(r"<lora:([^:>]+):([^>]+)>")


def _c_float_prefix(text: str) -> float | None:
    m = re.match(r"\s*[+-]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)", text, re.I)
    return float(np.float32(float(m.group(0)))) if m else None


def _extract_loras(p: dict) -> None:
    """sd-cli's extract_and_remove_lora: ``<lora:name:multiplier>`` tags of the prompt."""
    prompt = p["prompt"]
    tmp = prompt
    log = logging.getLogger("pysdcpp")
    while True:
        m = _LORA_RE.search(tmp)
        if not m:
            break
        raw_path, raw_mul = m.group(1), m.group(2)
        mul = _c_float_prefix(raw_mul)
        prompt = _LORA_RE.sub("", prompt, count=1)
        tmp = tmp[m.end():]
        if mul is None:
            continue
        high = raw_path.startswith("|high_noise|")
        if high:
            raw_path = raw_path[len("|high_noise|"):]
        final = raw_path if raw_path.startswith("/") else os.path.join(p["lora_model_dir"], raw_path)
        if not os.path.exists(final):
            for ext in (".gguf", ".safetensors", ".pt"):
                if os.path.exists(final + ext):
                    final += ext
                    break
            else:
                log.warning("can not found lora %s", os.path.normpath(final))
                continue
        key = os.path.normpath(final)
        target = p["high_noise_lora_map"] if high else p["lora_map"]
        target[key] = float(np.float32(target.get(key, 0.0) + mul))
    p["prompt"] = prompt


def _init_cache_params(p: dict) -> None:
    """sd-cli's initialize_cache_params: --cache-mode / --cache-option / --scm-* into sd_cache_params_t."""
    from ._params import IMG_GEN

    defaults = IMG_GEN.defaults()
    c = {k[len("cache_"):]: v for k, v in defaults.items() if k.startswith("cache_")}
    c["mode"] = "disabled"
    mode = p["cache_mode"]
    if mode:
        c["mode"] = mode
    if p["cache_option"]:
        for token in p["cache_option"].split(","):
            if "=" not in token:
                raise UsageError(f"cache option '{token}' missing '=' separator")
            key, val = token.split("=", 1)
            try:
                if key == "threshold":
                    c["reuse_threshold" if mode in ("easycache", "ucache") else "residual_diff_threshold"] = _float(val)
                elif key == "start":
                    c["start_percent"] = _float(val)
                elif key == "end":
                    c["end_percent"] = _float(val)
                elif key == "decay":
                    c["error_decay_rate"] = _float(val)
                elif key == "relative":
                    c["use_relative_threshold"] = _float(val) != 0.0
                elif key == "reset":
                    c["reset_error_on_compute"] = _float(val) != 0.0
                elif key in ("Fn", "fn"):
                    c["Fn_compute_blocks"] = _int(val)
                elif key in ("Bn", "bn"):
                    c["Bn_compute_blocks"] = _int(val)
                elif key == "warmup":
                    c["spectrum_warmup_steps" if mode == "spectrum" else "max_warmup_steps"] = _int(val)
                elif key == "w":
                    c["spectrum_w"] = _float(val)
                elif key == "m":
                    c["spectrum_m"] = _int(val)
                elif key == "lam":
                    c["spectrum_lam"] = _float(val)
                elif key == "window":
                    c["spectrum_window_size"] = _int(val)
                elif key == "flex":
                    c["spectrum_flex_window"] = _float(val)
                elif key == "stop":
                    c["spectrum_stop_percent"] = _float(val)
                else:
                    raise UsageError(f"unknown cache parameter '{key}'")
            except UsageError as exc:
                if "unknown cache parameter" in str(exc):
                    raise
                raise UsageError(f"invalid value '{val}' for parameter '{key}'") from None
    if mode in ("dbcache", "taylorseer", "cache-dit"):
        c["scm_policy_dynamic"] = p["scm_policy_dynamic"]
    p["cache"] = c


# --- images in (sd-cli's load_image_common) --------------------------------------------
def _load_image(path: str, channels: int = 3, width: int = 0, height: int = 0) -> np.ndarray:
    """An HxWxC uint8 array as stb_image loads it; cropped to the aspect ratio and resized
    when `width`/`height` are given and differ (sd-cli uses stb_image_resize's box filter;
    pysdcpp uses Pillow's box filter, so a resized image may differ by rounding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if channels == 1:
                if im.mode in ("L", "LA", "I;16", "I", "1"):
                    arr = np.asarray(im.convert("L"), dtype=np.uint8)
                else:
                    rgb = np.asarray(im.convert("RGB"), dtype=np.uint32)
                    # stb_image's luma: (r*77 + g*150 + b*29) >> 8
                    arr = ((rgb[..., 0] * 77 + rgb[..., 1] * 150 + rgb[..., 2] * 29) >> 8).astype(np.uint8)
                arr = arr[:, :, None]
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise RunError(f"load image from '{path}' failed: {exc}") from None
    h, w = arr.shape[:2]
    if width > 0 and height > 0 and (w, h) != (width, height):
        dst_aspect = np.float32(width) / np.float32(height)
        src_aspect = np.float32(w) / np.float32(h)
        cx, cy, cw, ch = 0, 0, w, h
        if src_aspect > dst_aspect:
            cw = int(np.float32(h) * dst_aspect)
            cx = (w - cw) // 2
        elif src_aspect < dst_aspect:
            ch = int(np.float32(w) / dst_aspect)
            cy = (h - ch) // 2
        arr = arr[cy:cy + ch, cx:cx + cw]
        logging.getLogger("pysdcpp").info("resize input image from %dx%d to %dx%d", cw, ch, width, height)
        mode = "L" if channels == 1 else "RGB"
        im = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if channels == 1 else arr), mode)
        arr = np.asarray(im.resize((width, height), Image.BOX), dtype=np.uint8)
        if channels == 1:
            arr = arr[:, :, None]
    return np.ascontiguousarray(arr)


def _images_from_dir(path: str) -> list[np.ndarray]:
    if not os.path.isdir(path):
        raise RunError(f"'{path}' is not a valid directory")
    files = sorted((e for e in os.scandir(path) if e.is_file()), key=lambda e: e.name)
    return [_load_image(e.path) for e in files
            if os.path.splitext(e.name)[1].lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp")]


# --- metadata (sd-cli's get_image_params / build_sdcpp_image_metadata_json) --------------
def _basename(path: str) -> str:
    for sep in ("/", "\\"):
        pos = path.rfind(sep)
        if pos != -1:
            return path[pos + 1:]
    return path


def _json(value) -> str:
    """nlohmann::json's dump(): keys sorted, no spaces, non-finite floats as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json(k)}:{_json(value[k])}" for k in sorted(value)) + "}"
    raise TypeError(type(value))


def _name(fn: str, value) -> str:
    from ._native import ffi, lib

    return ffi.string(getattr(lib, fn)(value)).decode()


def _f(x: float) -> str:
    """std::to_string(float)."""
    return "%f" % x


def _sampling_json(p: dict) -> dict:
    d = {
        "steps": p["steps"], "eta": p["eta"], "shifted_timestep": p["timestep_shift"], "flow_shift": p["flow_shift"],
        "guidance": {"txt_cfg": p["cfg_scale"], "img_cfg": p["img_cfg_scale"], "distilled_guidance": p["guidance"],
                     "slg": {"scale": p["slg_scale"], "layers": list(p["skip_layers"]),
                             "start": p["skip_layer_start"], "end": p["skip_layer_end"]}},
        "custom_sigmas": list(p["sigmas"]),
    }
    if p["sampling_method"] is not None:
        d["method"] = _name("sd_sample_method_name", p["sampling_method"])
    if p["scheduler"] is not None:
        d["scheduler"] = _name("sd_scheduler_name", p["scheduler"])
    return d


def _cache_mode_value(mode: str) -> int:
    from ._native import lib

    return int({"disabled": lib.SD_CACHE_DISABLED, "easycache": lib.SD_CACHE_EASYCACHE,
                "ucache": lib.SD_CACHE_UCACHE, "dbcache": lib.SD_CACHE_DBCACHE,
                "taylorseer": lib.SD_CACHE_TAYLORSEER, "cache-dit": lib.SD_CACHE_CACHE_DIT,
                "spectrum": lib.SD_CACHE_SPECTRUM}[mode])


def metadata_json(p: dict, seed: int) -> str:
    from ._native import ffi, lib

    root: dict[str, Any] = {
        "schema": "sdcpp.image.params/v1", "mode": "img_gen",
        "generator": {"name": "stable-diffusion.cpp", "version": ffi.string(lib.sd_version()).decode(),
                      "commit": ffi.string(lib.sd_commit()).decode()},
        "seed": seed, "width": _resolved(p["width"]), "height": _resolved(p["height"]),
        "prompt": {"positive": p["prompt"], "negative": p["negative_prompt"]},
        "sampling": _sampling_json(p),
    }
    models = {}
    for key, dest in (("model", "model_path"), ("clip_l", "clip_l_path"), ("clip_g", "clip_g_path"),
                      ("clip_vision", "clip_vision_path"), ("t5xxl", "t5xxl_path"), ("llm", "llm_path"),
                      ("llm_vision", "llm_vision_path"), ("diffusion_model", "diffusion_model_path"),
                      ("high_noise_diffusion_model", "high_noise_diffusion_model_path"), ("vae", "vae_path"),
                      ("taesd", "taesd_path"), ("control_net", "control_net_path")):
        if p[dest]:
            models[key] = _basename(p[dest])
    root["models"] = models if models else None
    root.update(clip_skip=p["clip_skip"], strength=p["strength"], control_strength=p["control_strength"],
                auto_resize_ref_image=p["auto_resize_ref_image"], increase_ref_index=p["increase_ref_index"])
    root["rng"] = _name("sd_rng_type_name", p["rng_type"] if p["rng_type"] is not None else lib.CUDA_RNG)
    if p["sampler_rng_type"] is not None:
        root["sampler_rng"] = _name("sd_rng_type_name", p["sampler_rng_type"])
    loras = [{"name": _basename(k), "multiplier": v, "is_high_noise": False} for k, v in sorted(p["lora_map"].items())]
    if loras:
        root["loras"] = loras
    if p["hires_enabled"]:
        root["hires"] = {
            "enabled": True, "upscaler": p["hires_upscaler"],
            "model": _basename(p["hires_model_path"]) if p["hires_model_path"] else "",
            "scale": p["hires_scale"], "target_width": p["hires_width"], "target_height": p["hires_height"],
            "steps": p["hires_steps"], "denoising_strength": p["hires_denoising_strength"],
            "upscale_tile_size": p["hires_upscale_tile_size"],
        }
    c = p["cache"]
    if c["mode"] != "disabled":
        root["cache"] = {
            "requested_mode": p["cache_mode"], "requested_option": p["cache_option"],
            "mode": _cache_mode_value(c["mode"]), "scm_mask": p["scm_mask"],
            "scm_policy_dynamic": p["scm_policy_dynamic"],
            **{k: c[k] for k in ("reuse_threshold", "start_percent", "end_percent", "error_decay_rate",
                                 "use_relative_threshold", "reset_error_on_compute", "Fn_compute_blocks",
                                 "Bn_compute_blocks", "residual_diff_threshold", "max_warmup_steps",
                                 "max_cached_steps", "max_continuous_cached_steps", "taylorseer_n_derivatives",
                                 "taylorseer_skip_interval", "spectrum_w", "spectrum_m", "spectrum_lam",
                                 "spectrum_window_size", "spectrum_flex_window", "spectrum_warmup_steps",
                                 "spectrum_stop_percent")},
        }
    if p["vae_tiling"]:
        (tx, ty), (rx, ry) = p["vae_tile_size"], p["vae_relative_tile_size"]
        root["vae_tiling"] = {"enabled": True, "tile_size_x": tx, "tile_size_y": ty,
                              "target_overlap": p["vae_tile_overlap"], "rel_size_x": rx, "rel_size_y": ry}
    return _json(root)


def _resolved(v: int) -> int:
    return v if v > 0 else 512


def image_parameters(p: dict, seed: int) -> str:
    """The PNG ``parameters`` text, as sd-cli's get_image_params writes it."""
    from ._native import lib

    s = (p["prompt_with_lora"] or p["prompt"]) + "\n"
    if p["negative_prompt"]:
        s += "Negative prompt: " + p["negative_prompt"] + "\n"
    s += f"Steps: {p['steps']}, "
    s += f"CFG scale: {_f(p['cfg_scale'])}, "
    if p["slg_scale"] != 0 and p["skip_layers"]:
        s += f"SLG scale: {_f(p['slg_scale'])}, "
        s += "Skip layers: [" + "".join(f"{x}, " for x in p["skip_layers"]) + "], "
        s += f"Skip layer start: {_f(p['skip_layer_start'])}, "
        s += f"Skip layer end: {_f(p['skip_layer_end'])}, "
    s += f"Guidance: {_f(p['guidance'])}, "
    s += f"Eta: {_f(p['eta'])}, "
    s += f"Seed: {seed}, "
    s += f"Size: {_resolved(p['width'])}x{_resolved(p['height'])}, "
    s += "Model: " + _basename(p["model_path"]) + ", "
    s += "RNG: " + _name("sd_rng_type_name", p["rng_type"] if p["rng_type"] is not None else lib.CUDA_RNG) + ", "
    if p["sampler_rng_type"] is not None:
        s += "Sampler RNG: " + _name("sd_rng_type_name", p["sampler_rng_type"]) + ", "
    method = p["sampling_method"] if p["sampling_method"] is not None else lib.SAMPLE_METHOD_COUNT
    s += "Sampler: " + _name("sd_sample_method_name", method)
    if p["sigmas"]:
        s += ", Custom Sigmas: [" + ", ".join("%.4f" % x for x in p["sigmas"]) + "]"
    elif p["scheduler"] is not None:
        s += " " + _name("sd_scheduler_name", p["scheduler"])
    s += ", "
    for te in (p["clip_l_path"], p["clip_g_path"], p["t5xxl_path"], p["llm_path"], p["llm_vision_path"]):
        if te:
            s += "TE: " + _basename(te) + ", "
    if p["diffusion_model_path"]:
        s += "Unet: " + _basename(p["diffusion_model_path"]) + ", "
    if p["vae_path"]:
        s += "VAE: " + _basename(p["vae_path"]) + ", "
    if p["clip_skip"] != -1:
        s += f"Clip skip: {p['clip_skip']}, "
    if p["hires_enabled"]:
        s += "Hires upscale: " + p["hires_upscaler"] + ", "
        s += f"Hires scale: {_f(p['hires_scale'])}, "
        s += f"Hires resize: {p['hires_width']}x{p['hires_height']}, "
        s += f"Hires steps: {p['hires_steps']}, "
        s += f"Denoising strength: {_f(p['hires_denoising_strength'])}, "
    s += "Version: stable-diffusion.cpp"
    s += ", SDCPP: " + metadata_json(p, seed)
    return s


# --- images out (sd-cli's save_results) --------------------------------------------------
_FORMAT_SPEC = re.compile(r"(?:[^%]|^)(?:%%)*(%\d{0,3}d)")


def _format_of(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(ext)


def _format_frame_idx(pattern: str, idx: int) -> str:
    result = pattern
    while True:
        m = _FORMAT_SPEC.search(result)
        if not m:
            break
        result = result[:m.start(1)] + (m.group(1) % idx) + result[m.end(1):]
    return result.replace("%%", "%")


def output_paths(output: str, count: int, begin_idx: int = -1) -> list[str]:
    """The file names sd-cli writes `count` results to."""
    base, ext = os.path.splitext(output)  # like std::filesystem: ".png" alone is a stem
    fmt = _format_of(output)
    if not ext or not (fmt is not None or ext.lower() in (".avi", ".webm")):
        base = output
    start = max(begin_idx, 0)
    if _FORMAT_SPEC.search(output):
        if fmt is None:
            ext = ".png"
        return [_format_frame_idx(base + ext, start + i) for i in range(count)]
    if fmt is None:
        ext = ".png"
    return [base + (f"_{start + i}" if count > 1 else "") + ext for i in range(count)]


def write_image(path, array: np.ndarray, parameters: str = "", fmt: str | None = None, quality: int = 90) -> None:
    """Write as sd-cli's write_image_to_file: PNG with a ``parameters`` tEXt chunk (UTF-8
    bytes, like stb_image_write), JPEG (quality 90) with a COM segment, WEBP with XMP.
    With `fmt` ("PNG", "JPEG", "WEBP"), `path` may be a binary file (the server encodes in memory)."""
    from PIL import Image, PngImagePlugin

    fmt = fmt or _format_of(path)
    arr = array[:, :, 0] if array.shape[2] == 1 else array
    im = Image.fromarray(np.ascontiguousarray(arr))
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        if parameters:
            info.add(b"tEXt", b"parameters\0" + parameters.encode("utf-8"))
        im.save(path, "PNG", pnginfo=info)
    elif fmt == "JPEG":
        kw = {"comment": b"parameters\0" + parameters.encode("utf-8") + b"\0"} if parameters else {}
        im.save(path, "JPEG", quality=quality, **kw)
    elif fmt == "WEBP":
        kw = {}
        if parameters:
            from xml.sax.saxutils import escape

            kw["xmp"] = (
                '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
                '  <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
                '    <rdf:Description xmlns:sdcpp="https://github.com/leejet/stable-diffusion.cpp/ns/1.0/">\n'
                f'      <sdcpp:parameters>{escape(parameters, {chr(34): "&quot;", chr(39): "&apos;"})}'
                '</sdcpp:parameters>\n    </rdf:Description>\n  </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end="w"?>'
            ).encode()
        im.save(path, "WEBP", quality=quality, **kw)
    else:
        raise RunError(f"cannot write {path}: unknown image format")


def save_results(p: dict, arrays: list[np.ndarray]) -> int:
    log = logging.getLogger("pysdcpp")
    out = p["output_path"]
    parent = os.path.dirname(out)
    if parent:
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise RunError(f"failed to create directory '{parent}': {exc}") from None
    paths = output_paths(out, len(arrays), p["output_begin_idx"])
    ok = 0
    for i, (path, arr) in enumerate(zip(paths, arrays)):
        params = image_parameters(p, p["seed"] + i) if p["embed_image_metadata"] else ""
        try:
            write_image(path, arr, params)
            ok += 1
            log.info("save result image %d to '%s' (success)", i, path)
        except (OSError, ValueError, RunError) as exc:
            log.error("save result image %d to '%s' (failure): %s", i, path, exc)
    log.info("%d/%d images saved", ok, len(arrays))
    if ok == 0:
        raise RunError(f"could not save any image to {out}")
    return ok


# --- logging and progress ---------------------------------------------------------------
class _SdCliFormatter(logging.Formatter):
    TAGS = {logging.DEBUG: ("DEBUG", 37), logging.INFO: ("INFO", 34), logging.WARNING: ("WARN", 35),
            logging.ERROR: ("ERROR", 31), logging.CRITICAL: ("ERROR", 31)}

    def __init__(self, color: bool):
        super().__init__()
        self.color = color

    def format(self, record):
        tag, code = self.TAGS.get(record.levelno, ("?????", 33))
        head = f"\033[{code};1m[{tag:<5}]\033[0m " if self.color else f"[{tag:<5}] "
        return head + record.getMessage()


class _StreamSplitHandler(logging.Handler):
    """sd-cli's log_print: ERROR to stderr, the rest to stdout."""

    def emit(self, record):
        try:
            stream = sys.stderr if record.levelno >= logging.ERROR else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # pragma: no cover
            self.handleError(record)


def _setup_logging(verbose: bool, color: bool):
    logger = logging.getLogger("pysdcpp")
    handler = _StreamSplitHandler()
    handler.setFormatter(_SdCliFormatter(color))
    logger.addHandler(handler)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False

    def restore():
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    return restore


class _Progress:
    """A progress bar on a terminal (tqdm when installed), nothing otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        self.last = -1

    def __call__(self, step, steps, seconds):
        if not self.enabled or steps <= 0:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            if self.bar is None or step < self.last:
                if self.bar is not None:
                    self.bar.close()
                self.bar = tqdm(total=steps, unit="step", file=self.stream, leave=True)
            self.bar.total = steps
            self.bar.update(step - self.bar.n)
        else:
            width = 50
            filled = width * step // steps
            rate = f"{seconds:.2f}s/it" if seconds >= 1 or seconds == 0 else f"{1 / seconds:.2f}it/s"
            self.stream.write(f"\r  |{'=' * filled}{'>' if filled < width else ''}"
                              f"{' ' * (width - filled - (filled < width))}| {step}/{steps} - {rate}\033[K")
            if step == steps:
                self.stream.write("\n")
            self.stream.flush()
        self.last = step

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- running ------------------------------------------------------------------------------
def _context_kwargs(p: dict, vae_decode_only: bool) -> dict:
    from ._params import CTX

    kw: dict[str, Any] = {}
    for key, dest in (("model", "model_path"), ("clip_l", "clip_l_path"), ("clip_g", "clip_g_path"),
                      ("clip_vision", "clip_vision_path"), ("t5xxl", "t5xxl_path"), ("llm", "llm_path"),
                      ("llm_vision", "llm_vision_path"), ("diffusion_model", "diffusion_model_path"),
                      ("high_noise_diffusion_model", "high_noise_diffusion_model_path"), ("vae", "vae_path"),
                      ("taesd", "taesd_path"), ("control_net", "control_net_path"),
                      ("photo_maker", "photo_maker_path"), ("tensor_type_rules", "tensor_type_rules")):
        if p[dest]:
            kw[key] = p[dest]
    kw.update(
        vae_decode_only=vae_decode_only, free_params_immediately=True, n_threads=p["n_threads"],
        wtype=p["wtype"], rng_type=p["rng_type"] if p["rng_type"] is not None else "cuda",
        sampler_rng_type=p["sampler_rng_type"], prediction=p["prediction"],
        lora_apply_mode=p["lora_apply_mode"] if p["lora_apply_mode"] is not None else "auto",
        offload_params_to_cpu=p["offload_params_to_cpu"], enable_mmap=p["enable_mmap"],
        keep_clip_on_cpu=p["clip_on_cpu"], keep_control_net_on_cpu=p["control_net_cpu"],
        keep_vae_on_cpu=p["vae_on_cpu"], flash_attn=p["flash_attn"],
        diffusion_flash_attn=p["diffusion_flash_attn"], tae_preview_only=p["taesd_preview"],
        diffusion_conv_direct=p["diffusion_conv_direct"], vae_conv_direct=p["vae_conv_direct"],
        circular_x=p["circular"] or p["circular_x"], circular_y=p["circular"] or p["circular_y"],
        force_sdxl_vae_conv_scale=p["force_sdxl_vae_conv_scale"], chroma_use_dit_mask=p["chroma_use_dit_mask"],
        chroma_use_t5_mask=p["chroma_use_t5_mask"], chroma_t5_mask_pad=p["chroma_t5_mask_pad"],
        qwen_image_zero_cond_t=p["qwen_image_zero_cond_t"], max_vram=p["max_vram"],
    )
    for field in set(STREAM_FIELDS.values()):
        if field in CTX.leaves:  # sd-cli always passes them (a build without them refused them before)
            kw[field] = p[field]
    if p["embedding_dir"] and os.path.isdir(p["embedding_dir"]):
        emb = {}
        for entry in os.scandir(p["embedding_dir"]):
            stem, ext = os.path.splitext(entry.name)
            if entry.is_file() and ext in (".gguf", ".safetensors", ".pt"):
                emb[stem] = entry.path
        if emb:
            kw["embeddings"] = dict(sorted(emb.items()))
    return kw


def _gen_kwargs(p: dict) -> dict:
    c = p["cache"]
    (tx, ty), (rx, ry) = p["vae_tile_size"], p["vae_relative_tile_size"]
    kw = dict(
        negative_prompt=p["negative_prompt"], clip_skip=p["clip_skip"],
        width=_resolved(p["width"]), height=_resolved(p["height"]),
        sampling_method=p["sampling_method"], scheduler=p["scheduler"], steps=p["steps"],
        cfg_scale=p["cfg_scale"], img_cfg_scale=p["img_cfg_scale"], guidance=p["guidance"],
        slg_scale=p["slg_scale"], skip_layer_start=p["skip_layer_start"], skip_layer_end=p["skip_layer_end"],
        skip_layers=list(p["skip_layers"]), eta=p["eta"], timestep_shift=p["timestep_shift"],
        flow_shift=p["flow_shift"], strength=p["strength"], seed=p["seed"], batch_count=p["batch_count"],
        control_strength=p["control_strength"], auto_resize_ref_image=p["auto_resize_ref_image"],
        increase_ref_index=p["increase_ref_index"],
        pm_id_embed_path=p["pm_id_embed_path"] or None, pm_style_strength=p["pm_style_strength"],
        vae_tiling=p["vae_tiling"], vae_tile_size_x=tx, vae_tile_size_y=ty,
        vae_tile_overlap=p["vae_tile_overlap"], vae_relative_tile_size_x=rx, vae_relative_tile_size_y=ry,
        cache_mode=_cache_mode_value(c["mode"]), cache_scm_mask=p["scm_mask"] or None,
        **{"cache_" + k: v for k, v in c.items() if k not in ("mode", "scm_mask")},
        hires_enabled=p["hires_enabled"], hires_upscaler=p["hires_upscaler_value"],
        hires_model_path=p["hires_model_path"] or None, hires_scale=p["hires_scale"],
        hires_target_width=p["hires_width"], hires_target_height=p["hires_height"],
        hires_steps=p["hires_steps"], hires_denoising_strength=p["hires_denoising_strength"],
        hires_upscale_tile_size=p["hires_upscale_tile_size"],
    )
    if p["sigmas"]:
        kw["sigmas"] = list(p["sigmas"])
    if p["lora_map"]:
        kw["loras"] = [(k, v) for k, v in sorted(p["lora_map"].items())]
    return kw


def run(p: dict) -> int:
    from . import Context, Upscaler
    from ._images import fill_image
    from ._native import ffi, lib

    log = logging.getLogger("pysdcpp")
    log.debug("%s", _version_string())
    log.debug("%s", ffi.string(lib.sd_get_system_info()).decode())
    vae_decode_only = True
    init = None
    if p["init_image_path"]:
        vae_decode_only = False
        set_size = p["width"] > 0 and p["height"] > 0
        init = _load_image(p["init_image_path"], 3, p["width"] if set_size else 0, p["height"] if set_size else 0)
        _set_size_if_unset(p, init)
    refs = []
    if p["ref_image_paths"]:
        vae_decode_only = False
        for path in p["ref_image_paths"]:
            refs.append(_load_image(path, 3))
            _set_size_if_unset(p, refs[-1])
    w, h = _resolved(p["width"]), _resolved(p["height"])
    mask = _load_image(p["mask_image_path"], 1, w, h) if p["mask_image_path"] else None
    control = None
    if p["control_image_path"]:
        control = _load_image(p["control_image_path"], 3, w, h)
        if p["canny_preprocess"]:
            keep: list = []
            c_image = ffi.new("sd_image_t*")
            fill_image(c_image, control, keep)
            lib.preprocess_canny(c_image[0], 0.08, 0.08, 0.8, 1.0, False)
    pm_images = _images_from_dir(p["pm_id_images_dir"]) if p["pm_id_images_dir"] else None
    if p["hires_enabled"] and p["hires_upscaler_value"] in (lib.SD_HIRES_UPSCALER_MODEL,
                                                            lib.SD_HIRES_UPSCALER_LANCZOS,
                                                            lib.SD_HIRES_UPSCALER_NEAREST):
        vae_decode_only = False

    if p["mode"] == "upscale":
        arrays = [init]
    else:
        gen = _gen_kwargs(p)
        with Context(**_context_kwargs(p, vae_decode_only)) as ctx:
            if p["sampling_method"] is None:
                p["sampling_method"] = int(ctx.default_sampling_method())
            if p["scheduler"] is None:
                p["scheduler"] = int(ctx.default_scheduler(p["sampling_method"]))
            gen.update(sampling_method=p["sampling_method"], scheduler=p["scheduler"])
            progress = _Progress()
            preview = None
            if p["preview_method"] != "none":
                preview = _preview_writer(p["preview_path"])
            try:
                arrays = ctx.generate(
                    p["prompt"], output="numpy", progress=progress, init_image=init,
                    mask_image=mask if init is not None else None, control_image=control,
                    ref_images=refs or None, pm_id_images=pm_images, preview=preview,
                    preview_mode=p["preview_method"] if preview else None,
                    preview_interval=p["preview_interval"], preview_noisy=p["preview_noisy"],
                    preview_denoised=not p["preview_noisy"], **gen)
            finally:
                progress.close()
            _log_stream_stats(ctx)

    if p["esrgan_path"] and p["upscale_repeats"] > 0:
        with Upscaler(p["esrgan_path"], offload_params_to_cpu=p["offload_params_to_cpu"],
                      direct=p["diffusion_conv_direct"], n_threads=p["n_threads"],
                      tile_size=p["upscale_tile_size"]) as up:
            for i, arr in enumerate(arrays):
                for _ in range(p["upscale_repeats"]):
                    arr = up.upscale(arr, factor=4, output="numpy")
                arrays[i] = arr
    save_results(p, arrays)
    return 0


def _log_stream_stats(ctx) -> None:
    """sd-cli's "stream stats" line, when weights were streamed."""
    st = ctx.last_stream_stats
    if st is None or not getattr(st, "compute_calls", 0):
        return
    g = lambda name: getattr(st, name, 0)  # noqa: E731
    mb = 1024.0 * 1024.0
    logging.getLogger("pysdcpp").info(
        "stream stats: %d calls, %d segments, streamed %.2f MB (prefetched %.2f MB), resident %.2f MB, "
        "h2d %.2f ms (prefetch %.2f ms), compute %.2f ms, wait %.2f ms, prefetch adopted/fallback/skipped "
        "%d/%d/%d, peak %.2f MB, budget %.2f MB", g("compute_calls"), g("segments"), g("bytes_streamed") / mb,
        g("bytes_prefetched") / mb, g("bytes_resident") / mb, g("h2d_ms"), g("prefetch_ms"), g("compute_ms"),
        g("wait_ms"), g("prefetch_adopted"), g("prefetch_fallback"), g("prefetch_skipped"),
        g("peak_vram_bytes") / mb, g("budget_bytes") / mb)


def _set_size_if_unset(p: dict, arr: np.ndarray) -> None:
    if not (p["width"] > 0 and p["height"] > 0):
        p["width"], p["height"] = int(arr.shape[1]), int(arr.shape[0])
        logging.getLogger("pysdcpp").info("set width x height to %d x %d", p["width"], p["height"])


def _preview_writer(path: str):
    log = logging.getLogger("pysdcpp")

    def write(step, frames, is_noisy):
        if len(frames) != 1:
            log.error("multi-frame previews (video) are not supported by pysdcpp")
            return
        arr = frames[0]
        try:
            write_image(path, arr)
        except (OSError, ValueError, RunError):
            log.error("save preview image to '%s' failed", path)
    return write


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pysdcpp`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        from . import __version__

        print(f"pysdcpp {__version__}, {_version_string()}")
        return 0
    try:
        p, given = parse_args(argv)
    except UsageError as exc:
        print(f"{PROG}: error: {exc} (see {PROG} --help)", file=sys.stderr)
        return 2
    if p["help"]:
        print(usage())
        return 0
    restore = _setup_logging(p["verbose"], p["color"])
    try:
        try:
            _check_supported(p, given)
            _validate(p)
        except UsageError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        try:
            return run(p)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except (RunError, OSError) as exc:
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return 1
        except Exception as exc:  # SDError and friends: one line, no traceback
            from .errors import SDError

            if not isinstance(exc, (SDError, ValueError, TypeError)):
                raise
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return 1
    finally:
        restore()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
