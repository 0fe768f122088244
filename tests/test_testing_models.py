"""Tests of the random-weight checkpoint writer (pysdcpp.testing).

They load testing.py by file path, so they need neither the compiled package nor
``pysdcpp/__init__.py``.  All tests are fast (CPU, a few MB written) except the
opt-in sd-cli check (set PYSDCPP_SD_CLI=/path/to/sd-cli).
"""
from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_testing():
    for cand in (ROOT / "pysdcpp" / "testing.py",):
        if cand.exists():
            spec = importlib.util.spec_from_file_location("_pysdcpp_testing_under_test", cand)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod  # dataclass/pickle friendliness
            spec.loader.exec_module(mod)
            return mod, cand
    raise RuntimeError("testing.py not found")


T, TESTING_PY = _load_testing()


def tiny_flux():
    return T.flux_dit_spec(depth=1, depth_single=1, hidden_size=256)


def mixed_spec():
    """Small spec exercising every role, odd sizes and conv shapes."""
    s = T.flux_vae_spec(spec=None)
    small = type(s)()
    for i, (k, v) in enumerate(s.items()):
        if T._numel(v.shape) < 300_000:
            small[k] = v
    small["odd.weight"] = T.TensorSpec((7, 3), "weight")
    small["odd.embed"] = T.TensorSpec((5,), "embed")
    return small


# ----------------------------------------------------------------------------- counts

M = 1e6
B = 1e9
KNOWN_COUNTS = [
    # (what, spec factory, prefix filter, published count)
    ("sd15 unet", T.sd15_spec, "model.diffusion_model.", 859.52 * M),
    ("sd15 clip-l", T.sd15_spec, "cond_stage_model.", 123.06 * M),
    ("sd15 vae", T.sd15_spec, "first_stage_model.", 83.65 * M),
    ("sdxl unet", T.sdxl_spec, "model.diffusion_model.", 2.567 * B),
    ("sdxl clip-l", T.sdxl_spec, "conditioner.embedders.0.", 123.06 * M),
    ("sdxl open-clip bigG text", T.sdxl_spec, "conditioner.embedders.1.", 694.66 * M),
    ("flux dit", T.flux_dit_spec, "", 11.9 * B),
    ("clip_l", T.clip_l_spec, "", 123.06 * M),
    ("t5xxl encoder", T.t5xxl_spec, "", 4.76 * B),
    ("flux ae", T.flux_vae_spec, "", 83.82 * M),
    ("qwen3-4b", T.qwen3_spec, "", 4.02 * B),
    ("z-image dit", T.zimage_dit_spec, "", 6.15 * B),
]


@pytest.mark.parametrize("what,factory,prefix,expected", KNOWN_COUNTS, ids=[k[0] for k in KNOWN_COUNTS])
def test_param_counts_match_published(what, factory, prefix, expected):
    spec = factory()
    n = sum(T._numel(t.shape) for k, t in spec.items() if k.startswith(prefix))
    assert abs(n - expected) / expected < 0.005, (what, n, expected)


def test_exact_counts_and_bytes():
    # exact values, so that an accidental change of a table shows up
    assert T.spec_params(T.sd15_spec()) == 1_066_235_307
    assert T.spec_params(T.sdxl_spec()) == 3_468_837_867
    assert T.spec_params(T.flux_dit_spec()) == 11_901_408_320
    assert T.spec_params(T.t5xxl_spec()) == 4_762_310_656
    spec = T.sd15_spec()
    assert T.spec_bytes(spec, "f16") == 2 * T.spec_params(spec)
    assert T.spec_bytes(spec, "bf16") == 2 * T.spec_params(spec)
    assert T.spec_bytes(spec, "f32") == 4 * T.spec_params(spec)
    summary = T.spec_summary(spec, "f16")
    assert summary["model.diffusion_model"]["params"] == 859_520_964
    assert summary["total"]["bytes"] == T.spec_bytes(spec, "f16")
    assert sum(v["params"] for k, v in summary.items() if k != "total") == summary["total"]["params"]


# ----------------------------------------------------------------------------- names

def test_sd15_names_and_shapes():
    s = T.sd15_spec()
    expect = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.conv_out.weight": (8, 512, 3, 3),
        "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
        "first_stage_model.decoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    }
    for k, shape in expect.items():
        assert s[k].shape == shape, k
    assert "model.diffusion_model.output_blocks.12.0.in_layers.0.weight" not in s
    assert not any(k.startswith("model.diffusion_model.label_emb") for k in s)


