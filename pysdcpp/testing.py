"""Random-weight checkpoints with the exact tensor names/shapes stable-diffusion.cpp expects.

No real weights can be downloaded in the test environments, so this module
writes ``.safetensors`` files for real architectures (SD 1.x, SDXL, Flux.1-dev,
Z-Image-Turbo + their text encoders and VAEs) filled with deterministic random
values.  It depends only on the standard library and numpy, and it does not
import anything else from ``pysdcpp`` (it can be run as ``python
pysdcpp/testing.py`` or ``python -m pysdcpp.testing``).

Specs
-----
A *spec* is an ordered dict ``name -> TensorSpec(shape, role, gain)``.  ``role``
says how the tensor is initialised:

``weight``  linear / conv weight, std = gain / sqrt(fan_in), fan_in = prod(shape[1:])
``bias``    linear / conv bias, std = 0.01 * gain
``embed``   embedding table / positional embedding / pad token, std = 0.02 * gain
``norm``    norm scale, all ones
``zeros``   all zeros (norm biases)

Tensor names follow the original checkpoints (LDM/CompVis names for SD1.x and
SDXL single files, BFL names for flux1-dev / ae, HF names for clip_l / t5xxl,
Comfy-Org names for Z-Image / Qwen3).  The tables are generated with loops that
mirror sd.cpp's ``unet.hpp``, ``auto_encoder_kl.hpp``, ``clip.hpp``, ``t5.hpp``,
``flux.hpp``, ``z_image.hpp`` and ``llm.hpp``.

Values
------
Random values are N(0, std^2) drawn by inverse-CDF lookup: a 16-bit random number
indexes a table of the 65536 quantiles of the normal distribution, pre-scaled by
the tensor's std and rounded to bf16 precision.  Every value is therefore exactly
representable in BF16, F16 and F32, so the f32, f16 and bf16 files of one seed
hold *the same model* (bit-exact values), and generation is a single gather per
element (~5x faster than ``standard_normal`` + ``astype(float16)``).

Determinism: each tensor has its own PCG64DXSM stream seeded from
blake2b(seed, name); a chunk starting at element ``i`` uses that stream advanced
by ``i/4`` draws, so the bytes do not depend on write order, chunking or the
number of workers: same seed + same arguments -> byte-identical file.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import os
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, NamedTuple, Optional, Tuple

import numpy as np

__all__ = [
    "TensorSpec",
    "DTYPES",
    "sd15_unet_spec",
    "unet_spec",
    "sd_vae_spec",
    "clip_text_spec",
    "open_clip_text_spec",
    "sd15_spec",
    "sdxl_unet_spec",
    "sdxl_spec",
    "flux_dit_spec",
    "flux_vae_spec",
    "clip_l_spec",
    "t5xxl_spec",
    "zimage_dit_spec",
    "qwen3_spec",
    "esrgan_spec",
    "spec_params",
    "spec_bytes",
    "spec_summary",
    "generate_tensor",
    "safetensors_header",
    "write_safetensors",
    "read_safetensors_header",
    "load_safetensors",
    "write_sd15",
    "write_sdxl",
    "write_flux",
    "write_zimage",
    "write_esrgan",
    "main",
]


class TensorSpec(NamedTuple):
    shape: Tuple[int, ...]
    role: str = "weight"  # weight | bias | embed | norm | zeros
    gain: float = 1.0


# safetensors dtype name, bytes per element
DTYPES = {"f32": ("F32", 4), "f16": ("F16", 2), "bf16": ("BF16", 2)}
_DTYPE_ALIASES = {
    "f32": "f32", "fp32": "f32", "float32": "f32",
    "f16": "f16", "fp16": "f16", "float16": "f16", "half": "f16",
    "bf16": "bf16", "bfloat16": "bf16",
}


def _norm_dtype(dtype: str) -> str:
    try:
        return _DTYPE_ALIASES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}; use f32, f16 or bf16") from None


class _SpecBuilder:
    """Small helper that appends tensors to an OrderedDict under a prefix."""

    def __init__(self, spec=None, prefix: str = ""):
        self.spec = spec if spec is not None else collections.OrderedDict()
        self.prefix = prefix

    def sub(self, prefix: str) -> "_SpecBuilder":
        return _SpecBuilder(self.spec, self.prefix + prefix)

    def add(self, name, shape, role="weight", gain=1.0):
        full = self.prefix + name
        if full in self.spec:
            raise ValueError(f"duplicate tensor name {full}")
        self.spec[full] = TensorSpec(tuple(int(s) for s in shape), role, float(gain))

    def linear(self, name, n_in, n_out, bias=True, gain=1.0):
        self.add(name + ".weight", (n_out, n_in), "weight", gain)
        if bias:
            self.add(name + ".bias", (n_out,), "bias")

    def conv(self, name, n_in, n_out, k=3, bias=True, gain=1.0):
        self.add(name + ".weight", (n_out, n_in, k, k), "weight", gain)
        if bias:
            self.add(name + ".bias", (n_out,), "bias")

    def norm(self, name, dim, bias=True, weight_name="weight"):
        self.add(name + "." + weight_name, (dim,), "norm")
        if bias:
            self.add(name + ".bias", (dim,), "zeros")


# --------------------------------------------------------------------------------------
# UNet (ldm.modules.diffusionmodules.openaimodel.UNetModel, mirrors src/unet.hpp)
# --------------------------------------------------------------------------------------

def _resblock(b: _SpecBuilder, ch, emb_ch, out_ch):
    b.norm("in_layers.0", ch)
    b.conv("in_layers.2", ch, out_ch, 3)
    b.linear("emb_layers.1", emb_ch, out_ch)
    b.norm("out_layers.0", out_ch)
    b.conv("out_layers.3", out_ch, out_ch, 3)
    if out_ch != ch:
        b.conv("skip_connection", ch, out_ch, 1)


def _spatial_transformer(b: _SpecBuilder, ch, n_head, d_head, depth, context_dim, use_linear):
    inner = n_head * d_head
    b.norm("norm", ch)
    if use_linear:
        b.linear("proj_in", ch, inner)
    else:
        b.conv("proj_in", ch, inner, 1)
    for d in range(depth):
        t = b.sub(f"transformer_blocks.{d}.")
        t.linear("attn1.to_q", inner, inner, bias=False)
        t.linear("attn1.to_k", inner, inner, bias=False)
        t.linear("attn1.to_v", inner, inner, bias=False)
        t.linear("attn1.to_out.0", inner, inner)
        t.linear("ff.net.0.proj", inner, inner * 4 * 2)  # GEGLU
        t.linear("ff.net.2", inner * 4, inner)
        t.linear("attn2.to_q", inner, inner, bias=False)
        t.linear("attn2.to_k", context_dim, inner, bias=False)
        t.linear("attn2.to_v", context_dim, inner, bias=False)
        t.linear("attn2.to_out.0", inner, inner)
        t.norm("norm1", inner)
        t.norm("norm2", inner)
        t.norm("norm3", inner)
    if use_linear:
        b.linear("proj_out", inner, ch)
    else:
        b.conv("proj_out", inner, ch, 1)


def unet_spec(prefix="model.diffusion_model.", *, in_channels=4, out_channels=4, model_channels=320,
              num_res_blocks=2, attention_resolutions=(4, 2, 1), channel_mult=(1, 2, 4, 4),
              transformer_depth=(1, 1, 1, 1), num_heads=8, num_head_channels=-1, context_dim=768,
              use_linear_projection=False, adm_in_channels=None, spec=None):
    """LDM UNetModel tensor table (names as in the original single-file checkpoints)."""
    b = _SpecBuilder(spec, prefix)
    emb = model_channels * 4
    b.linear("time_embed.0", model_channels, emb)
    b.linear("time_embed.2", emb, emb)
    if adm_in_channels:
        b.linear("label_emb.0.0", adm_in_channels, emb)
        b.linear("label_emb.0.2", emb, emb)
    b.conv("input_blocks.0.0", in_channels, model_channels, 3)

    def heads(ch):
        if num_head_channels != -1:
            return ch // num_head_channels, num_head_channels
        return num_heads, ch // num_heads

    chans = [model_channels]
    ch = model_channels
    idx = 0
    ds = 1
    for i, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            idx += 1
            _resblock(b.sub(f"input_blocks.{idx}.0."), ch, emb, mult * model_channels)
            ch = mult * model_channels
            if ds in attention_resolutions:
                nh, dh = heads(ch)
                _spatial_transformer(b.sub(f"input_blocks.{idx}.1."), ch, nh, dh, transformer_depth[i],
                                     context_dim, use_linear_projection)
            chans.append(ch)
        if i != len(channel_mult) - 1:
            idx += 1
            b.conv(f"input_blocks.{idx}.0.op", ch, ch, 3)
            chans.append(ch)
            ds *= 2

    nh, dh = heads(ch)
    _resblock(b.sub("middle_block.0."), ch, emb, ch)
    _spatial_transformer(b.sub("middle_block.1."), ch, nh, dh, transformer_depth[-1], context_dim,
                         use_linear_projection)
    _resblock(b.sub("middle_block.2."), ch, emb, ch)

    oidx = 0
    for i in range(len(channel_mult) - 1, -1, -1):
        mult = channel_mult[i]
        for j in range(num_res_blocks + 1):
            ich = chans.pop()
            _resblock(b.sub(f"output_blocks.{oidx}.0."), ch + ich, emb, mult * model_channels)
            ch = mult * model_channels
            up_idx = 1
            if ds in attention_resolutions:
                nh, dh = heads(ch)
                _spatial_transformer(b.sub(f"output_blocks.{oidx}.1."), ch, nh, dh, transformer_depth[i],
                                     context_dim, use_linear_projection)
                up_idx += 1
            if i > 0 and j == num_res_blocks:
                b.conv(f"output_blocks.{oidx}.{up_idx}.conv", ch, ch, 3)
                ds //= 2
            oidx += 1

    b.norm("out.0", ch)
    b.conv("out.2", model_channels, out_channels, 3)
    return b.spec


def sd15_unet_spec(prefix="model.diffusion_model.", spec=None):
    return unet_spec(prefix, spec=spec)


def sdxl_unet_spec(prefix="model.diffusion_model.", spec=None):
    return unet_spec(prefix, attention_resolutions=(4, 2), channel_mult=(1, 2, 4), transformer_depth=(1, 2, 10),
                     num_head_channels=64, context_dim=2048, use_linear_projection=True, adm_in_channels=2816,
                     spec=spec)


# --------------------------------------------------------------------------------------
# AutoencoderKL (mirrors src/auto_encoder_kl.hpp; LDM / BFL "ae" names)
# --------------------------------------------------------------------------------------

def _vae_resnet(b: _SpecBuilder, cin, cout):
    b.norm("norm1", cin)
    b.conv("conv1", cin, cout, 3)
    b.norm("norm2", cout)
    b.conv("conv2", cout, cout, 3)
    if cin != cout:
        b.conv("nin_shortcut", cin, cout, 1)


def _vae_attn(b: _SpecBuilder, c):
    b.norm("norm", c)
    for n in ("q", "k", "v", "proj_out"):
        b.conv(n, c, c, 1)


def sd_vae_spec(prefix="first_stage_model.", *, z_channels=4, embed_dim=4, use_quant=True, ch=128,
                ch_mult=(1, 2, 4, 4), num_res_blocks=2, in_channels=3, out_ch=3, decoder=True, encoder=True,
                spec=None):
    """AutoencoderKL tensor table.  SD1/SDXL: defaults; Flux/Z-Image "ae": z_channels=16, use_quant=False."""
    b = _SpecBuilder(spec, prefix)
    if encoder:
        e = b.sub("encoder.")
        e.conv("conv_in", in_channels, ch, 3)
        block_in = ch
        for i, m in enumerate(ch_mult):
            block_in = ch if i == 0 else ch * ch_mult[i - 1]
            block_out = ch * m
            for j in range(num_res_blocks):
                _vae_resnet(e.sub(f"down.{i}.block.{j}."), block_in, block_out)
                block_in = block_out
            if i != len(ch_mult) - 1:
                e.conv(f"down.{i}.downsample.conv", block_in, block_in, 3)
        _vae_resnet(e.sub("mid.block_1."), block_in, block_in)
        _vae_attn(e.sub("mid.attn_1."), block_in)
        _vae_resnet(e.sub("mid.block_2."), block_in, block_in)
        e.norm("norm_out", block_in)
        e.conv("conv_out", block_in, 2 * z_channels, 3)
    if decoder:
        d = b.sub("decoder.")
        block_in = ch * ch_mult[-1]
        d.conv("conv_in", z_channels, block_in, 3)
        _vae_resnet(d.sub("mid.block_1."), block_in, block_in)
        _vae_attn(d.sub("mid.attn_1."), block_in)
        _vae_resnet(d.sub("mid.block_2."), block_in, block_in)
        for i in range(len(ch_mult) - 1, -1, -1):
            block_out = ch * ch_mult[i]
            for j in range(num_res_blocks + 1):
                _vae_resnet(d.sub(f"up.{i}.block.{j}."), block_in, block_out)
                block_in = block_out
            if i != 0:
                d.conv(f"up.{i}.upsample.conv", block_in, block_in, 3)
        d.norm("norm_out", block_in)
        d.conv("conv_out", block_in, out_ch, 3)
    if use_quant:
        if encoder:
            b.conv("quant_conv", 2 * z_channels, 2 * embed_dim, 1)
        if decoder:
            b.conv("post_quant_conv", embed_dim, z_channels, 1)
    return b.spec


def flux_vae_spec(prefix="", spec=None):
    """Flux / Z-Image autoencoder (ae.safetensors): 16 latent channels, no quant convs."""
    return sd_vae_spec(prefix, z_channels=16, embed_dim=16, use_quant=False, spec=spec)


# --------------------------------------------------------------------------------------
# CLIP text encoders (mirrors src/clip.hpp)
# --------------------------------------------------------------------------------------

def clip_text_spec(prefix="text_model.", *, hidden=768, layers=12, intermediate=3072, vocab=49408, n_pos=77,
                   spec=None):
    """HF transformers CLIPTextModel naming (``text_model.*``): CLIP ViT-L/14 by default (123.06 M)."""
    b = _SpecBuilder(spec, prefix)
    b.add("embeddings.token_embedding.weight", (vocab, hidden), "embed")
    b.add("embeddings.position_embedding.weight", (n_pos, hidden), "embed")
    for i in range(layers):
        l = b.sub(f"encoder.layers.{i}.")
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            l.linear("self_attn." + p, hidden, hidden)
        l.norm("layer_norm1", hidden)
        l.linear("mlp.fc1", hidden, intermediate)
        l.linear("mlp.fc2", intermediate, hidden)
        l.norm("layer_norm2", hidden)
    b.norm("final_layer_norm", hidden)
    return b.spec


def clip_l_spec(prefix="text_model.", spec=None):
    return clip_text_spec(prefix, spec=spec)


def open_clip_text_spec(prefix="conditioner.embedders.1.model.", *, hidden=1280, layers=32, intermediate=5120,
                        vocab=49408, n_pos=77, projection_dim=1280, spec=None):
    """OpenCLIP naming (``model.transformer.resblocks.N.attn.in_proj_weight`` ...): ViT-bigG/14 by default."""
    b = _SpecBuilder(spec, prefix)
    b.add("positional_embedding", (n_pos, hidden), "embed")
    b.add("text_projection", (hidden, projection_dim), "weight")
    b.add("token_embedding.weight", (vocab, hidden), "embed")
    b.norm("ln_final", hidden)
    for i in range(layers):
        r = b.sub(f"transformer.resblocks.{i}.")
        r.add("attn.in_proj_weight", (3 * hidden, hidden), "weight")
        r.add("attn.in_proj_bias", (3 * hidden,), "bias")
        r.linear("attn.out_proj", hidden, hidden)
        r.norm("ln_1", hidden)
        r.norm("ln_2", hidden)
        r.linear("mlp.c_fc", hidden, intermediate)
        r.linear("mlp.c_proj", intermediate, hidden)
    return b.spec


# --------------------------------------------------------------------------------------
# Full single-file checkpoints
# --------------------------------------------------------------------------------------

def sd15_spec():
    """sd-v1-5 single file: UNet + VAE + CLIP-L (CompVis naming), ~1.066 B params."""
    spec = sd15_unet_spec()
    sd_vae_spec("first_stage_model.", spec=spec)
    clip_text_spec("cond_stage_model.transformer.text_model.", spec=spec)
    return spec


def sdxl_spec():
    """sd_xl_base_1.0 single file: UNet + VAE + CLIP-L (embedders.0) + OpenCLIP bigG (embedders.1)."""
    spec = sdxl_unet_spec()
    sd_vae_spec("first_stage_model.", spec=spec)
    clip_text_spec("conditioner.embedders.0.transformer.text_model.", spec=spec)
    open_clip_text_spec("conditioner.embedders.1.model.", spec=spec)
    return spec


# --------------------------------------------------------------------------------------
# T5-XXL encoder (mirrors src/t5.hpp; t5xxl_fp16.safetensors naming)
# --------------------------------------------------------------------------------------

def t5xxl_spec(prefix="", *, layers=24, d_model=4096, d_ff=10240, n_heads=64, d_kv=64, vocab=32128,
               rel_buckets=32, spec=None):
    b = _SpecBuilder(spec, prefix)
    inner = n_heads * d_kv
    for i in range(layers):
        blk = b.sub(f"encoder.block.{i}.")
        # T5 attention has no 1/sqrt(d) scaling: init q like T5 does ((d_model*d_kv)^-0.5)
        blk.linear("layer.0.SelfAttention.q", d_model, inner, bias=False, gain=1.0 / math.sqrt(d_kv))
        blk.linear("layer.0.SelfAttention.k", d_model, inner, bias=False)
        blk.linear("layer.0.SelfAttention.v", d_model, inner, bias=False)
        blk.linear("layer.0.SelfAttention.o", inner, d_model, bias=False)
        if i == 0:
            blk.add("layer.0.SelfAttention.relative_attention_bias.weight", (rel_buckets, n_heads), "embed", 10.0)
        blk.add("layer.0.layer_norm.weight", (d_model,), "norm")
        blk.linear("layer.1.DenseReluDense.wi_0", d_model, d_ff, bias=False)
        blk.linear("layer.1.DenseReluDense.wi_1", d_model, d_ff, bias=False)
        blk.linear("layer.1.DenseReluDense.wo", d_ff, d_model, bias=False)
        blk.add("layer.1.layer_norm.weight", (d_model,), "norm")
    b.add("encoder.final_layer_norm.weight", (d_model,), "norm")
    b.add("shared.weight", (vocab, d_model), "embed", 50.0)  # real T5 embeddings are large (std ~ 1)
    return b.spec


# --------------------------------------------------------------------------------------
# Flux.1 DiT (mirrors src/flux.hpp; flux1-dev.safetensors naming)
# --------------------------------------------------------------------------------------

def flux_dit_spec(prefix="", *, depth=19, depth_single=38, hidden_size=3072, num_heads=None, head_dim=128,
                  in_channels=64, context_in_dim=4096, vec_in_dim=768, mlp_ratio=4.0, guidance_embed=True,
                  spec=None):
    """Flux.1-dev DiT (11.9 B params at full size).

    sd.cpp infers depth/depth_single/hidden_size/num_heads from the tensors, so tiny variants
    (e.g. depth=1, depth_single=1, hidden_size=256) load fine.  head_dim must stay 128 (rope axes).
    """
    if num_heads is None:
        num_heads = hidden_size // head_dim
    if num_heads * head_dim != hidden_size:
        raise ValueError("hidden_size must equal num_heads * head_dim")
    h = hidden_size
    mlp = int(h * mlp_ratio)
    b = _SpecBuilder(spec, prefix)
    b.linear("img_in", in_channels, h)
    b.linear("time_in.in_layer", 256, h)
    b.linear("time_in.out_layer", h, h)
    if vec_in_dim:
        b.linear("vector_in.in_layer", vec_in_dim, h)
        b.linear("vector_in.out_layer", h, h)
    if guidance_embed:
        b.linear("guidance_in.in_layer", 256, h)
        b.linear("guidance_in.out_layer", h, h)
    b.linear("txt_in", context_in_dim, h)
    for i in range(depth):
        d = b.sub(f"double_blocks.{i}.")
        for s in ("img", "txt"):
            d.linear(f"{s}_mod.lin", h, 6 * h)
            d.linear(f"{s}_attn.qkv", h, 3 * h)
            d.add(f"{s}_attn.norm.query_norm.scale", (head_dim,), "norm")
            d.add(f"{s}_attn.norm.key_norm.scale", (head_dim,), "norm")
            d.linear(f"{s}_attn.proj", h, h)
            d.linear(f"{s}_mlp.0", h, mlp)
            d.linear(f"{s}_mlp.2", mlp, h)
    for i in range(depth_single):
        s = b.sub(f"single_blocks.{i}.")
        s.linear("linear1", h, 3 * h + mlp)
        s.linear("linear2", h + mlp, h)
        s.add("norm.query_norm.scale", (head_dim,), "norm")
        s.add("norm.key_norm.scale", (head_dim,), "norm")
        s.linear("modulation.lin", h, 3 * h)
    b.linear("final_layer.linear", h, in_channels)
    b.linear("final_layer.adaLN_modulation.1", h, 2 * h)
    return b.spec


# --------------------------------------------------------------------------------------
# Z-Image (mirrors src/z_image.hpp) and Qwen3 text encoder (src/llm.hpp)
# --------------------------------------------------------------------------------------

def zimage_dit_spec(prefix="", *, hidden_size=3840, num_layers=30, num_refiner_layers=2, head_dim=128,
                    num_heads=30, num_kv_heads=30, multiple_of=256, ffn_dim_multiplier=8.0 / 3.0, in_channels=16,
                    patch_size=2, cap_feat_dim=2560, adaln_dim=256, spec=None):
    """Z-Image-Turbo DiT (6.15 B params).  sd.cpp hard-codes the sizes: only the full size loads."""
    h = hidden_size
    ff = int(ffn_dim_multiplier * h)
    ff = multiple_of * ((ff + multiple_of - 1) // multiple_of)
    ad = min(h, adaln_dim)
    b = _SpecBuilder(spec, prefix)
    b.add("cap_pad_token", (1, h), "embed")
    b.add("x_pad_token", (1, h), "embed")
    b.linear("x_embedder", patch_size * patch_size * in_channels, h)
    b.linear("t_embedder.mlp.0", 256, min(h, 1024))
    b.linear("t_embedder.mlp.2", min(h, 1024), ad)
    b.add("cap_embedder.0.weight", (cap_feat_dim,), "norm")
    b.linear("cap_embedder.1", cap_feat_dim, h)

    def block(bb: _SpecBuilder, modulation):
        bb.linear("attention.qkv", h, (num_heads + 2 * num_kv_heads) * head_dim, bias=False)
        bb.linear("attention.out", num_heads * head_dim, h, bias=False)
        bb.add("attention.q_norm.weight", (head_dim,), "norm")
        bb.add("attention.k_norm.weight", (head_dim,), "norm")
        bb.linear("feed_forward.w1", h, ff, bias=False)
        bb.linear("feed_forward.w2", ff, h, bias=False)
        bb.linear("feed_forward.w3", h, ff, bias=False)
        for n in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"):
            bb.add(n + ".weight", (h,), "norm")
        if modulation:
            bb.linear("adaLN_modulation.0", ad, 4 * h)

    for i in range(num_refiner_layers):
        block(b.sub(f"noise_refiner.{i}."), True)
    for i in range(num_refiner_layers):
        block(b.sub(f"context_refiner.{i}."), False)
    for i in range(num_layers):
        block(b.sub(f"layers.{i}."), True)
    b.linear("final_layer.linear", h, patch_size * patch_size * in_channels)
    b.linear("final_layer.adaLN_modulation.1", ad, h)
    return b.spec


def qwen3_spec(prefix="", *, layers=36, hidden=2560, intermediate=9728, num_heads=32, num_kv_heads=8, head_dim=128,
               vocab=151936, spec=None):
    """Qwen3 text model (``model.*`` names, tied embeddings -> no lm_head).  Qwen3-4B by default (4.02 B).

    sd.cpp infers layers / hidden / intermediate / vocab from the tensors (heads are fixed 32/8 x 128),
    so fewer layers give a valid tiny encoder.
    """
    b = _SpecBuilder(spec, prefix + "model.")
    b.add("embed_tokens.weight", (vocab, hidden), "embed")
    for i in range(layers):
        l = b.sub(f"layers.{i}.")
        l.linear("self_attn.q_proj", hidden, num_heads * head_dim, bias=False)
        l.linear("self_attn.k_proj", hidden, num_kv_heads * head_dim, bias=False)
        l.linear("self_attn.v_proj", hidden, num_kv_heads * head_dim, bias=False)
        l.linear("self_attn.o_proj", num_heads * head_dim, hidden, bias=False)
        l.add("self_attn.q_norm.weight", (head_dim,), "norm")
        l.add("self_attn.k_norm.weight", (head_dim,), "norm")
        l.linear("mlp.gate_proj", hidden, intermediate, bias=False)
        l.linear("mlp.up_proj", hidden, intermediate, bias=False)
        l.linear("mlp.down_proj", intermediate, hidden, bias=False)
        l.add("input_layernorm.weight", (hidden,), "norm")
        l.add("post_attention_layernorm.weight", (hidden,), "norm")
    b.add("norm.weight", (hidden,), "norm")
    return b.spec


# --------------------------------------------------------------------------------------
# ESRGAN upscaler (BasicSR RRDBNet, RealESRGAN_x4plus naming; mirrors src/esrgan.hpp)
# --------------------------------------------------------------------------------------

def esrgan_spec(prefix="", *, num_block=23, scale=4, num_in_ch=3, num_out_ch=3, num_feat=64, num_grow_ch=32,
                spec=None):
    """RRDBNet as RealESRGAN_x4plus.pth stores it (conv_first, body.N.rdbK.convL, conv_body, conv_up1/2, ...).

    sd.cpp infers the block count from the ``body.N.`` names and the scale from conv_up1/conv_up2,
    so ``num_block=1`` gives a tiny model it loads; num_feat/num_grow_ch/channels are hard-coded
    there (64/32/3), keep the defaults for a loadable file.
    """
    b = _SpecBuilder(spec, prefix)
    b.conv("conv_first", num_in_ch, num_feat)
    for i in range(num_block):
        for j in range(1, 4):
            rb = b.sub(f"body.{i}.rdb{j}.")
            for k in range(1, 6):
                n_out = num_feat if k == 5 else num_grow_ch
                rb.conv(f"conv{k}", num_feat + (k - 1) * num_grow_ch, n_out)
    b.conv("conv_body", num_feat, num_feat)
    if scale >= 2:
        b.conv("conv_up1", num_feat, num_feat)
    if scale == 4:
        b.conv("conv_up2", num_feat, num_feat)
    b.conv("conv_hr", num_feat, num_feat)
    b.conv("conv_last", num_feat, num_out_ch)
    return b.spec


# --------------------------------------------------------------------------------------
# Counting helpers
# --------------------------------------------------------------------------------------

def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def spec_params(spec) -> int:
    """Number of parameters (elements) in a spec."""
    return sum(_numel(t.shape) for t in spec.values())


def spec_bytes(spec, dtype: str = "f16", with_header: bool = False, metadata=None) -> int:
    """Bytes of tensor data for ``dtype`` (plus the safetensors header if ``with_header``)."""
    dt = _norm_dtype(dtype)
    n = spec_params(spec) * DTYPES[dt][1]
    if with_header:
        n += len(safetensors_header(spec, dt, metadata))
    return n


_COMPONENT_PREFIXES = (
    "model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.0.",
    "conditioner.embedders.1.",
)


def spec_summary(spec, dtype: str = "f16", component_of=None) -> Dict[str, Dict[str, int]]:
    """Params and bytes per component (top-level prefix), plus ``"total"``."""
    dt = _norm_dtype(dtype)
    esz = DTYPES[dt][1]

    def default_component(name):
        for p in _COMPONENT_PREFIXES:
            if name.startswith(p):
                return p.rstrip(".")
        return name.split(".", 1)[0]

    component_of = component_of or default_component
    out: Dict[str, Dict[str, int]] = collections.OrderedDict()
    for name, t in spec.items():
        c = component_of(name)
        d = out.setdefault(c, {"params": 0, "bytes": 0, "tensors": 0})
        n = _numel(t.shape)
        d["params"] += n
        d["bytes"] += n * esz
        d["tensors"] += 1
    tot = {"params": spec_params(spec), "bytes": spec_params(spec) * esz, "tensors": len(spec)}
    out["total"] = tot
    return out


# --------------------------------------------------------------------------------------
# Value generation
# --------------------------------------------------------------------------------------

_FILL = {"norm": 1.0, "zeros": 0.0}


def _std_of(t: TensorSpec) -> float:
    if t.role == "weight":
        fan_in = _numel(t.shape[1:]) if len(t.shape) > 1 else t.shape[0]
        return t.gain / math.sqrt(max(fan_in, 1))
    if t.role == "bias":
        return 0.01 * t.gain
    if t.role == "embed":
        return 0.02 * t.gain
    raise ValueError(f"role {t.role!r} has no std")


def _tensor_seed(seed: int, name: str) -> int:
    h = hashlib.blake2b(f"pysdcpp.testing/{int(seed)}/{name}".encode(), digest_size=16).digest()
    return int.from_bytes(h, "little")


_BITS_DTYPE = {"f32": np.dtype("<u4"), "f16": np.dtype("<u2"), "bf16": np.dtype("<u2")}
_UNIT_Q = None
_TABLES: Dict[Tuple[float, str], np.ndarray] = {}


def _unit_quantiles() -> np.ndarray:
    """The 65536 quantiles ((i+0.5)/65536) of N(0, 1), exactly antisymmetric."""
    global _UNIT_Q
    if _UNIT_Q is None:
        from statistics import NormalDist

        nd = NormalDist()
        lo = np.array([nd.inv_cdf((i + 0.5) / 65536.0) for i in range(32768)], dtype=np.float64)
        _UNIT_Q = np.concatenate([lo, -lo[::-1]])
    return _UNIT_Q


def _bf16_values(x: np.ndarray) -> np.ndarray:
    """Round float64 -> bf16 (RNE), flush |v| < 2**-17 to 0 (so the values are exact f16 too); float32."""
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    v = u.astype("<u4").view("<f4").copy()
    v[np.abs(v) < 2.0 ** -17] = 0.0
    return v


def _value_table(std: float, dt: str) -> np.ndarray:
    """uint16 random -> bit pattern of a N(0, std^2) quantile, identical values for f32/f16/bf16."""
    key = (float(std), dt)
    tab = _TABLES.get(key)
    if tab is None:
        v = _bf16_values(_unit_quantiles() * std)
        if dt == "f32":
            tab = v.view("<u4").copy()
        elif dt == "bf16":
            tab = (v.view("<u4") >> 16).astype("<u2")
        else:
            tab = v.astype("<f2").view("<u2").copy()
        _TABLES[key] = tab
    return tab


_CONST_BITS = {
    "f32": lambda v: np.array([v], "<f4").view("<u4")[0],
    "f16": lambda v: np.array([v], "<f2").view("<u2")[0],
    "bf16": lambda v: np.uint16(np.array([v], "<f4").view("<u4")[0] >> 16),
}
_SUB = 1 << 18  # generation sub-block (cache friendly table lookups)


def _gen_bits(t: TensorSpec, tseed: int, start: int, n: int, dt: str, out: Optional[np.ndarray] = None):
    """Raw little-endian bit patterns of elements [start, start+n) of a tensor.

    Element i of a tensor is table[u16 number i of the tensor's PCG64DXSM stream], so any chunk
    can be produced independently (the stream is advanced to start/4).
    """
    if out is None:
        out = np.empty(n, dtype=_BITS_DTYPE[dt])
    if t.role in _FILL:
        out.fill(_CONST_BITS[dt](_FILL[t.role]))
        return out
    tab = _value_table(_std_of(t), dt)
    if start % 4:
        raise ValueError("start must be a multiple of 4")
    bg = np.random.PCG64DXSM(tseed)
    if start:
        bg.advance(start // 4)
    for s in range(0, n, _SUB):
        m = min(_SUB, n - s)
        r = bg.random_raw((m + 3) // 4).astype("<u8", copy=False).view("<u2")[:m]
        np.take(tab, r, out=out[s:s + m])
    return out


def generate_tensor(t: TensorSpec, name: str, seed: int = 0, dtype: str = "f32") -> np.ndarray:
    """Whole tensor as a numpy array (float32 for f32/bf16 values, float16 for f16)."""
    dt = _norm_dtype(dtype)
    bits = _gen_bits(t, _tensor_seed(seed, name), 0, _numel(t.shape), dt)
    if dt == "f16":
        return bits.view("<f2").reshape(t.shape)
    if dt == "bf16":
        bits = bits.astype("<u4") << 16
    return bits.view("<f4").reshape(t.shape)


# --------------------------------------------------------------------------------------
# safetensors writing
# --------------------------------------------------------------------------------------

def safetensors_header(spec, dtype: str = "f16", metadata: Optional[Dict[str, str]] = None) -> bytes:
    """8-byte length + JSON header (space padded to 8-byte alignment)."""
    dt = _norm_dtype(dtype)
    st_name, esz = DTYPES[dt]
    hdr = collections.OrderedDict()
    if metadata:
        hdr["__metadata__"] = collections.OrderedDict((str(k), str(v)) for k, v in metadata.items())
    off = 0
    for name, t in spec.items():
        nb = _numel(t.shape) * esz
        hdr[name] = {"dtype": st_name, "shape": list(t.shape), "data_offsets": [off, off + nb]}
        off += nb
    js = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    js += b" " * ((-len(js)) % 8)
    return struct.pack("<Q", len(js)) + js


def read_safetensors_header(path) -> Tuple[Dict, int]:
    """Parse a safetensors header; returns (header dict, data start offset)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=collections.OrderedDict)
    return hdr, 8 + n


