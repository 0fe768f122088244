"""Weight streaming on a GPU: prefetch on/off, pinned/pageable and residency must not change a bit.

Marked `gpu`: skipped without a CUDA build.  Run on the device with
    python3 -P -m pytest -m gpu -v tests/test_gpu_stream.py
The log of the device run is committed under tests/gpu_results/.

Budgets are small (a fraction of a GiB) so that each sampling step of the UNet or DiT is cut
into many segments even on a 141 GB card: offload_params_to_cpu + max_vram is what forces
segmented execution, and streaming acts on every segment.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pysdcpp
from conftest import fused_modulate_counts, fused_rope_counts, read_latent, slot_counts

pytestmark = pytest.mark.gpu

RESULTS = Path(os.environ.get("PYSDCPP_GPU_RESULTS", "/tmp/pysdcpp-gpu-results.json"))
SD15 = dict(width=256, height=256, steps=3, seed=42, sampling_method="euler")
FLUX = dict(width=256, height=256, steps=3, seed=7, cfg_scale=1.0, guidance=5.0, flow_shift=2.0,
            sampling_method="euler", batch_count=2)
SMALL_BUDGET = 0.25  # GiB


def record(key, value):
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True))


@contextlib.contextmanager
def env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(model_kwargs, gen_kwargs, calls=1, **ctx_kwargs):
    """Open a context, generate `calls` times, close; return (pixel arrays, stats of each call)."""
    images, stats = [], []
    with pysdcpp.Context(**model_kwargs, **ctx_kwargs) as ctx:
        for _ in range(calls):
            images += [np.asarray(im) for im in ctx.generate(**gen_kwargs)]
            stats.append(ctx.last_stream_stats)
    return images, stats


def same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def max_abs_diff(a, b) -> int:
    return int(max(np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(a, b)))


STREAM = dict(offload_params_to_cpu=True, max_vram=SMALL_BUDGET)


@pytest.fixture(scope="module")
def sd15(sd15_path):
    return {"model": sd15_path}


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    from pysdcpp import testing

    out = tmp_path_factory.mktemp("flux")
    paths = testing.write_flux(out, seed=3, dtype="bf16", depth=4, depth_single=8, hidden_size=1024,
                               components=("diffusion_model", "clip_l", "vae"))
    return {k: v for k, v in paths.items()}


def test_sd15_prefetch_depth1_vs_depth0_bit_exact(sd15):
    """Same segments (stream_layers plans the cut), copies synchronous vs prefetched."""
    prompt = dict(prompt="a lighthouse", **SD15)
    sync, sync_stats = run(sd15, prompt, **STREAM, stream_layers=True, stream_prefetch_depth=0)
    on, on_stats = run(sd15, prompt, **STREAM, stream_layers=True, stream_prefetch_depth=1)
    s_on, s_sync = on_stats[0], sync_stats[0]
    per_call = s_on.segments / max(1, s_on.compute_calls)
    record("sd15_depth", {"segments_per_compute": per_call, "depth1": vars_of(s_on), "depth0": vars_of(s_sync),
                          "identical": same(on, sync)})
    assert s_on.segments > 0 and per_call >= 8, f"budget should force >= 8 segments, got {per_call}"
    assert s_on.prefetch_adopted > 0 and s_sync.prefetch_adopted == 0
    assert same(on, sync), "prefetch must not change a single byte"


def test_sd15_stream_layers_vs_plain_offload_vs_resident(sd15):
    prompt = dict(prompt="a lighthouse", **SD15)
    plain, _ = run(sd15, prompt, **STREAM, stream_layers=False)
    on, _ = run(sd15, prompt, **STREAM, stream_layers=True)
    resident, _ = run(sd15, prompt)
    record("sd15_vs", {"stream_vs_plain_max_abs_diff": max_abs_diff(on, plain),
                       "stream_vs_resident_max_abs_diff": max_abs_diff(on, resident),
                       "plain_vs_resident_max_abs_diff": max_abs_diff(plain, resident)})
    assert same(on, plain), "streaming must give the bytes of sd.cpp's own segmented offload"
    assert max_abs_diff(on, resident) <= 2


def test_pinned_and_pageable_identical(sd15):
    prompt = dict(prompt="x", **SD15)
    pinned, _ = run(sd15, prompt, **STREAM, stream_layers=True)
    pageable, _ = run(sd15, prompt, **STREAM, stream_layers=True, pin_offloaded_params=False)
    assert same(pinned, pageable)


def test_flux_batch2_guidance_flow_shift(flux):
    """The case that broke an earlier prefetch upstream ("white frames")."""
    off, _ = run(flux, dict(prompt="a cat", **FLUX), **STREAM, diffusion_flash_attn=True, stream_layers=False)
    on, stats = run(flux, dict(prompt="a cat", **FLUX), **STREAM, diffusion_flash_attn=True, stream_layers=True)
    resident, _ = run(flux, dict(prompt="a cat", **FLUX), diffusion_flash_attn=True)
    record("flux_batch2", {"stats": vars_of(stats[0]), "max_abs_diff_vs_resident": max_abs_diff(on, resident)})
    assert len(on) == 2
    assert all(im.std() > 1.0 for im in on), "no constant (white) frames"
    assert not np.array_equal(on[0], on[1])
    assert same(on, off)
    assert stats[0].prefetch_adopted > 0


def test_flux_final_latents_bit_exact(flux, tmp_path):
    """The comparison on the float32 latent before the VAE (patch 0022's hook), not on 8-bit pixels:
    resident, plain segmented offload, synchronous copies, prefetch, and residency."""
    gen = dict(prompt="a cat", **{**FLUX, "batch_count": 1})
    modes = {"resident": {}, "plain": dict(**STREAM, stream_layers=False),
             "sync": dict(**STREAM, stream_layers=True, stream_prefetch_depth=0),
             "prefetch": dict(**STREAM, stream_layers=True),
             "residency": dict(offload_params_to_cpu=True, max_vram=1.0, stream_layers=True, stream_residency=True)}
    latents = {}
    for name, kwargs in modes.items():
        with env(SDCPP_TEST_DUMP_LATENTS=tmp_path / name):
            run(flux, gen, diffusion_flash_attn=True, **kwargs)
        latents[name] = read_latent(tmp_path / name)
    ref = latents["resident"]
    record("flux_latents", {name: {"max_abs_diff_vs_resident": float(np.abs(lat - ref).max()),
                                   "identical": lat.tobytes() == ref.tobytes()} for name, lat in latents.items()})
    assert ref.size == 16 * (256 // 8) ** 2 and np.isfinite(ref).all() and ref.std() > 0
    for name, lat in latents.items():
        assert lat.tobytes() == ref.tobytes(), f"{name}: latent differs from resident"


def test_fused_ops_bit_exact(flux, tmp_path, debug_log):
    """Patch 0024's ggml_rope_pe and 0029's ggml_norm_modulate (on by default since 0030) on the CUDA
    backend, alone, together and streamed, against the graph they replace (SDCPP_FUSED_ROPE=0,
    SDCPP_FUSED_MODULATE=0), on the final latent; the log proves the ops were in the graph."""
    gen = dict(prompt="a cat", **{**FLUX, "batch_count": 1})
    no_rope, no_modulate = {"SDCPP_FUSED_ROPE": 0}, {"SDCPP_FUSED_MODULATE": 0}
    runs = {"graph": ({**no_rope, **no_modulate}, {}), "rope": (no_modulate, {}), "modulate": (no_rope, {}),
            "both": ({}, {}), "both_streamed": ({}, dict(**STREAM, stream_layers=True))}
    latents = {}
    for name, (switches, kwargs) in runs.items():
        debug_log.clear()
        with env(SDCPP_TEST_DUMP_LATENTS=tmp_path / name, **switches):
            run(flux, gen, diffusion_flash_attn=True, **kwargs)
        latents[name] = read_latent(tmp_path / name)
        assert (len(fused_rope_counts(debug_log)) > 0) == ("SDCPP_FUSED_ROPE" not in switches), name
        assert (len(fused_modulate_counts(debug_log)) > 0) == ("SDCPP_FUSED_MODULATE" not in switches), name
    record("fused_ops", {name: float(np.abs(lat - latents["graph"]).max()) for name, lat in latents.items()})
    for name, lat in latents.items():
        assert lat.tobytes() == latents["graph"].tobytes(), name


CHILD = """
import json, sys
import pysdcpp
a = json.loads(sys.argv[1])
kernels = []
try:  # the CUDA kernels that ran, through CUPTI (torch.profiler), where torch is installed
    from torch.profiler import ProfilerActivity, profile
    prof = profile(activities=[ProfilerActivity.CUDA])
except ImportError:
    prof = None
with pysdcpp.Context(**a["model"], **a["ctx"]) as c:
    if prof is not None:
        prof.start()
    c.generate(**a["gen"])
    if prof is not None:
        prof.stop()
        kernels = sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})