def test_sdxl_names_and_version_markers():
    s = T.sdxl_spec()
    expect = {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.4.1.proj_in.weight": (640, 640),
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "model.diffusion_model.middle_block.1.transformer_blocks.9.norm3.weight": (1280,),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight": (768, 768),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
    }
    for k, shape in expect.items():
        assert s[k].shape == shape, k
    # what sd.cpp's get_sd_version() keys on for VERSION_SDXL
    assert any("model.diffusion_model.middle_block.1." in k for k in s)
    assert any("model.diffusion_model.output_blocks.3.1.transformer_blocks.1" in k for k in s)
    assert "model.diffusion_model.input_blocks.0.0.weight" in s


def test_flux_names_and_tiny_variant():
    s = T.flux_dit_spec()
    assert s["double_blocks.18.img_mod.lin.weight"].shape == (18432, 3072)
    assert s["double_blocks.0.txt_attn.norm.key_norm.scale"].shape == (128,)
    assert s["single_blocks.37.linear1.weight"].shape == (21504, 3072)
    assert s["single_blocks.37.linear2.weight"].shape == (3072, 15360)
    assert s["final_layer.linear.weight"].shape == (64, 3072)
    assert s["guidance_in.in_layer.weight"].shape == (3072, 256)
    assert s["txt_in.weight"].shape == (3072, 4096)
    assert "single_blocks.38.linear1.weight" not in s and "double_blocks.19.img_mod.lin.weight" not in s
    t = tiny_flux()
    assert t["txt_in.weight"].shape == (256, 4096)
    assert "double_blocks.1.img_mod.lin.weight" not in t
    with pytest.raises(ValueError):
        T.flux_dit_spec(hidden_size=300)
    t5 = T.t5xxl_spec()
    assert t5["shared.weight"].shape == (32128, 4096)
    assert t5["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape == (32, 64)
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in t5
    assert t5["encoder.block.23.layer.1.DenseReluDense.wo.weight"].shape == (4096, 10240)
    ae = T.flux_vae_spec()
    assert ae["decoder.conv_in.weight"].shape == (512, 16, 3, 3)
    assert ae["encoder.conv_out.weight"].shape == (32, 512, 3, 3)
    assert not any("quant_conv" in k for k in ae)


def test_zimage_names():
    s = T.zimage_dit_spec()
    assert s["layers.29.attention.qkv.weight"].shape == (11520, 3840)
    assert s["layers.0.feed_forward.w1.weight"].shape == (10240, 3840)
    assert s["noise_refiner.1.adaLN_modulation.0.weight"].shape == (15360, 256)
    assert "context_refiner.0.adaLN_modulation.0.weight" not in s
    assert s["cap_embedder.1.weight"].shape == (3840, 2560)
    q = T.qwen3_spec(layers=2)
    assert q["model.embed_tokens.weight"].shape == (151936, 2560)
    assert q["model.layers.1.self_attn.k_proj.weight"].shape == (1024, 2560)
    assert "model.layers.2.mlp.up_proj.weight" not in q


def test_names_unique_and_roles_valid():
    for f in (T.sd15_spec, T.sdxl_spec, T.flux_dit_spec, T.t5xxl_spec, T.zimage_dit_spec, T.qwen3_spec):
        s = f()
        assert len(s) == len(set(s))
        for k, t in s.items():
            assert t.role in ("weight", "bias", "embed", "norm", "zeros"), k
            assert all(isinstance(d, int) and d > 0 for d in t.shape), k
            if k.endswith(".bias"):
                assert t.role in ("bias", "zeros"), k


# ----------------------------------------------------------------------------- file format

def _parse(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return data, n, header


@pytest.mark.parametrize("dtype,st,esz", [("f16", "F16", 2), ("bf16", "BF16", 2), ("f32", "F32", 4)])
def test_header_valid(tmp_path, dtype, st, esz):
    spec = mixed_spec()
    p = tmp_path / "m.safetensors"
    T.write_safetensors(p, spec, seed=1, dtype=dtype, workers=2, metadata={"k": "v"})
    data, n, header = _parse(p)
    assert n % 8 == 0
    assert data[8:8 + n].decode("utf-8").rstrip(" ") == data[8:8 + n].decode("utf-8").strip()
    meta = header.pop("__metadata__")
    assert meta["k"] == "v" and meta["pysdcpp.testing.seed"] == "1"
    assert all(isinstance(v, str) for v in meta.values())
    assert list(header) == list(spec)  # order preserved
    end = 0
    for name, info in header.items():
        assert info["dtype"] == st
        assert tuple(info["shape"]) == spec[name].shape
        b, e = info["data_offsets"]
        assert b == end, name  # contiguous
        assert e - b == esz * T._numel(info["shape"])
        end = e
    assert 8 + n + end == len(data)  # in bounds, no trailing bytes
    assert T.read_safetensors_header(p)[1] == 8 + n
    assert len(data) == T.spec_bytes(spec, dtype, with_header=True,
                                     metadata={"format": "pt", "pysdcpp.testing.seed": "1", "k": "v"})


def test_deterministic_and_seed_dependent(tmp_path):
    spec = tiny_flux()
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    T.write_safetensors(a, spec, seed=7, dtype="bf16", workers=1)
    T.write_safetensors(b, spec, seed=7, dtype="bf16", workers=3, chunk=1 << 16)
    T.write_safetensors(c, spec, seed=8, dtype="bf16", workers=2)
    assert a.read_bytes() == b.read_bytes()
    ta, tc = T.load_safetensors(a), T.load_safetensors(c)
    for k in ta:
        if spec[k].role in ("weight", "bias", "embed"):
            assert not np.array_equal(ta[k], tc[k]), k


@pytest.mark.skipif(not hasattr(os, "fork"), reason="process executor uses fork")
def test_process_executor_same_bytes(tmp_path):
    spec = mixed_spec()
    a, b = tmp_path / "a", tmp_path / "b"
    T.write_safetensors(a, spec, seed=3, dtype="f16", workers=1)
    T.write_safetensors(b, spec, seed=3, dtype="f16", workers=2, executor="process", chunk=1 << 12)
    assert a.read_bytes() == b.read_bytes()


def test_tensor_independent_of_other_tensors(tmp_path):
    # a tensor's values depend only on (seed, name, shape, role): same in a tiny and a full spec
    full = T.flux_dit_spec(depth=2, depth_single=1, hidden_size=256)
    small = type(full)((k, v) for k, v in full.items() if k.startswith("double_blocks.1."))
    a, b = tmp_path / "a", tmp_path / "b"
    T.write_safetensors(a, full, seed=5, dtype="f16", workers=2)
    T.write_safetensors(b, small, seed=5, dtype="f16", workers=1)
    ta, tb = T.load_safetensors(a), T.load_safetensors(b)
    for k in tb:
        assert np.array_equal(ta[k], tb[k]), k


def test_chunks_match_whole_tensor():
    t = T.TensorSpec((1000, 37), "weight")
    tseed = T._tensor_seed(0, "x")
    whole = T._gen_bits(t, tseed, 0, 37000, "bf16")
    parts = np.concatenate([T._gen_bits(t, tseed, s, min(4096, 37000 - s), "bf16") for s in range(0, 37000, 4096)])
    assert np.array_equal(whole, parts)


def test_same_values_in_every_dtype(tmp_path):
    spec = mixed_spec()
    vals = {}
    for dt in ("f32", "f16", "bf16"):
        p = tmp_path / f"m_{dt}.safetensors"
        T.write_safetensors(p, spec, seed=11, dtype=dt, workers=2)
        vals[dt] = T.load_safetensors(p)
    for k in spec:
        a = vals["f32"][k]
        assert np.array_equal(a, vals["f16"][k].astype(np.float32)), k
        assert np.array_equal(a, vals["bf16"][k]), k


def test_value_statistics():
    rng_names = {
        "w": T.TensorSpec((512, 256, 3, 3), "weight"),
        "l": T.TensorSpec((3072, 768), "weight", 0.5),
        "b": T.TensorSpec((100_000,), "bias"),
        "e": T.TensorSpec((1000, 768), "embed"),
        "n": T.TensorSpec((768,), "norm"),
        "z": T.TensorSpec((768,), "zeros"),
    }
    for name, t in rng_names.items():
        a = T.generate_tensor(t, name, seed=0, dtype="f32").astype(np.float64)
        assert a.shape == t.shape
        assert np.isfinite(a).all()
        if t.role == "norm":
            assert (a == 1).all()
        elif t.role == "zeros":
            assert (a == 0).all()
        else:
            std = T._std_of(t)
            assert abs(a.std() / std - 1) < 0.02, name
            assert abs(a.mean()) < 0.02 * std * 10, name
            assert len(np.unique(a)) > 1000
            # rows differ (no tiling)
            flat = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 100)
            assert not np.array_equal(flat[0], flat[1])
            # normal shape: ~68.3% within one std
            assert abs(np.mean(np.abs(a) < std) - 0.6827) < 0.01, name
    assert abs(T._std_of(rng_names["w"]) - 1 / np.sqrt(256 * 9)) < 1e-12
    assert abs(T._std_of(rng_names["l"]) - 0.5 / np.sqrt(768)) < 1e-12


def test_f16_values_have_no_subnormal_or_inf(tmp_path):
    p = tmp_path / "t.safetensors"
    T.write_safetensors(p, mixed_spec(), seed=2, dtype="f16", workers=1)
    for k, a in T.load_safetensors(p).items():
        assert np.isfinite(a).all(), k
        nz = np.abs(a[a != 0].astype(np.float32))
        assert nz.size == 0 or nz.min() >= 2.0 ** -17, k


def test_cli_flux_tiny(tmp_path, capsys):
    rc = T.main(["flux", str(tmp_path / "flux"), "--depth-double", "1", "--depth-single", "1",
                 "--hidden-size", "256", "--no-t5", "--workers", "2", "--dtype", "bf16"])
    assert rc == 0
    names = sorted(os.listdir(tmp_path / "flux"))
    assert names == ["ae.safetensors", "clip_l.safetensors", "flux1-dev.safetensors"]
    _, _, h = _parse(tmp_path / "flux" / "flux1-dev.safetensors")
    assert h["double_blocks.0.img_attn.qkv.weight"]["dtype"] == "BF16"
    assert "double_blocks.1.img_attn.qkv.weight" not in h


def test_cli_runs_as_script(tmp_path):
    # `python pysdcpp/testing.py ...` must work without importing the package
    r = subprocess.run([sys.executable, str(TESTING_PY), "count"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "859,520,964" in r.stdout


# ----------------------------------------------------------------------------- opt-in: real sd-cli

SD_CLI = os.environ.get("PYSDCPP_SD_CLI")


@pytest.mark.skipif(not SD_CLI, reason="set PYSDCPP_SD_CLI=/path/to/sd-cli to run")
def test_sd_cli_loads_sd15_cleanly(tmp_path):
    model = tmp_path / "sd15.safetensors"
    T.write_sd15(model, seed=0, dtype="f16")
    out = tmp_path / "x.png"
    r = subprocess.run([SD_CLI, "-m", str(model), "-p", "a cat", "-W", "64", "-H", "64", "--steps", "2", "-s", "42",
                        "-v", "-o", str(out)], capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "Version: SD 1.x" in log
    for bad in ("not in model file", "unknown tensor", "wrong shape"):
        assert bad not in log, bad
    from PIL import Image

    img = np.asarray(Image.open(out)).astype(np.float64)
    assert img.shape == (64, 64, 3)
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 1000


def test_esrgan_spec_counts_names_and_determinism(tmp_path):
    # RealESRGAN_x4plus.pth: 23 RRDB blocks, 16,697,987 parameters, 2 + 23 * 30 + 10 tensors
    full = T.esrgan_spec()
    assert T.spec_params(full) == 16_697_987 and len(full) == 702
    tiny = T.esrgan_spec(num_block=1)
    assert len(tiny) == 42 and T.spec_params(tiny) == 16_697_987 - 22 * 719_424
    assert tiny["body.0.rdb3.conv5.weight"].shape == (64, 192, 3, 3)
    assert tiny["conv_last.weight"].shape == (3, 64, 3, 3) and "conv_up2.weight" in tiny
    assert "conv_up1.weight" not in T.esrgan_spec(num_block=1, scale=1)
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    T.write_esrgan(a, seed=0, num_block=1)
    T.write_esrgan(b, seed=0, num_block=1, workers=1)
    T.write_esrgan(c, seed=1, num_block=1)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    header, _ = T.read_safetensors_header(a)
    assert header["conv_first.weight"]["dtype"] == "F32"
