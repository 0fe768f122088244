"""stable-diffusion-cpp-python 0.4.7's ``StableDiffusion`` class, on pysdcpp.

Existing code switches by changing one import::

    # from stable_diffusion_cpp import StableDiffusion
    from pysdcpp.compat import StableDiffusion

    sd = StableDiffusion(model_path="sd15.safetensors", n_threads=4)
    images = sd.generate_image(prompt="a lovely cat", width=512, height=512, seed=42)
    images[0].save("cat.png")   # RGBA PIL images, the arguments in images[0].info

The constructor and ``generate_image`` / ``upscale`` / ``preprocess_canny`` /
``convert`` take that package's argument names, defaults and value spellings
(``"default"``, ``"euler_a"``, ``"cachedit"``, ``"latent_nearest"``, ...) and return
what it returns.  Built on :class:`pysdcpp.Context` and :class:`pysdcpp.Upscaler`,
so these defects of 0.4.7 are gone: result buffers are freed, no global callback is
left registered after a call, ``embedding_paths`` works, the ``hires_*`` arguments
reach sd.cpp, and ``upscale_factor`` without an upscaler raises instead of crashing.

Not supported (raise ``NotImplementedError``): ``generate_video`` and
``preprocess_canny(output_as_sd_image_t=True)`` (there are no ctypes structs here).
Differences: the ``model``/``upscaler`` properties return the pysdcpp
:class:`~pysdcpp.Context`/:class:`~pysdcpp.Upscaler` rather than ctypes pointers;
``sd_cache_params_t`` fields that 0.4.7 left zero-initialised (``max_cached_steps``)
keep sd.cpp's defaults; ``upscale``'s ``progress_callback`` is called once per
image; sd.cpp's log goes to the ``pysdcpp`` logger (``verbose=True`` prints it to
stderr, as 0.4.7 did).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Literal, Optional, Union

import numpy as np
from PIL import Image

from . import _images
from .context import Context
from .enums import (CacheMode, LoraApplyMode, Prediction, Preview, RNGType, SampleMethod, Scheduler,
                    WeightType)
from .errors import InvalidArgumentError
from .upscaler import Upscaler

__all__ = ["StableDiffusion"]

ImageLike = Union[Image.Image, str]

# stable-diffusion-cpp-python's spellings that differ from sd.cpp's names
_RNG_ALIASES = {"default": "std_default", "type_count": None}
_PREDICTION_ALIASES = {"default": None, "flow": "sd3_flow"}
_WTYPE_ALIASES = {"default": None}
_SAMPLE_ALIASES = {"default": None, "sample_method_count": None}
_SCHEDULER_ALIASES = {"default": None, "scheduler_count": None}
_PREVIEW_ALIASES = {"none": None, "preview_count": None}
_LORA_ALIASES = {"lora_apply_mode_count": None}
_CACHE_ALIASES = {"cachedit": "cache-dit"}
# SDHiresUpscaler in 0.4.7's order, which is sd.cpp's
_HIRES_NAMES = ["none", "latent", "latent_nearest", "latent_nearest_exact", "latent_antialiased",
                "latent_bicubic", "latent_bicubic_antialiased", "lanczos", "nearest", "model"]

_log_handler: logging.Handler | None = None


def _set_verbose(verbose: bool) -> None:
    global _log_handler
    logger = logging.getLogger("pysdcpp")
    if _log_handler is None:
        _log_handler = logging.StreamHandler(sys.stderr)
        _log_handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(_log_handler)
    _log_handler.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)
    if verbose and (logger.level == logging.NOTSET or logger.level > logging.DEBUG):
        logger.setLevel(logging.DEBUG)


def _enum(value, enum_cls, aliases: dict, name: str, allow_none: bool = True):
    """A pysdcpp enum member (or None = sd.cpp's automatic choice) from 0.4.7's inputs:
    a name (case-insensitive), an int, or a float (truncated, as 0.4.7 does)."""
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"`{name}` must not be None")
    if isinstance(value, float):
        value = int(value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in aliases:
            key = aliases[key]
            if key is None:
                return None
        try:
            return enum_cls.parse(key)
        except InvalidArgumentError:
            choices = list(aliases) + [m.cli_name for m in enum_cls]
            raise ValueError(f"Invalid `{name}` type '{value}'. Must be one of {choices}.") from None
    if isinstance(value, int) and not isinstance(value, bool):
        if value in enum_cls._value2member_map_:
            return enum_cls(value)
        if value == max(m.value for m in enum_cls) + 1:  # the *_COUNT sentinel: automatic
            return None
    raise ValueError(f"`{name}` must be a string or an integer matching one of "
                     f"{[m.cli_name for m in enum_cls]}")


def _hires_upscaler(value) -> int:
    from ._native import lib

    if isinstance(value, float):
        value = int(value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _HIRES_NAMES:
            return _HIRES_NAMES.index(key)
        c = lib.str_to_sd_hires_upscaler(value.encode())  # sd.cpp's own spelling ("Latent (nearest)")
        if c != lib.SD_HIRES_UPSCALER_COUNT:
            return int(c)
        raise ValueError(f"Invalid `hires_upscaler` type '{value}'. Must be one of {_HIRES_NAMES}.")
    if isinstance(value, int) and 0 <= value < lib.SD_HIRES_UPSCALER_COUNT:
        return value
    raise ValueError(f"`hires_upscaler` must be a string or an integer matching one of {_HIRES_NAMES}")


def _clean_path(path) -> str:
    return os.path.normpath(str(path).strip()) if path else ""


def _rgba(array: np.ndarray) -> Image.Image:
    return _images.to_pil(array).convert("RGBA")


class StableDiffusion:
    """stable-diffusion-cpp-python's high-level model class, backed by :class:`pysdcpp.Context`."""

    def __init__(
        self,
        model_path: str = "",
        clip_l_path: str = "",
        clip_g_path: str = "",
        clip_vision_path: str = "",
        t5xxl_path: str = "",
        llm_path: str = "",
        llm_vision_path: str = "",
        diffusion_model_path: str = "",
        high_noise_diffusion_model_path: str = "",
        vae_path: str = "",
        taesd_path: str = "",
        control_net_path: str = "",
        upscaler_path: str = "",
        upscale_tile_size: int = 128,
        lora_model_dir: str = "",
        embedding_paths: List[str] = [],
        photo_maker_path: str = "",
        tensor_type_rules: str = "",
        vae_decode_only: bool = False,
        n_threads: int = -1,
        wtype: Union[str, int, float] = "default",
        rng_type: Union[str, int, float] = "cuda",
        sampler_rng_type: Union[str, int, float] = "cuda",
        prediction: Union[str, int, float] = "default",
        lora_apply_mode: Union[str, int, float] = "auto",
        offload_params_to_cpu: bool = False,
        enable_mmap: bool = False,
        keep_clip_on_cpu: bool = False,
        keep_control_net_on_cpu: bool = False,
        keep_vae_on_cpu: bool = False,
        flash_attn: bool = False,
        diffusion_flash_attn: bool = False,
        tae_preview_only: bool = False,
        diffusion_conv_direct: bool = False,
        vae_conv_direct: bool = False,
        circular_x: bool = False,
        circular_y: bool = False,
        force_sdxl_vae_conv_scale: bool = False,
        chroma_use_dit_mask: bool = True,
        chroma_use_t5_mask: bool = False,
        chroma_t5_mask_pad: int = 1,
        qwen_image_zero_cond_t: bool = False,
        max_vram: float = 0,
        image_resize_method: str = "crop",
        verbose: bool = True,
    ):
        self._model: Context | None = None
        self._upscaler: Upscaler | None = None
        self.model_path = _clean_path(model_path)
        self.clip_l_path = _clean_path(clip_l_path)
        self.clip_g_path = _clean_path(clip_g_path)
        self.clip_vision_path = _clean_path(clip_vision_path)
        self.t5xxl_path = _clean_path(t5xxl_path)
        self.llm_path = _clean_path(llm_path)
        self.llm_vision_path = _clean_path(llm_vision_path)
        self.diffusion_model_path = _clean_path(diffusion_model_path)
        self.high_noise_diffusion_model_path = _clean_path(high_noise_diffusion_model_path)
        self.vae_path = _clean_path(vae_path)
        self.taesd_path = _clean_path(taesd_path)
        self.control_net_path = _clean_path(control_net_path)
        self.upscaler_path = _clean_path(upscaler_path)
        self.upscale_tile_size = upscale_tile_size
        self.lora_model_dir = _clean_path(lora_model_dir)
        self.embedding_paths = [_clean_path(p) for p in embedding_paths]
        self.photo_maker_path = _clean_path(photo_maker_path)
        self.tensor_type_rules = tensor_type_rules
        self.vae_decode_only = vae_decode_only
        self.n_threads = n_threads if n_threads > 0 else max(multiprocessing.cpu_count() // 2, 1)
        self.wtype = wtype
        self.rng_type = rng_type
        self.sampler_rng_type = sampler_rng_type
        self.prediction = prediction
        self.lora_apply_mode = lora_apply_mode
        self.offload_params_to_cpu = offload_params_to_cpu
        self.enable_mmap = enable_mmap
        self.keep_clip_on_cpu = keep_clip_on_cpu
        self.keep_control_net_on_cpu = keep_control_net_on_cpu
        self.keep_vae_on_cpu = keep_vae_on_cpu
        self.flash_attn = flash_attn
        self.diffusion_flash_attn = diffusion_flash_attn
        self.tae_preview_only = tae_preview_only
        self.diffusion_conv_direct = diffusion_conv_direct
        self.vae_conv_direct = vae_conv_direct
        self.circular_x = circular_x
        self.circular_y = circular_y
        self.force_sdxl_vae_conv_scale = force_sdxl_vae_conv_scale
        self.chroma_use_dit_mask = chroma_use_dit_mask
        self.chroma_use_t5_mask = chroma_use_t5_mask
        self.chroma_t5_mask_pad = chroma_t5_mask_pad
        self.qwen_image_zero_cond_t = qwen_image_zero_cond_t
        self.max_vram = max_vram
        self.image_resize_method = image_resize_method
        self.verbose = verbose
        _set_verbose(verbose)

        if image_resize_method not in ("crop", "resize"):
            raise ValueError(f"Invalid `image_resize_method` '{image_resize_method}', must be 'resize' or 'crop'")
        wtype_e = _enum(wtype, WeightType, _WTYPE_ALIASES, "wtype")
        rng_e = _enum(rng_type, RNGType, _RNG_ALIASES, "rng_type")
        sampler_rng_e = _enum(sampler_rng_type, RNGType, _RNG_ALIASES, "sampler_rng_type")
        lora_e = _enum(lora_apply_mode, LoraApplyMode, _LORA_ALIASES, "lora_apply_mode")
        prediction_e = _enum(prediction, Prediction, _PREDICTION_ALIASES, "prediction")
        for p in self.embedding_paths:
            if not Path(p).is_file():
                raise ValueError(f"Embedding not found: {p}")

        paths = dict(model=self.model_path, clip_l=self.clip_l_path, clip_g=self.clip_g_path,
                     clip_vision=self.clip_vision_path, t5xxl=self.t5xxl_path, llm=self.llm_path,
                     llm_vision=self.llm_vision_path, diffusion_model=self.diffusion_model_path,
                     high_noise_diffusion_model=self.high_noise_diffusion_model_path, vae=self.vae_path,
                     taesd=self.taesd_path, control_net=self.control_net_path, photo_maker=self.photo_maker_path,
                     tensor_type_rules=self.tensor_type_rules)
        kwargs = {k: v for k, v in paths.items() if v}
        if self.embedding_paths:
            kwargs["embeddings"] = {Path(p).stem: p for p in self.embedding_paths}
        kwargs.update(
            vae_decode_only=vae_decode_only, n_threads=self.n_threads, wtype=wtype_e,
            rng_type=rng_e if rng_e is not None else RNGType.CUDA, sampler_rng_type=sampler_rng_e,
            prediction=prediction_e, lora_apply_mode=lora_e if lora_e is not None else LoraApplyMode.AUTO,
            offload_params_to_cpu=offload_params_to_cpu, enable_mmap=enable_mmap,
            keep_clip_on_cpu=keep_clip_on_cpu, keep_control_net_on_cpu=keep_control_net_on_cpu,
            keep_vae_on_cpu=keep_vae_on_cpu, flash_attn=flash_attn, diffusion_flash_attn=diffusion_flash_attn,
            tae_preview_only=tae_preview_only, diffusion_conv_direct=diffusion_conv_direct,
            vae_conv_direct=vae_conv_direct, circular_x=circular_x, circular_y=circular_y,
            force_sdxl_vae_conv_scale=force_sdxl_vae_conv_scale, chroma_use_dit_mask=chroma_use_dit_mask,
            chroma_use_t5_mask=chroma_use_t5_mask, chroma_t5_mask_pad=chroma_t5_mask_pad,
            qwen_image_zero_cond_t=qwen_image_zero_cond_t, max_vram=float(max_vram),
        )
        self._model = Context(**kwargs)
        if self.upscaler_path:
            try:
                self._upscaler = Upscaler(self.upscaler_path, offload_params_to_cpu=offload_params_to_cpu,
                                          direct=diffusion_conv_direct, n_threads=self.n_threads,
                                          tile_size=upscale_tile_size)
            except BaseException:
                self.close()
                raise

    # -- properties ----------------------------------------------------------------------
    @property
    def model(self) -> Context:
        """The :class:`pysdcpp.Context` (0.4.7 returned a ctypes pointer)."""
        assert self._model is not None
        return self._model

    @property
    def upscaler(self) -> Optional[Upscaler]:
        """The :class:`pysdcpp.Upscaler`, or None without ``upscaler_path``."""
        return self._upscaler

    # -- generation --------------------------------------------------------------------------
    def generate_image(
        self,
        prompt: str,
        negative_prompt: str = "",
        clip_skip: int = -1,
        init_image: Optional[ImageLike] = None,
        ref_images: Optional[List[ImageLike]] = None,
        auto_resize_ref_image: bool = True,
        increase_ref_index: bool = False,
        mask_image: Optional[ImageLike] = None,
        width: int = 512,
        height: int = 512,
        cfg_scale: float = 7.0,
        image_cfg_scale: Optional[float] = None,
        guidance: float = 3.5,
        scheduler: Union[str, int, float, None] = "default",
        sample_method: Union[str, int, float, None] = "default",
        sample_steps: int = 20,
        eta: float = 0.0,
        timestep_shift: int = 0,
        sigmas: Optional[str] = None,
        flow_shift: float = float("inf"),
        skip_layers: List[int] = [7, 8, 9],
        skip_layer_start: float = 0.01,
        skip_layer_end: float = 0.2,
        slg_scale: float = 0.0,
        strength: float = 0.75,
        seed: int = 42,
        batch_count: int = 1,
        control_image: Optional[ImageLike] = None,
        control_strength: float = 0.9,
        pm_id_embed_path: str = "",
        pm_id_images: Optional[List[ImageLike]] = None,
        pm_style_strength: float = 20.0,
        vae_tiling: bool = False,
        vae_tile_overlap: float = 0.5,
        vae_tile_size: Optional[Union[int, str]] = "0x0",
        vae_relative_tile_size: Optional[Union[float, str]] = "0x0",
        cache_mode: Union[str, int, float, None] = "disabled",
        cache_reuse_threshold: float = 1.0,
        cache_start_percent: float = 0.15,
        cache_end_percent: float = 0.95,
        cache_error_decay_rate: float = 1.0,
        cache_use_relative_threshold: bool = True,
        cache_reset_error_on_compute: bool = True,
        cache_Fn_compute_blocks: int = 8,
        cache_Bn_compute_blocks: int = 0,
        cache_residual_diff_threshold: float = 0.08,
        cache_max_warmup_steps: int = 8,
        cache_max_continuous_cached_steps: int = -1,
        cache_taylorseer_n_derivatives: int = 1,
        cache_taylorseer_skip_interval: int = 1,
        cache_spectrum_w: float = 0.40,
        cache_spectrum_m: int = 3,
        cache_spectrum_lam: float = 1.0,
        cache_spectrum_window_size: int = 2,
        cache_spectrum_flex_window: float = 0.5,
        cache_spectrum_warmup_steps: int = 4,
        cache_spectrum_stop_percent: float = 0.9,
        scm_mask: str = "",
        scm_policy: Literal["dynamic", "static"] = "dynamic",
        hires: bool = False,
        hires_path: str = "",
        hires_upscaler: Union[str, int, float] = "Latent",
        hires_scale: float = 2.0,
        hires_width: int = 0,
        hires_height: int = 0,
        hires_steps: int = 0,
        hires_denoising_strength: float = 0.7,
        hires_upscale_tile_size: int = 128,
        canny: bool = False,
        upscale_factor: int = 1,
        preview_method: Union[str, int, float] = "none",
        preview_noisy: bool = False,
        preview_interval: int = 1,
        preview_callback: Optional[Callable] = None,
        progress_callback: Optional[Callable] = None,
    ) -> List[Image.Image]:
        """Generate images from a text prompt and/or input images (0.4.7's arguments).

        Returns RGBA PIL images; each ``.info`` holds the constructor's and this call's
        arguments, ``seed`` (per image) and sd.cpp's ``parameters`` text."""
        ctx = self.model
        if self.vae_decode_only and (init_image or ref_images):
            raise ValueError("`vae_decode_only` cannot be True when an `init_image` or `ref_images` are provided")
        width = self._validate_dimensions(width, "width")
        height = self._validate_dimensions(height, "height")
        if batch_count < 1:
            raise ValueError("`batch_count` must be at least 1")
        if upscale_factor < 1:
            raise ValueError("`upscale_factor` must at least 1")
        if upscale_factor > 1 and self._upscaler is None:
            raise RuntimeError("Upscaling model not loaded (give `upscaler_path`)")
        if sample_steps < 1:
            raise ValueError("`sample_steps` must be at least 1")
        if strength < 0.0 or strength > 1.0:
            raise ValueError("`strength` must be in the range [0.0, 1.0]")
        if timestep_shift < 0 or timestep_shift > 1000:
            raise ValueError("`timestep_shift` must be in the range [0, 1000]")
        if scm_policy not in ("dynamic", "static"):
            raise ValueError(f"Invalid `scm_policy` type '{scm_policy}'. Must be one of ['dynamic', 'static'].")
        image_cfg_scale = cfg_scale if image_cfg_scale is None else image_cfg_scale
        if seed < 0:
            seed = random.randint(0, 10000)

        method = _enum(sample_method, SampleMethod, _SAMPLE_ALIASES, "sample_method")
        if method is None:
            method = ctx.default_sampling_method()
        sched = _enum(scheduler, Scheduler, _SCHEDULER_ALIASES, "scheduler")
        if sched is None:
            sched = ctx.default_scheduler(method)
        preview_mode = _enum(preview_method, Preview, _PREVIEW_ALIASES, "preview_method")
        cache = _enum(cache_mode, CacheMode, _CACHE_ALIASES, "cache_mode")
        cache = CacheMode.DISABLED if cache is None else cache
        hires_up = _hires_upscaler(hires_upscaler)
        if hires_up == 0:  # "none": no highres fix
            hires, hires_up = False, 1
        if cache == CacheMode.EASYCACHE and cache_reuse_threshold == 1.0:
            cache_reuse_threshold = 0.2  # 0.4.7's default for easycache
        tile_x, tile_y = self._parse_tile_size(vae_tile_size, as_float=False)
        rel_x, rel_y = self._parse_tile_size(vae_relative_tile_size, as_float=True)
        prompt_without_loras, loras = self._extract_loras(prompt, self.lora_model_dir)

        init = self._resize_image(init_image, width, height) if isinstance(init_image, (str, Image.Image)) else None
        mask = None
        if isinstance(mask_image, (str, Image.Image)):
            mask = self._resize_image(mask_image, width, height, channel=1)
            if init is None:
                raise ValueError("`mask_image` needs an `init_image`")
        control = None
        if isinstance(control_image, (str, Image.Image)):
            control = self._format_image(control_image)
            if canny:
                control = np.asarray(self.preprocess_canny(control).convert("RGB"))
        refs = [self._format_image(im) for im in (ref_images or []) if isinstance(im, (str, Image.Image))]
        pm_images = [self._format_image(im) for im in (pm_id_images or []) if isinstance(im, (str, Image.Image))]

        preview = None
        if preview_callback is not None and preview_mode is not None:
            def preview(step, frames, is_noisy):
                preview_callback(step, [_rgba(f) for f in frames], is_noisy)

        results = ctx.generate(
            prompt_without_loras, progress=progress_callback,
            preview=preview, preview_mode=preview_mode, preview_interval=preview_interval,
            preview_noisy=preview_noisy, preview_denoised=not preview_noisy,
            negative_prompt=negative_prompt, clip_skip=clip_skip, init_image=init, mask_image=mask,
            ref_images=refs or None, auto_resize_ref_image=auto_resize_ref_image,
            increase_ref_index=increase_ref_index, width=width, height=height,
            cfg_scale=float(cfg_scale), img_cfg_scale=float(image_cfg_scale), guidance=float(guidance),
            sampling_method=method, scheduler=sched, steps=sample_steps, eta=float(eta),
            timestep_shift=timestep_shift, sigmas=self._parse_sigmas(sigmas) or None,
            flow_shift=float(flow_shift), skip_layers=list(skip_layers) or None,
            skip_layer_start=float(skip_layer_start), skip_layer_end=float(skip_layer_end),
            slg_scale=float(slg_scale), strength=float(strength), seed=seed, batch_count=batch_count,
            control_image=control, control_strength=float(control_strength),
            pm_id_embed_path=pm_id_embed_path or None, pm_id_images=pm_images or None,
            pm_style_strength=float(pm_style_strength), vae_tiling=vae_tiling,
            vae_tile_overlap=float(vae_tile_overlap), vae_tile_size_x=tile_x, vae_tile_size_y=tile_y,
            vae_relative_tile_size_x=rel_x, vae_relative_tile_size_y=rel_y,
            cache_mode=cache, cache_reuse_threshold=float(cache_reuse_threshold),
            cache_start_percent=float(cache_start_percent), cache_end_percent=float(cache_end_percent),
            cache_error_decay_rate=float(cache_error_decay_rate),
            cache_use_relative_threshold=cache_use_relative_threshold,
            cache_reset_error_on_compute=cache_reset_error_on_compute,
            cache_Fn_compute_blocks=cache_Fn_compute_blocks, cache_Bn_compute_blocks=cache_Bn_compute_blocks,
            cache_residual_diff_threshold=float(cache_residual_diff_threshold),
            cache_max_warmup_steps=cache_max_warmup_steps,
            cache_max_continuous_cached_steps=cache_max_continuous_cached_steps,
            cache_taylorseer_n_derivatives=cache_taylorseer_n_derivatives,
            cache_taylorseer_skip_interval=cache_taylorseer_skip_interval,
            cache_spectrum_w=float(cache_spectrum_w), cache_spectrum_m=cache_spectrum_m,
            cache_spectrum_lam=float(cache_spectrum_lam), cache_spectrum_window_size=cache_spectrum_window_size,
            cache_spectrum_flex_window=float(cache_spectrum_flex_window),
            cache_spectrum_warmup_steps=cache_spectrum_warmup_steps,
            cache_spectrum_stop_percent=float(cache_spectrum_stop_percent),
            cache_scm_mask=scm_mask or None, cache_scm_policy_dynamic=scm_policy == "dynamic",
            hires_enabled=hires, hires_model_path=_clean_path(hires_path) or None, hires_upscaler=hires_up,
            hires_scale=float(hires_scale), hires_target_width=hires_width, hires_target_height=hires_height,
            hires_steps=hires_steps, hires_denoising_strength=float(hires_denoising_strength),
            hires_upscale_tile_size=hires_upscale_tile_size,
            loras=loras or None,
        )
        parameters = results[0].info.get("parameters")
        arrays = [np.asarray(im) for im in results]
        if upscale_factor > 1:
            arrays = [self._upscaler.upscale(a, factor=upscale_factor, output="numpy") for a in arrays]
        images = [_rgba(a) for a in arrays]

        gen_args = dict(
            prompt=prompt, negative_prompt=negative_prompt, clip_skip=clip_skip, init_image=init_image,
            ref_images=ref_images, auto_resize_ref_image=auto_resize_ref_image,
            increase_ref_index=increase_ref_index, mask_image=mask_image, width=width, height=height,
            cfg_scale=cfg_scale, image_cfg_scale=image_cfg_scale, guidance=guidance, scheduler=int(sched),
            sample_method=int(method), sample_steps=sample_steps, eta=eta, timestep_shift=timestep_shift,
            sigmas=sigmas, flow_shift=flow_shift, skip_layers=skip_layers, skip_layer_start=skip_layer_start,
            skip_layer_end=skip_layer_end, slg_scale=slg_scale, strength=strength, batch_count=batch_count,
            control_image=control_image, control_strength=control_strength, pm_id_embed_path=pm_id_embed_path,
            pm_id_images=pm_id_images, pm_style_strength=pm_style_strength, vae_tiling=vae_tiling,
            vae_tile_overlap=vae_tile_overlap, vae_tile_size=vae_tile_size,
            vae_relative_tile_size=vae_relative_tile_size, cache_mode=int(cache),
            cache_reuse_threshold=cache_reuse_threshold, scm_mask=scm_mask, scm_policy=scm_policy,
            hires=hires, hires_path=hires_path, hires_upscaler=hires_up, hires_scale=hires_scale,
            hires_width=hires_width, hires_height=hires_height, hires_steps=hires_steps,
            hires_denoising_strength=hires_denoising_strength, hires_upscale_tile_size=hires_upscale_tile_size,
            canny=canny, upscale_factor=upscale_factor,
            preview_method=int(preview_mode) if preview_mode is not None else 0,
            preview_noisy=preview_noisy, preview_interval=preview_interval,
        )
        model_args = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        for i, image in enumerate(images):
            image.info.update({**model_args, **gen_args, "seed": seed + i if batch_count > 1 else seed})
            if parameters:
                image.info["parameters"] = parameters
        return images

    def generate_video(self, *args, **kwargs):
        """Not supported: pysdcpp does not generate videos yet."""
        raise NotImplementedError("generate_video: video generation is not supported by pysdcpp yet")

    # -- tools ---------------------------------------------------------------------------------
    def preprocess_canny(
        self,
        image: ImageLike,
        high_threshold: float = 0.08,
        low_threshold: float = 0.08,
        weak: float = 0.8,
        strong: float = 1.0,
        inverse: bool = False,
        output_as_sd_image_t: bool = False,
    ) -> Image.Image:
        """sd.cpp's canny edge detector on an image; returns an RGBA PIL image."""
        from ._native import ffi, lib

        if output_as_sd_image_t:
            raise NotImplementedError("preprocess_canny(output_as_sd_image_t=True): pysdcpp has no ctypes "
                                      "sd_image_t; use the returned PIL image")
        arr = np.array(self._format_image(image), dtype=np.uint8, copy=True)
        keep: list = []
        c_image = ffi.new("sd_image_t*")
        _images.fill_image(c_image, arr, keep)
        lib.preprocess_canny(c_image[0], high_threshold, low_threshold, weak, strong, inverse)
        return _rgba(arr)

    def upscale(
        self,
        images: Union[List[ImageLike], ImageLike],
        upscale_factor: int = 4,
        progress_callback: Optional[Callable] = None,
    ) -> List[Image.Image]:
        """Upscale images with the ESRGAN model given as ``upscaler_path``; RGBA PIL images.
        ``progress_callback(i, n, seconds)`` is called after each image."""
        if self._upscaler is None:
            raise RuntimeError("Upscaling model not loaded")
        if not isinstance(images, list):
            images = [images]
        out = []
        for i, image in enumerate(images):
            t0 = time.perf_counter()
            arr = self._upscaler.upscale(self._format_image(image), factor=upscale_factor, output="numpy")
            out.append(_rgba(arr))
            if progress_callback is not None:
                progress_callback(i + 1, len(images), time.perf_counter() - t0)
        return out

    def convert(
        self,
        input_path: str,
        vae_path: str = "",
        output_path: str = "output.gguf",
        output_type: Union[str, int, float] = "default",
        tensor_type_rules: str = "",
        convert_name: bool = True,
    ) -> bool:
        """Convert a model to gguf (sd.cpp's ``convert``)."""
        from . import _native
        from ._native import lib

        wtype = _enum(output_type, WeightType, _WTYPE_ALIASES, "output_type")
        with _native.call():
            return bool(lib.convert(_clean_path(input_path).encode(), _clean_path(vae_path).encode(),
                                    _clean_path(output_path).encode(),
                                    lib.SD_TYPE_COUNT if wtype is None else int(wtype),
                                    tensor_type_rules.encode(), convert_name))

    # -- helpers (0.4.7's semantics) -----------------------------------------------------------------
    @staticmethod
    def _validate_dimensions(dimension, name: str) -> int:
        dimension = int(dimension)
        if dimension <= 0:
            raise ValueError(f"`{name}` must be greater than 0")
        return dimension

    @staticmethod
    def _parse_sigmas(sigmas: Optional[str]) -> List[float]:
        if not sigmas:
            return []
        s = sigmas.strip()
        if s.startswith("["):
            s = s[1:]
        if s.endswith("]"):
            s = s[:-1]
        out = []
        for item in s.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                out.append(float(item))
            except ValueError as exc:
                raise ValueError(f"Invalid float value '{item}' in sigmas") from exc
        if not out and s:
            raise ValueError(f"Could not parse any sigma values from '{sigmas}'")
        return out

    @staticmethod
    def _parse_tile_size(value, as_float: bool = False) -> tuple:
        if not value:
            return (0.0, 0.0) if as_float else (0, 0)
        conv = float if as_float else int
        try:
            text = str(value)
            if "x" in text:
                x, y = text.split("x", 1)
                return conv(x), conv(y)
            v = conv(float(text)) if not as_float else float(text)
            return v, v
        except (ValueError, OverflowError):
            raise ValueError(f"Invalid tile size value: {value}") from None

    @staticmethod
    def _extract_loras(prompt: str, lora_model_dir: str):
        """``<lora:name:multiplier>`` tags: removed from the prompt, resolved under lora_model_dir."""
        pattern = re.compile(r"<lora:([^:>]+):([^>]+)>")
        lora_map: Dict[str, float] = {}
        high_noise: Dict[str, float] = {}
        tmp = prompt
        while True:
            m = pattern.search(tmp)
            if not m:
                break
            raw_path, raw_mul = m.group(1), m.group(2)
            prompt = pattern.sub("", prompt, count=1)
            tmp = tmp[m.end():]
            try:
                mul = float(raw_mul)
            except ValueError:
                continue
            is_high = raw_path.startswith("|high_noise|")
            if is_high:
                raw_path = raw_path[len("|high_noise|"):]
            path = Path(raw_path)
            final = path if path.is_absolute() else Path(lora_model_dir) / path
            if not final.exists():
                for ext in (".pt", ".safetensors", ".gguf"):
                    candidate = final.with_suffix(final.suffix + ext)
                    if candidate.exists():
                        final = candidate
                        break
                else:
                    logging.getLogger("pysdcpp").warning("Can not find lora %s", final)
                    continue
            key = str(final.resolve())
            target = high_noise if is_high else lora_map
            target[key] = target.get(key, 0.0) + mul
        loras = [(p, m, False) for p, m in lora_map.items()] + [(p, m, True) for p, m in high_noise.items()]
        return prompt, loras

    def _format_image(self, image: ImageLike, channel: int = 3) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            with Image.open(_clean_path(image)) as opened:
                image = opened.copy()
        if isinstance(image, np.ndarray):
            return _images.to_array(image, channels=channel, what="image")
        if not isinstance(image, Image.Image):
            raise ValueError(f"expected a PIL image or a path, got {type(image).__name__}")
        image = image.convert("L" if channel == 1 else "RGB")
        arr = np.asarray(image, dtype=np.uint8)
        return np.ascontiguousarray(arr[:, :, None] if channel == 1 else arr)

    def _resize_image(self, image: ImageLike, width: int, height: int, channel: int = 3) -> np.ndarray:
        """0.4.7's resize of init and mask images: center crop to the aspect ratio
        (``image_resize_method="crop"``) then bilinear resize."""
        if isinstance(image, (str, os.PathLike)):
            with Image.open(_clean_path(image)) as opened:
                image = opened.copy()
        image = image.convert("L" if channel == 1 else "RGB")
        if (image.width, image.height) != (width, height):
            if self.image_resize_method == "crop":
                src_w, src_h = image.width, image.height
                src_aspect, dst_aspect = src_w / src_h, width / height
                cx, cy, cw, ch = 0, 0, src_w, src_h
                if src_aspect > dst_aspect:
                    cw = int(src_h * dst_aspect)
                    cx = (src_w - cw) // 2
                elif src_aspect < dst_aspect:
                    ch = int(src_w / dst_aspect)
                    cy = (src_h - ch) // 2
                image = image.crop((cx, cy, cx + cw, cy + ch))
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        arr = np.asarray(image, dtype=np.uint8)
        return np.ascontiguousarray(arr[:, :, None] if channel == 1 else arr)

    # -- lifetime ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model and the upscaler (idempotent)."""
        model, self._model = getattr(self, "_model", None), None
        upscaler, self._upscaler = getattr(self, "_upscaler", None), None
        if model is not None:
            model.close()
        if upscaler is not None:
            upscaler.close()

    def __enter__(self) -> "StableDiffusion":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