print(json.dumps(kernels))
"""


def latent_in_child(model, gen, prefix, ctx=None, **env_values):
    """One generation in a fresh process, for switches that ggml-cuda reads once per process;
    returns the final latent (patch 0022) and the names of the CUDA kernels that ran (empty
    without torch)."""
    child_env = {**os.environ, **{k: str(v) for k, v in env_values.items()}, "SDCPP_TEST_DUMP_LATENTS": str(prefix)}
    arg = json.dumps(dict(model={k: str(v) for k, v in model.items()}, ctx=ctx or {}, gen=gen))
    proc = subprocess.run([sys.executable, "-c", CHILD, arg], env=child_env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_latent(prefix), json.loads(proc.stdout.strip().splitlines()[-1])


def test_rms_norm_rows_bit_exact(flux, tmp_path):
    """Patch 0028: Flux's q/k RMS norms (rows of 128) with one warp per row give the bits of the
    block-per-row kernel (GGML_CUDA_RMS_NORM_ROW_PER_BLOCK=1)."""
    gen = dict(prompt="a cat", **{**FLUX, "batch_count": 1})
    ctx = dict(diffusion_flash_attn=True)
    rows, rows_kernels = latent_in_child(flux, gen, tmp_path / "rows", ctx)
    block, block_kernels = latent_in_child(flux, gen, tmp_path / "block", ctx, GGML_CUDA_RMS_NORM_ROW_PER_BLOCK=1)
    record("rms_norm_rows", {"identical": rows.tobytes() == block.tobytes(),
                             "max_abs_diff": float(np.abs(rows - block).max())})
    assert rows.std() > 0 and rows.tobytes() == block.tobytes()
    if rows_kernels:  # with torch: the kernel that ran in each process
        assert any("rms_norm_f32_rows" in k for k in rows_kernels)
        assert not any("rms_norm_f32_rows" in k for k in block_kernels)


def test_lt_bias_epilogue_close_and_streaming_bit_exact(flux, tmp_path):
    """Patch 0027 (on by default since 0030): bf16 linear layers as cuBLASLt matmuls with the bias
    added in the epilogue, against the separate add (GGML_CUDA_LT_BIAS=0). Not guaranteed bit-exact
    (cuBLASLt may pick another GEMM kernel), so: close on the final latent and identical bits recorded;
    the epilogue kernels ran (cuBLAS names them *_bias_*); streamed = resident with it on."""
    pytest.importorskip("torch")
    gen = dict(prompt="a cat", **{**FLUX, "batch_count": 1})
    ctx = dict(diffusion_flash_attn=True)
    off, off_kernels = latent_in_child(flux, gen, tmp_path / "off", ctx, GGML_CUDA_LT_BIAS=0)
    on, on_kernels = latent_in_child(flux, gen, tmp_path / "on", ctx)
    streamed, _ = latent_in_child(flux, gen, tmp_path / "streamed", dict(**ctx, **STREAM, stream_layers=True))
    bias_kernels = [k for k in on_kernels if "bias" in k.lower()]
    diff = float(np.abs(on - off).max())
    record("lt_bias", {"max_abs_diff_vs_off": diff, "max_abs_latent": float(np.abs(off).max()),
                       "identical_vs_off": on.tobytes() == off.tobytes(), "bias_kernels": bias_kernels,
                       "streamed_identical": streamed.tobytes() == on.tobytes()})
    assert bias_kernels and not [k for k in off_kernels if "bias" in k.lower()]
    assert diff <= 0.02 * float(np.abs(off).max()), diff
    assert streamed.tobytes() == on.tobytes()


def test_two_generations_and_resolution_change(sd15):
    gens = [dict(prompt="a", **SD15), dict(prompt="b", **{**SD15, "seed": 5}),
            dict(prompt="c", **{**SD15, "width": 320, "height": 192})]
    ref = []
    for g in gens:
        ref += run(sd15, g)[0]
    got = []
    with pysdcpp.Context(**sd15, **STREAM, stream_layers=True) as ctx:
        for g in gens:
            got += [np.asarray(im) for im in ctx.generate(**g)]
            assert ctx.last_stream_stats.prefetch_adopted > 0
    record("two_gens_resolution_change_max_abs_diff", max_abs_diff(got, ref))
    off = []
    with pysdcpp.Context(**sd15, **STREAM, stream_layers=False) as ctx:
        for g in gens:
            off += [np.asarray(im) for im in ctx.generate(**g)]
    assert same(got, off)


@pytest.mark.parametrize("hook", ["SDCPP_TEST_PREFETCH_ALLOC_FAIL", "SDCPP_TEST_PREFETCH_MISMATCH"])
def test_injected_failures_fall_back_bit_exact(sd15, hook):
    prompt = dict(prompt="x", **SD15)
    ref, _ = run(sd15, prompt, **STREAM, stream_layers=False)
    with env(**{hook: 1}):
        got, stats = run(sd15, prompt, **STREAM, stream_layers=True)
    s = stats[0]
    record(f"hook_{hook}", vars_of(s))
    assert same(got, ref)
    assert s.prefetch_adopted == 0
    assert s.prefetch_fallback + s.prefetch_skipped > 0


def test_residency_bit_exact_and_streams_less(sd15):
    prompt = dict(prompt="x", **SD15)
    budget = dict(offload_params_to_cpu=True, max_vram=1.0)
    no_res, s_no = run(sd15, prompt, **budget, stream_layers=True, stream_residency=False)
    res, s_res = run(sd15, prompt, **budget, stream_layers=True, stream_residency=True)
    record("residency", {"with": vars_of(s_res[0]), "without": vars_of(s_no[0])})
    assert same(no_res, res)
    assert s_res[0].bytes_resident > 0
    assert s_res[0].bytes_streamed < s_no[0].bytes_streamed


def gpu_used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[0])


def test_vram_returns_to_baseline_after_close(sd15):
    prompt = dict(prompt="x", **SD15)
    run(sd15, prompt, **STREAM, stream_layers=True)  # CUDA context and pools exist from here on
    baseline = gpu_used_mib()
    for kwargs in (dict(**STREAM, stream_layers=True), {}):
        run(sd15, prompt, **kwargs)
        after = gpu_used_mib()
        record(f"vram_after_close_{bool(kwargs)}", {"baseline_mib": baseline, "after_mib": after})
        assert after - baseline <= 64, f"{after - baseline} MiB not returned"


def test_vram_returns_to_baseline_after_failed_and_cancelled_generation(sd15):
    """A generation that fails in C with a segment's params on the device and copies in flight,
    and one cancelled mid-sampling: the context stays usable, holds no more than after a good
    generation (its CUDA pool and cuBLAS workspace live as long as it does) and, once closed,
    gives back its VRAM."""
    prompt = dict(prompt="x", **{**SD15, "steps": 6})
    run(sd15, prompt, **STREAM, stream_layers=True)
    baseline = gpu_used_mib()
    for case in ("cancelled", "failed"):
        with pysdcpp.Context(**sd15, **STREAM, stream_layers=True) as ctx:
            ctx.generate(**{**prompt, "steps": 2})
            steady = gpu_used_mib()
            if case == "failed":
                with env(SDCPP_TEST_FAIL_SEGMENT=3), pytest.raises(pysdcpp.GenerationError):
                    ctx.generate(**prompt)
            else:
                def progress(step, steps, t):
                    if step == 2:
                        ctx.cancel()
                with pytest.raises(pysdcpp.CancelledError):
                    ctx.generate(progress=progress, **prompt)
            after_error = gpu_used_mib()
            again = [np.asarray(im) for im in ctx.generate(**{**prompt, "steps": 2})]
            assert again and again[0].std() > 1.0, "the context must stay usable"
        after_close = gpu_used_mib()
        record(f"vram_after_{case}", {"baseline_mib": baseline, "after_good_generation_mib": steady,
                                      "after_error_mib": after_error, "after_close_mib": after_close})
        assert after_error - steady <= 64, f"{case}: {after_error - steady} MiB more than after a good generation"
        assert after_close - baseline <= 64, f"{case}: {after_close - baseline} MiB not returned"


@pytest.mark.parametrize("slots,inputs", [("launch", "segment"), ("launch", None), (None, None)])
def test_slot_pipelines_bit_exact(sd15, debug_log, slots, inputs):
    """Each way of queuing stream slots (SDCPP_STREAM_SLOTS; unset: depth 2 queues two segments
    ahead) and of uploading inputs (once per call; SDCPP_STREAM_INPUTS=segment: by each segment)
    against synchronous copies of the same segments; the log proves the slots were used."""
    prompt = dict(prompt="a lighthouse", **SD15)
    budget = dict(offload_params_to_cpu=True, max_vram=1.0, stream_residency=False)
    sync, _ = run(sd15, prompt, **budget, stream_layers=True, stream_prefetch_depth=0)
    switches = {**({"SDCPP_STREAM_SLOTS": slots} if slots else {}), **({"SDCPP_STREAM_INPUTS": inputs} if inputs else {})}
    with env(**switches):
        got, stats = run(sd15, prompt, **budget, stream_layers=True, stream_prefetch_depth=2)
    record(f"slots_{slots}_inputs_{inputs}", vars_of(stats[0]))
    assert same(got, sync)
    counts = slot_counts(debug_log)  # queued ahead at depth 2: three slots where they fit in 1 GiB, else two
    assert len(counts) == stats[0].compute_calls and all(n == 2 or (slots is None and n == 3) for n in counts)
    uploads = [r for r in debug_log.records if "stream inputs" in r.getMessage()]
    assert len(uploads) == (0 if inputs == "segment" else stats[0].compute_calls)


def test_depth2_slots_bit_exact_and_counted(sd15):
    """Three slots in flight (depth 2 queues two segments ahead, patch 0023) against synchronous
    copies of the same segments."""
    prompt = dict(prompt="a lighthouse", **SD15)
    budget = dict(offload_params_to_cpu=True, max_vram=1.0)
    sync, _ = run(sd15, prompt, **budget, stream_layers=True, stream_prefetch_depth=0, stream_residency=True)
    deep, stats = run(sd15, prompt, **budget, stream_layers=True, stream_prefetch_depth=2, stream_residency=True)
    record("depth2", vars_of(stats[0]))
    assert same(deep, sync)
    assert stats[0].prefetch_adopted > 0 and stats[0].peak_vram_bytes <= 1 << 30


def vars_of(stats):
    return None if stats is None else stats.as_dict()