def load_safetensors(path, names=None) -> Dict[str, np.ndarray]:
    """Read tensors back as numpy arrays (F32/BF16 -> float32, F16 -> float16).  For tests."""
    hdr, start = read_safetensors_header(path)
    want = None if names is None else set(names)
    out = collections.OrderedDict()
    with open(path, "rb") as f:
        for name, info in hdr.items():
            if name == "__metadata__" or (want is not None and name not in want):
                continue
            b, e = info["data_offsets"]
            f.seek(start + b)
            raw = f.read(e - b)
            if info["dtype"] == "F32":
                a = np.frombuffer(raw, "<f4")
            elif info["dtype"] == "F16":
                a = np.frombuffer(raw, "<f2")
            elif info["dtype"] == "BF16":
                a = (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4")
            else:
                raise ValueError(f"unsupported dtype {info['dtype']}")
            out[name] = a.reshape(info["shape"])
    return out


_CHUNK = 1 << 22  # elements per work item (multiple of 4)


_O_WRONLY = os.O_WRONLY | getattr(os, "O_BINARY", 0)
_SEEK_LOCK = threading.Lock()


def _pwrite_all(fd, mv, pos):
    if hasattr(os, "pwrite"):
        while len(mv):
            w = os.pwrite(fd, mv, pos)
            mv = mv[w:]
            pos += w
    else:  # Windows: serialise seek + write
        with _SEEK_LOCK:
            os.lseek(fd, pos, os.SEEK_SET)
            while len(mv):
                mv = mv[os.write(fd, mv):]


def _write_job(fd, dt, job):
    _name, t, tseed, s, n, pos = job
    buf = _gen_bits(t, tseed, s, n, dt)
    _pwrite_all(fd, memoryview(buf).cast("B"), pos)
    return n


# process pool worker state
_P_STATE = {}


def _proc_init(path, dt):
    _P_STATE["fd"] = os.open(path, _O_WRONLY)
    _P_STATE["dt"] = dt


def _proc_job(job):
    return _write_job(_P_STATE["fd"], _P_STATE["dt"], job)


def write_safetensors(path, spec, seed: int = 0, dtype: str = "f16", workers: Optional[int] = None,
                      metadata: Optional[Dict[str, str]] = None, executor: str = "thread",
                      chunk: int = _CHUNK, verbose: bool = False) -> Dict[str, float]:
    """Write ``spec`` filled with random values to ``path``.

    The file is preallocated, offsets are computed from the header and ``workers`` threads
    (default: os.cpu_count()) or processes (``executor="process"``) fill chunks in place with
    ``os.pwrite``.  The result is byte-identical for any ``workers``/``executor``/``chunk``.
    Returns {"seconds", "bytes", "params"}.
    """
    dt = _norm_dtype(dtype)
    if chunk % 4:
        raise ValueError("chunk must be a multiple of 4")
    t0 = time.perf_counter()
    md = collections.OrderedDict(format="pt")
    md["pysdcpp.testing.seed"] = str(int(seed))
    if metadata:
        md.update((str(k), str(v)) for k, v in metadata.items())
    header = safetensors_header(spec, dt, md)
    total = len(header) + spec_bytes(spec, dt)
    seeds = {name: _tensor_seed(seed, name) for name in spec}
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        f.truncate(total)
    workers = workers or os.cpu_count() or 1
    esz = DTYPES[dt][1]

    def jobs():
        off = len(header)
        for name, t in spec.items():
            n = _numel(t.shape)
            for s in range(0, n, chunk):
                yield (name, t, seeds[name], s, min(chunk, n - s), off + s * esz)
            off += n * esz

    try:
        if workers <= 1:
            fd = os.open(tmp, _O_WRONLY)
            try:
                for j in jobs():
                    _write_job(fd, dt, j)
            finally:
                os.close(fd)
        elif executor == "process":
            import multiprocessing as mp

            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(workers, initializer=_proc_init, initargs=(tmp, dt)) as pool:
                for _ in pool.imap_unordered(_proc_job, jobs(), chunksize=4):
                    pass
        elif executor == "thread":
            fd = os.open(tmp, _O_WRONLY)
            try:
                with ThreadPoolExecutor(workers) as ex:
                    # bounded submission keeps memory at ~2*workers chunks
                    pending = collections.deque()
                    for j in jobs():
                        pending.append(ex.submit(_write_job, fd, dt, j))
                        if len(pending) >= 2 * workers:
                            pending.popleft().result()
                    while pending:
                        pending.popleft().result()
            finally:
                os.close(fd)
        else:
            raise ValueError(f"unknown executor {executor!r}")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dt_s = time.perf_counter() - t0
    if verbose:
        print(f"wrote {path}: {len(spec)} tensors, {spec_params(spec) / 1e9:.3f} B params, "
              f"{total / 2**30:.2f} GiB in {dt_s:.1f}s", file=sys.stderr)
    return {"seconds": dt_s, "bytes": total, "params": spec_params(spec)}


# --------------------------------------------------------------------------------------
# High level writers
# --------------------------------------------------------------------------------------

def write_sd15(path, seed: int = 0, dtype: str = "f16", workers: Optional[int] = None, **kw):
    """SD 1.5 single-file checkpoint (for ``sd-cli -m``).  Returns the write stats."""
    return write_safetensors(path, sd15_spec(), seed, dtype, workers, metadata={"pysdcpp.testing.arch": "sd15"}, **kw)


def write_sdxl(path, seed: int = 0, dtype: str = "f16", workers: Optional[int] = None, **kw):
    """SDXL base single-file checkpoint (for ``sd-cli -m``)."""
    return write_safetensors(path, sdxl_spec(), seed, dtype, workers, metadata={"pysdcpp.testing.arch": "sdxl"}, **kw)


def _write_components(outdir, files, makers, components, seed, workers, kw):
    """Write each requested component (makers: name -> (spec maker, dtype, metadata)) into
    outdir under its file name; returns {component: path}."""
    out = {}
    for c in components:
        make_spec, dt, metadata = makers[c]
        path = os.path.join(outdir, files[c])
        write_safetensors(path, make_spec(), seed, dt, workers, metadata=metadata, **kw)
        out[c] = path
    return out


FLUX_FILES = {"diffusion_model": "flux1-dev.safetensors", "clip_l": "clip_l.safetensors",
              "t5xxl": "t5xxl.safetensors", "vae": "ae.safetensors"}


def write_flux(outdir, seed: int = 0, dtype: str = "bf16", depth: int = 19, depth_single: int = 38,
               hidden_size: int = 3072, workers: Optional[int] = None, te_dtype: Optional[str] = None,
               vae_dtype: Optional[str] = None, components: Iterable[str] = tuple(FLUX_FILES), **kw):
    """Flux.1-dev: DiT + clip_l + t5xxl + ae into ``outdir``.

    Returns {component: path}.  Pass e.g. depth=1, depth_single=1, hidden_size=256 for a tiny DiT
    (t5xxl cannot be shrunk: sd.cpp hard-codes 24 x 4096; use components=(... without "t5xxl") to skip it).
    """
    os.makedirs(outdir, exist_ok=True)
    te_dtype = te_dtype or dtype
    vae_dtype = vae_dtype or dtype
    md = {"pysdcpp.testing.arch": f"flux depth={depth} depth_single={depth_single} hidden={hidden_size}"}
    makers = {
        "diffusion_model": (lambda: flux_dit_spec(depth=depth, depth_single=depth_single, hidden_size=hidden_size),
                            dtype, md),
        "clip_l": (clip_l_spec, te_dtype, {"pysdcpp.testing.arch": "clip_l"}),
        "t5xxl": (t5xxl_spec, te_dtype, {"pysdcpp.testing.arch": "t5xxl"}),
        "vae": (flux_vae_spec, vae_dtype, {"pysdcpp.testing.arch": "flux_ae"}),
    }
    return _write_components(outdir, FLUX_FILES, makers, components, seed, workers, kw)


ZIMAGE_FILES = {"diffusion_model": "z_image_turbo.safetensors", "llm": "qwen3_4b.safetensors",
                "vae": "ae.safetensors"}


def write_zimage(outdir, seed: int = 0, dtype: str = "bf16", llm_layers: int = 36, workers: Optional[int] = None,
                 te_dtype: Optional[str] = None, vae_dtype: Optional[str] = None,
                 components: Iterable[str] = tuple(ZIMAGE_FILES), **kw):
    """Z-Image-Turbo: DiT (full size, sd.cpp hard-codes it) + Qwen3-4B (``llm_layers`` layers) + ae."""
    os.makedirs(outdir, exist_ok=True)
    te_dtype = te_dtype or dtype
    vae_dtype = vae_dtype or dtype
    makers = {
        "diffusion_model": (zimage_dit_spec, dtype, {"pysdcpp.testing.arch": "z_image"}),
        "llm": (lambda: qwen3_spec(layers=llm_layers), te_dtype, {"pysdcpp.testing.arch": f"qwen3 layers={llm_layers}"}),
        "vae": (flux_vae_spec, vae_dtype, {"pysdcpp.testing.arch": "flux_ae"}),
    }
    return _write_components(outdir, ZIMAGE_FILES, makers, components, seed, workers, kw)


def write_esrgan(path, seed: int = 0, dtype: str = "f32", num_block: int = 1, scale: int = 4,
                 workers: Optional[int] = None, **kw):
    """RealESRGAN_x4plus-style upscaler (for ``sd-cli -M upscale --upscale-model``) with
    ``num_block`` RRDB blocks (the real model has 23; 1 keeps CPU tests fast)."""
    md = {"pysdcpp.testing.arch": f"esrgan num_block={num_block} scale={scale}"}
    return write_safetensors(path, esrgan_spec(num_block=num_block, scale=scale), seed, dtype, workers,
                             metadata=md, **kw)


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pysdcpp.testing",
                                 description="Write random-weight checkpoints that stable-diffusion.cpp loads.")
    sub = ap.add_subparsers(dest="arch", required=True)

    def common(p, default_dtype):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--dtype", default=default_dtype, choices=["f32", "f16", "bf16"])
        p.add_argument("--workers", type=int, default=None)
        p.add_argument("--executor", default="thread", choices=["thread", "process"])

    p = sub.add_parser("sd15", help="SD 1.5 single file")
    p.add_argument("out")
    common(p, "f16")
    p = sub.add_parser("sdxl", help="SDXL base single file")
    p.add_argument("out")
    common(p, "f16")
    p = sub.add_parser("flux", help="Flux.1-dev: DiT + clip_l + t5xxl + ae into OUTDIR")
    p.add_argument("outdir")
    common(p, "bf16")
    p.add_argument("--depth-double", type=int, default=19)
    p.add_argument("--depth-single", type=int, default=38)
    p.add_argument("--hidden-size", type=int, default=3072)
    p.add_argument("--te-dtype", default=None, choices=["f32", "f16", "bf16"])
    p.add_argument("--no-t5", action="store_true", help="skip t5xxl (4.76 B params)")
    p = sub.add_parser("zimage", help="Z-Image-Turbo: DiT + Qwen3-4B + ae into OUTDIR")
    p.add_argument("outdir")
    common(p, "bf16")
    p.add_argument("--llm-layers", type=int, default=36)
    p = sub.add_parser("esrgan", help="RealESRGAN_x4plus-style upscaler single file")
    p.add_argument("out")
    common(p, "f32")
    p.add_argument("--num-block", type=int, default=1, help="RRDB blocks (RealESRGAN_x4plus: 23)")
    p.add_argument("--scale", type=int, default=4, choices=[1, 2, 4])
    p = sub.add_parser("count", help="print params/bytes per component of the full-size specs")
    p.add_argument("--dtype", default="f16", choices=["f32", "f16", "bf16"])
    a = ap.parse_args(argv)

    kw = dict(verbose=True)
    if a.arch == "count":
        for name, spec in [("sd15", sd15_spec()), ("sdxl", sdxl_spec()), ("flux_dit", flux_dit_spec()),
                           ("clip_l", clip_l_spec()), ("t5xxl", t5xxl_spec()), ("flux_ae", flux_vae_spec()),
                           ("zimage_dit", zimage_dit_spec()), ("qwen3_4b", qwen3_spec()),
                           ("esrgan_x4", esrgan_spec())]:
            for comp, d in spec_summary(spec, a.dtype).items():
                print(f"{name:10s} {comp:28s} {d['params']:>14,d} params {d['bytes'] / 2**30:8.3f} GiB")
        return 0
    kw["executor"] = a.executor
    if a.arch == "sd15":
        write_sd15(a.out, a.seed, a.dtype, a.workers, **kw)
    elif a.arch == "sdxl":
        write_sdxl(a.out, a.seed, a.dtype, a.workers, **kw)
    elif a.arch == "flux":
        comps = [c for c in FLUX_FILES if not (a.no_t5 and c == "t5xxl")]
        paths = write_flux(a.outdir, a.seed, a.dtype, a.depth_double, a.depth_single, a.hidden_size, a.workers,
                           te_dtype=a.te_dtype, components=comps, **kw)
        print(json.dumps(paths, indent=1))
    elif a.arch == "esrgan":
        write_esrgan(a.out, a.seed, a.dtype, a.num_block, a.scale, a.workers, **kw)
    elif a.arch == "zimage":
        paths = write_zimage(a.outdir, a.seed, a.dtype, a.llm_layers, a.workers, **kw)
        print(json.dumps(paths, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
