"""pysdcpp.compat.StableDiffusion: stable-diffusion-cpp-python 0.4.7's API on pysdcpp.

Constructed with that package's argument names; its images must be byte-identical to
pysdcpp.Context's on the same settings (0.4.7's defaults: eta=0, skip_layers [7,8,9],
image_cfg_scale = cfg_scale, auto_resize_ref_image=True)."""
from __future__ import annotations

import inspect
import json
import struct

import numpy as np
import pytest
from PIL import Image

from pysdcpp.compat import StableDiffusion

# stable-diffusion-cpp-python 0.4.7's public signatures (argument names, in order)
SD_INIT_ARGS = [
    "model_path", "clip_l_path", "clip_g_path", "clip_vision_path", "t5xxl_path", "llm_path", "llm_vision_path",
    "diffusion_model_path", "high_noise_diffusion_model_path", "vae_path", "taesd_path", "control_net_path",
    "upscaler_path", "upscale_tile_size", "lora_model_dir", "embedding_paths", "photo_maker_path",
    "tensor_type_rules", "vae_decode_only", "n_threads", "wtype", "rng_type", "sampler_rng_type", "prediction",
    "lora_apply_mode", "offload_params_to_cpu", "enable_mmap", "keep_clip_on_cpu", "keep_control_net_on_cpu",
    "keep_vae_on_cpu", "flash_attn", "diffusion_flash_attn", "tae_preview_only", "diffusion_conv_direct",
    "vae_conv_direct", "circular_x", "circular_y", "force_sdxl_vae_conv_scale", "chroma_use_dit_mask",
    "chroma_use_t5_mask", "chroma_t5_mask_pad", "qwen_image_zero_cond_t", "max_vram", "image_resize_method",
    "verbose",
]
GENERATE_IMAGE_ARGS = [
    "prompt", "negative_prompt", "clip_skip", "init_image", "ref_images", "auto_resize_ref_image",
    "increase_ref_index", "mask_image", "width", "height", "cfg_scale", "image_cfg_scale", "guidance", "scheduler",
    "sample_method", "sample_steps", "eta", "timestep_shift", "sigmas", "flow_shift", "skip_layers",
    "skip_layer_start", "skip_layer_end", "slg_scale", "strength", "seed", "batch_count", "control_image",
    "control_strength", "pm_id_embed_path", "pm_id_images", "pm_style_strength", "vae_tiling",
    "vae_tile_overlap", "vae_tile_size", "vae_relative_tile_size", "cache_mode", "cache_reuse_threshold",
    "cache_start_percent", "cache_end_percent", "cache_error_decay_rate", "cache_use_relative_threshold",
    "cache_reset_error_on_compute", "cache_Fn_compute_blocks", "cache_Bn_compute_blocks",
    "cache_residual_diff_threshold", "cache_max_warmup_steps", "cache_max_continuous_cached_steps",
    "cache_taylorseer_n_derivatives", "cache_taylorseer_skip_interval", "cache_spectrum_w", "cache_spectrum_m",
    "cache_spectrum_lam", "cache_spectrum_window_size", "cache_spectrum_flex_window",
    "cache_spectrum_warmup_steps", "cache_spectrum_stop_percent", "scm_mask", "scm_policy", "hires",
    "hires_path", "hires_upscaler", "hires_scale", "hires_width", "hires_height", "hires_steps",
    "hires_denoising_strength", "hires_upscale_tile_size", "canny", "upscale_factor", "preview_method",
    "preview_noisy", "preview_interval", "preview_callback", "progress_callback",
]


def _params(fn):
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_signatures_match_stable_diffusion_cpp_python():
    assert _params(StableDiffusion.__init__) == SD_INIT_ARGS
    assert _params(StableDiffusion.generate_image) == GENERATE_IMAGE_ARGS
    assert _params(StableDiffusion.upscale) == ["images", "upscale_factor", "progress_callback"]
    assert _params(StableDiffusion.preprocess_canny) == ["image", "high_threshold", "low_threshold", "weak",
                                                         "strong", "inverse", "output_as_sd_image_t"]
    assert _params(StableDiffusion.convert) == ["input_path", "vae_path", "output_path", "output_type",
                                                "tensor_type_rules", "convert_name"]


def _write_embedding(path, seed=0):
    """A textual-inversion embedding for SD 1.5 (one 768-d vector) as safetensors."""
    data = np.random.default_rng(seed).standard_normal((1, 768)).astype(np.float32).tobytes()
    header = json.dumps({"emb_params": {"dtype": "F32", "shape": [1, 768], "data_offsets": [0, len(data)]}})
    header = header.encode() + b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@pytest.fixture(scope="module")
def sd(sd15_path, tmp_path_factory):
    emb = _write_embedding(tmp_path_factory.mktemp("emb") / "mystyle.safetensors")
    # stable-diffusion-cpp-python's argument names; embedding_paths crashed 0.4.7's constructor
    with StableDiffusion(model_path=str(sd15_path), n_threads=2, embedding_paths=[str(emb)],
                         rng_type="cuda", wtype="default", verbose=False) as model:
        yield model


def rgb(images):
    return [np.asarray(im.convert("RGB")).tobytes() for im in images]


def test_generate_image_equals_context(sd, ctx):
    calls = []
    images = sd.generate_image(prompt="a red cube", width=64, height=64, sample_steps=1, seed=11,
                               sample_method="euler_a", cfg_scale=6.0, batch_count=2,
                               progress_callback=lambda *a: calls.append(a))
    assert len(images) == 2 and all(isinstance(im, Image.Image) and im.mode == "RGBA" for im in images)
    assert images[0].size == (64, 64) and calls and calls[-1][0] == calls[-1][1]
    assert [im.info["seed"] for im in images] == [11, 12]
    assert images[0].info["model_path"] == sd.model_path and images[0].info["sample_steps"] == 1
    assert "prompt: a red cube" in images[0].info["parameters"]
    ref = ctx.generate("a red cube", width=64, height=64, steps=1, seed=11, sampling_method="euler_a",
                       scheduler=ctx.default_scheduler("euler_a"), cfg_scale=6.0, img_cfg_scale=6.0,
                       eta=0.0, skip_layers=[7, 8, 9], auto_resize_ref_image=True, batch_count=2)
    assert rgb(images) == rgb(ref)
    # the progress callback does not stay registered after the call (0.4.7 left it global)
    n = len(calls)
    ctx.generate("x", width=64, height=64, steps=1, seed=1)
    assert len(calls) == n


def test_img2img_with_mask_equals_context(sd, ctx):
    rng = np.random.default_rng(1)
    init = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 56))
    images = sd.generate_image(prompt="a house", init_image=init, mask_image=mask, strength=0.7,
                               width=64, height=64, sample_steps=2, seed=5, sample_method="euler",
                               scheduler="karras")
    ref = ctx.img2img(init, "a house", mask=np.asarray(mask), strength=0.7, width=64, height=64, steps=2,
                      seed=5, sampling_method="euler", scheduler="karras", cfg_scale=7.0, img_cfg_scale=7.0,
                      eta=0.0, skip_layers=[7, 8, 9], auto_resize_ref_image=True)
    assert rgb(images) == rgb(ref)


def test_embedding_is_used(sd):
    plain = sd.generate_image(prompt="a portrait", width=64, height=64, sample_steps=1, seed=2)
    styled = sd.generate_image(prompt="a portrait, mystyle", width=64, height=64, sample_steps=1, seed=2)
    assert rgb(plain) != rgb(styled)


def test_hires_fields_reach_sd_cpp(sd):
    # 0.4.7 built sd_hires_params_t with wrong field names, so hires never ran
    images = sd.generate_image(prompt="x", width=64, height=64, sample_steps=1, seed=2, hires=True,
                               hires_upscaler="latent", hires_width=128, hires_height=128, hires_steps=1)
    assert images[0].size == (128, 128)


def test_unsupported_and_invalid(sd):
    with pytest.raises(NotImplementedError, match="video"):
        sd.generate_video(prompt="x")
    with pytest.raises(NotImplementedError):
        sd.preprocess_canny(Image.new("RGB", (8, 8)), output_as_sd_image_t=True)
    with pytest.raises(RuntimeError, match="[Uu]pscal"):
        sd.upscale(Image.new("RGB", (8, 8)))
    with pytest.raises(RuntimeError, match="[Uu]pscal"):
        sd.generate_image(prompt="x", width=64, height=64, sample_steps=1, upscale_factor=2)
    with pytest.raises(ValueError, match="sample_method"):
        sd.generate_image(prompt="x", sample_method="nope")
    with pytest.raises(ValueError, match="strength"):
        sd.generate_image(prompt="x", strength=2.0)
    edges = sd.preprocess_canny(Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3),
                                                                                   dtype=np.uint8)))
    assert edges.mode == "RGBA" and edges.size == (32, 32)
