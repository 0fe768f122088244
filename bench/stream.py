#!/usr/bin/env python3
"""Weight-streaming benchmark: seconds per step for models larger than a VRAM budget.

    python3 bench/stream.py prepare --models /dev/shm/m          # random-weight checkpoints (W1 Flux-dev, W2 SDXL)
    python3 bench/stream.py run --models /dev/shm/m --workload w1 --out results.json [--modes a,b]
    python3 bench/stream.py h2d                                 # pinned/pageable host->device GB/s (torch)

Each mode runs in its own process (a fresh context), so one failing mode cannot
take the others down; results are appended to --out as they come.  Per step:
wall time between consecutive progress callbacks (the first step, which includes
warm-up, is excluded from the median); stream telemetry from ctx.last_stream_stats;
peak VRAM of the GPU sampled by nvidia-smi every 20 ms.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS = {
    # W1: the peer workload. FLUX.1-dev-shaped DiT, bf16, 1024x1024, one forward per step.
    "w1": dict(
        files=dict(diffusion_model="flux/flux1-dev.safetensors", clip_l="flux/clip_l.safetensors",
                   t5xxl="flux/t5xxl.safetensors", vae="flux/ae.safetensors"),
        ctx=dict(diffusion_flash_attn=True),
        gen=dict(prompt="a lighthouse at dusk", width=1024, height=1024, steps=6, seed=42, cfg_scale=1.0,
                 guidance=3.5, sampling_method="euler"),
    ),
    # W2: SDXL base, f16, 1024x1024 with CFG (two UNet evaluations per step).
    "w2": dict(
        files=dict(model="sdxl/sdxl.safetensors"),
        ctx=dict(diffusion_flash_attn=True),
        gen=dict(prompt="a lighthouse at dusk", width=1024, height=1024, steps=5, seed=42, cfg_scale=7.0,
                 sampling_method="euler"),
    ),
}

# W1 with f16 weights (the same DiT written in f16), and with the bf16 file quantized to q8_0 at
# load (sd-cli --type q8_0): what users of Flux on small GPUs actually run.
WORKLOADS["w1_f16"] = dict(WORKLOADS["w1"], files=dict(WORKLOADS["w1"]["files"],
                                                       diffusion_model="flux-f16/flux1-dev.safetensors"))
WORKLOADS["w1_q8_0"] = dict(WORKLOADS["w1"], ctx=dict(WORKLOADS["w1"]["ctx"], wtype="q8_0"))

# A seconds-long smoke test of this script itself (SD 1.5 written by pysdcpp.testing, tiny image).
WORKLOADS["smoke"] = dict(files=dict(model="sd15/sd15.safetensors"), ctx={},
                          gen=dict(prompt="x", width=64, height=64, steps=4, seed=1, cfg_scale=7.0,
                                   sampling_method="euler"))

OFF = dict(offload_params_to_cpu=True)
MODES = {
    "resident": {},
    "base_pageable_sync_8": dict(OFF, max_vram=8, pin_offloaded_params=False, stream_layers=False),
    "pinned_sync_8": dict(OFF, max_vram=8, stream_layers=False),
    "prefetch_2": dict(OFF, max_vram=2, stream_layers=True, stream_residency=False),
    "prefetch_8": dict(OFF, max_vram=8, stream_layers=True, stream_residency=False),
    "prefetch_16": dict(OFF, max_vram=16, stream_layers=True, stream_residency=False),
    "residency_8": dict(OFF, max_vram=8, stream_layers=True, stream_residency=True),
    "residency_16": dict(OFF, max_vram=16, stream_layers=True, stream_residency=True),
    "pinned_sync_2": dict(OFF, max_vram=2, stream_layers=False),
    # prefetch depth 2: three slots in flight (the default, depth 1, has two)
    "prefetch_2_d2": dict(OFF, max_vram=2, stream_layers=True, stream_residency=False, stream_prefetch_depth=2),
    "prefetch_4_d2": dict(OFF, max_vram=4, stream_layers=True, stream_residency=False, stream_prefetch_depth=2),
    "prefetch_8_d2": dict(OFF, max_vram=8, stream_layers=True, stream_residency=False, stream_prefetch_depth=2),
    "residency_16_d2": dict(OFF, max_vram=16, stream_layers=True, stream_residency=True, stream_prefetch_depth=2),
    "base_pageable_sync_2": dict(OFF, max_vram=2, pin_offloaded_params=False, stream_layers=False),
}
# The three fusions of patches 0024, 0027 and 0029, off (on by default since 0030)
UNFUSED = {"SDCPP_FUSED_ROPE": "0", "SDCPP_FUSED_MODULATE": "0", "GGML_CUDA_LT_BIAS": "0"}
# Modes that run the same context with environment switches (numerics and compute of the patched
# ggml-cuda against the paths it replaced).
MODE_ENV = {
    "resident_bf16_gemm_out": {"GGML_CUDA_BF16_GEMM_BF16_OUT": "1"},
    # conversions to f16/bf16 one value per thread (before patch 0021); with the bf16 matmul output
    # path of before 0014 too: the unpatched base's kernels (0013's copy is exact and has no switch)
    "resident_convert_x1": {"GGML_CUDA_CONVERT_ONE_PER_THREAD": "1"},
    # (since session 5 also without 0024-0029's changes, which are exact)
    "resident_base_kernels": {"GGML_CUDA_CONVERT_ONE_PER_THREAD": "1", "GGML_CUDA_BF16_GEMM_BF16_OUT": "1", **UNFUSED,
                              "GGML_CUDA_RMS_NORM_ROW_PER_BLOCK": "1", "SDCPP_NO_PE_CACHE": "1"},
    "residency_16_convert_x1": {"GGML_CUDA_CONVERT_ONE_PER_THREAD": "1"},
    # Flux's RoPE as one ggml_rope_pe op (patch 0024, opt-in until 0030)
    "resident_fused_rope": {"SDCPP_FUSED_ROPE": "1"},
    "residency_16_fused_rope": {"SDCPP_FUSED_ROPE": "1"},
    "prefetch_8_d2_fused_rope": {"SDCPP_FUSED_ROPE": "1"},
    # session 5 (#6): each switch on its own against the defaults, then all of them together.
    # The RoPE table rebuilt on the host at every step, as before patch 0025
    "resident_pe_rebuilt": {"SDCPP_NO_PE_CACHE": "1"},
    # rms_norm with a 256-thread block per row, as before patch 0028 (bit-exact either way)
    "resident_rms_block": {"GGML_CUDA_RMS_NORM_ROW_PER_BLOCK": "1"},
    # Patches 0024, 0027 and 0029 were measured opt-in (build of 3e99fdd, results/stream_w1_0029_h200.json);
    # since 0030 they are the defaults and "=0" turns each off (modes *_unfused: all three off).
    "resident_fused_modulate": {"SDCPP_FUSED_MODULATE": "1"},
    "resident_lt_bias": {"GGML_CUDA_LT_BIAS": "1"},
    "resident_exact": {"SDCPP_FUSED_ROPE": "1", "SDCPP_FUSED_MODULATE": "1"},
    "resident_unfused": UNFUSED,
    "resident_unfused_rope": {"SDCPP_FUSED_ROPE": "0"},
    "resident_unfused_modulate": {"SDCPP_FUSED_MODULATE": "0"},
    "resident_no_lt_bias": {"GGML_CUDA_LT_BIAS": "0"},
    "residency_16_unfused": UNFUSED,
    "prefetch_8_d2_unfused": UNFUSED,
    # how streamed calls use slots (patch 0016; "launch" is the default since 0017): queued ahead,
    # queued after each launch, per segment
    "prefetch_8_ahead": {"SDCPP_STREAM_SLOTS": "ahead"},
    "prefetch_8_launch": {"SDCPP_STREAM_SLOTS": "launch"},
    "prefetch_2_launch": {"SDCPP_STREAM_SLOTS": "launch"},
    "residency_16_launch": {"SDCPP_STREAM_SLOTS": "launch"},
    "residency_16_off": {"SDCPP_STREAM_SLOTS": "off"},
    # segments cut at max_vram / n: smaller slots, more resident params, more segments (patch 0017's
    # switch). Since 0018 the default is / 4 when streaming and / 8 with residency; before, / 2 and / 4.
    "prefetch_8_div2": {"SDCPP_STREAM_PLAN_DIVISOR": "2"},
    "prefetch_8_div4": {"SDCPP_STREAM_PLAN_DIVISOR": "4"},
    "residency_8_div4": {"SDCPP_STREAM_PLAN_DIVISOR": "4"},
    "residency_16_div4": {"SDCPP_STREAM_PLAN_DIVISOR": "4"},
    "residency_8_div8": {"SDCPP_STREAM_PLAN_DIVISOR": "8"},
    "residency_16_div6": {"SDCPP_STREAM_PLAN_DIVISOR": "6"},
    "residency_16_div8": {"SDCPP_STREAM_PLAN_DIVISOR": "8"},
    "residency_16_div12": {"SDCPP_STREAM_PLAN_DIVISOR": "12"},
    # inputs uploaded once per call instead of by each segment (patch 0019; the default since 0023,
    # which also made depth 2 queue ahead), after each launch and queued ahead with three slots
    "prefetch_8_inputs": {"SDCPP_STREAM_INPUTS": "call"},
    "prefetch_8_d2_ahead_inputs": {"SDCPP_STREAM_INPUTS": "call", "SDCPP_STREAM_SLOTS": "ahead"},
    "prefetch_8_d2_ahead": {"SDCPP_STREAM_SLOTS": "ahead"},
    "residency_16_inputs": {"SDCPP_STREAM_INPUTS": "call"},
    "residency_16_d2_ahead_inputs": {"SDCPP_STREAM_INPUTS": "call", "SDCPP_STREAM_SLOTS": "ahead"},
    # since 0023: inputs uploaded by each segment, as before it (at depth 2, queued two ahead: 0.699 s
    # per step at 8 GiB on the H200, against 0.497 with inputs once per call)
    "prefetch_8_segment_inputs": {"SDCPP_STREAM_INPUTS": "segment"},
    "prefetch_8_d2_segment_inputs": {"SDCPP_STREAM_INPUTS": "segment"},
    "residency_16_segment_inputs": {"SDCPP_STREAM_INPUTS": "segment"},
}


def _base_mode(name: str) -> str:
    """prefetch_8_d2_ahead_inputs -> prefetch_8_d2: the context options a switched mode runs with."""
    while name not in MODES:
        name = name.rsplit("_", 1)[0]
    return name


for _name in MODE_ENV:
    MODES.setdefault(_name, MODES[_base_mode(_name)])
DEFAULT_MODES = ["resident", "prefetch_8", "residency_16", "pinned_sync_8", "base_pageable_sync_8",
                 "prefetch_2", "prefetch_16", "residency_8", "sdcli:prefetch_8", "py:prefetch_8"]


def sd_cli_args(files: dict, ctx: dict, gen: dict, out: str) -> list[str]:
    """The sd-cli command line equivalent to a Context(**files, **ctx).generate(**gen)."""
    flag = {"model": "-m", "diffusion_model": "--diffusion-model", "clip_l": "--clip_l", "t5xxl": "--t5xxl",
            "vae": "--vae"}
    args = []
    for k, v in files.items():
        args += [flag[k], v]
    if ctx.get("diffusion_flash_attn"):
        args.append("--diffusion-fa")
    if ctx.get("offload_params_to_cpu"):
        args.append("--offload-to-cpu")
    if ctx.get("max_vram"):
        args += ["--max-vram", str(ctx["max_vram"])]
    if ctx.get("stream_layers"):
        args.append("--stream-layers")
    if ctx.get("stream_residency") is False:
        args.append("--no-stream-residency")
    if ctx.get("pin_offloaded_params") is False:
        args.append("--no-pin-offloaded-params")
    args += ["-p", gen["prompt"], "-W", str(gen["width"]), "-H", str(gen["height"]), "--steps", str(gen["steps"]),
             "-s", str(gen["seed"]), "--cfg-scale", str(gen["cfg_scale"]), "--sampling-method", gen["sampling_method"]]
    if "guidance" in gen:
        args += ["--guidance", str(gen["guidance"])]
    return args + ["-o", out]


def sampling_seconds(log: str) -> float | None:
    found = re.findall(r"sampling completed, taking ([0-9.]+)s", log)
    return float(found[-1]) if found else None


def run_sd_cli(models: Path, workload: str, mode: str) -> dict:
    """The same generation through sd-cli built from the same patched tree (overhead check)."""
    import pysdcpp

    w = WORKLOADS[workload]
    files = {k: str(models / v) for k, v in w["files"].items()}
    ctx = {**w["ctx"], **MODES[mode]}
    exe = Path(pysdcpp.__file__).parent / "bin" / "sd-cli"
    cmd = [str(exe), *sd_cli_args(files, ctx, w["gen"], "/tmp/bench-sdcli.png")]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    return {"workload": workload, "mode": "sdcli:" + mode, "cmd": cmd, "rc": proc.returncode,
            "process_s": round(time.perf_counter() - t, 2), "sampling_s": sampling_seconds(log),
            "log_tail": log[-1500:] if proc.returncode else None}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def machine() -> dict:
    gpu = ""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return {"host": platform.node(), "cpu_count": os.cpu_count(), "gpu": gpu, "python": platform.python_version()}


class VramSampler:
    """Peak GPU memory in MiB, sampled by nvidia-smi (what the whole process holds)."""

    def __init__(self):
        self.peak = 0
        self.proc = None

    def __enter__(self):
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          "-i", "0", "-lms", "20"], stdout=subprocess.PIPE, text=True)
        except OSError:
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.peak = max(self.peak, int(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()


class LogGrab(logging.Handler):
    """Collects the messages of the pysdcpp logger, debug ones included, while in a `with`."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        log = logging.getLogger("pysdcpp")
        self._level = log.level
        log.addHandler(self)
        log.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        log = logging.getLogger("pysdcpp")
        log.removeHandler(self)
        log.setLevel(self._level)


def host_timing(lines: list[str]) -> dict:
    """Median ms of each phase of a whole-graph call, per model, from sd.cpp's debug lines
    "<desc> compute timing: build=.. ms alloc=.. ms copy_in=.. ms compute=.. ms readback=.. ms"
    (patch 0026), over the calls of the model that computed most often, its first call left out."""
    calls = defaultdict(list)
    for line in lines:
        m = re.search(r"(\S+) compute timing: (.*)", line)  # "[file:line - ]<desc> compute timing: ..."
        if m:
            calls[m.group(1)].append({k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+) ms", m.group(2))})
    out = {}
    for desc, rows in calls.items():
        rows = rows[1:] or rows
        out[desc] = {"calls": len(rows), **{k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}}
    return out


def run_one(models: Path, workload: str, mode: str) -> dict:
    import pysdcpp

    w = WORKLOADS[workload]
    files = {k: str(models / v) for k, v in w["files"].items()}
    ctx_kwargs = {**w["ctx"], **MODES[mode]}
    stamps = []
    result = {"workload": workload, "mode": mode, "ctx": ctx_kwargs, "gen": w["gen"],
              "env": {k: v for k, v in os.environ.items() if k.startswith(("GGML_", "SDCPP_"))}}
    grab = LogGrab()
    with grab, VramSampler() as vram:
        t0 = time.perf_counter()
        with pysdcpp.Context(**files, **ctx_kwargs) as ctx:
            result["load_s"] = round(time.perf_counter() - t0, 2)
            t1 = time.perf_counter()
            if os.environ.get("BENCH_IMAGE_DIR"):  # the final latent too (patch 0022's hook)
                os.environ["SDCPP_TEST_DUMP_LATENTS"] = str(Path(os.environ["BENCH_IMAGE_DIR"]) / f"{workload}_{mode}")
            images = ctx.generate(**w["gen"], progress=lambda s, n, t: stamps.append((s, n, time.perf_counter())))
            result["generate_s"] = round(time.perf_counter() - t1, 2)
            stats = ctx.last_stream_stats
            by_model = ctx.last_stream_stats_by_model
        result["peak_vram_mib"] = vram.peak
    steps = [p for p in stamps if p[1] == w["gen"]["steps"]]
    # duration of step k = stamp(k) - stamp(k-1); sd.cpp reports step 0 when sampling starts
    per_step = {b[0]: b[2] - a[2] for a, b in zip(steps, steps[1:])}
    result["step_s"] = {k: round(v, 4) for k, v in per_step.items()}
    after_first = [v for k, v in per_step.items() if k >= 2]
    steady = [v for k, v in per_step.items() if k >= 3]  # residency starts with the 3rd call
    result["median_step_s"] = round(statistics.median(after_first), 4) if after_first else None
    result["steady_step_s"] = round(statistics.median(steady), 4) if steady else None
    result["sampling_s"] = sampling_seconds("\n".join(grab.lines))
    result["host_timing_ms"] = host_timing(grab.lines)
    result["stats"] = None if stats is None else stats.as_dict()
    result["stats_by_model"] = {name: s.as_dict() for name, s in by_model.items()}
    if by_model:
        # the diffusion model: the one evaluated every step (the text encoders run once; at a budget
        # smaller than T5-XXL, 9.5 GB, its call is in the totals: 7 calls for 6 W1 steps at 8 GiB)
        result["per_compute_call_model"], stats = max(by_model.items(), key=lambda kv: kv[1].compute_calls)
    if stats is not None and stats.compute_calls:
        calls = stats.compute_calls
        result["per_compute_call"] = {
            "calls": calls,
            "segments": stats.segments / calls,
            "gb_streamed": stats.bytes_streamed / calls / 1e9,
            "h2d_s": stats.h2d_ms / calls / 1e3,
            "compute_s": stats.compute_ms / calls / 1e3,
            "wait_s": stats.wait_ms / calls / 1e3,
        }
    import numpy as np

    arr = np.asarray(images[0])
    if os.environ.get("BENCH_IMAGE_DIR"):  # for max |diff| between modes (see compare_images)
        np.save(Path(os.environ["BENCH_IMAGE_DIR"]) / f"{workload}_{mode}.npy", arr)
    result["image_std"] = float(arr.std())
    result["image_sha_prefix"] = __import__("hashlib").sha256(arr.tobytes()).hexdigest()[:16]
    return result


def compare_images(folder: Path, against: str) -> dict:
    """Max |diff| of each mode's image (0-255) and final latent (float32) against one mode's."""
    import numpy as np

    ref = np.load(folder / f"{against}.npy").astype(int)
    ref_latent = folder / f"{against}.0.f32"
    ref_latent = np.fromfile(ref_latent, dtype=np.float32) if ref_latent.exists() else None
    out = {"against": against}
    for f in sorted(folder.glob("*.npy")):
        img = np.load(f).astype(int)
        out[f.stem] = {"max_abs_diff": int(np.abs(img - ref).max()), "identical": bool((img == ref).all())}
        latent = f.with_name(f.stem + ".0.f32")
        if ref_latent is not None and latent.exists():
            lat = np.fromfile(latent, dtype=np.float32)
            out[f.stem].update(latent_max_abs_diff=float(np.abs(lat - ref_latent).max()),
                               latent_identical=bool((lat.view(np.uint32) == ref_latent.view(np.uint32)).all()),
                               latent_max_abs=float(np.abs(ref_latent).max()))
    return out


def h2d() -> dict:
    import torch

    n = 4 << 30
    out = {}
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    for name, pin in (("pinned", True), ("pageable", False)):
        host = torch.empty(n, dtype=torch.uint8, pin_memory=pin)
        host.fill_(1)
        dev.copy_(host, non_blocking=pin)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            dev.copy_(host, non_blocking=pin)
        torch.cuda.synchronize()
        out[f"{name}_GBps"] = round(3 * n / (time.perf_counter() - t) / 1e9, 2)
    return out


def prepare(models: Path, workers: int, which: list[str]) -> None:
    from pysdcpp import testing

    if "w1" in which:
        t = time.perf_counter()
        testing.write_flux(models / "flux", seed=0, dtype="bf16", workers=workers)
        print(f"w1 written in {time.perf_counter() - t:.1f} s", flush=True)
    if "w1_f16" in which:
        t = time.perf_counter()
        testing.write_flux(models / "flux-f16", seed=0, dtype="f16", workers=workers, components=("diffusion_model",))
        print(f"w1_f16 written in {time.perf_counter() - t:.1f} s", flush=True)
    if "w2" in which:
        t = time.perf_counter()
        (models / "sdxl").mkdir(parents=True, exist_ok=True)
        testing.write_sdxl(models / "sdxl" / "sdxl.safetensors", seed=0, dtype="f16", workers=workers)
        print(f"w2 written in {time.perf_counter() - t:.1f} s", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--workloads", default="w1,w2")
    p = sub.add_parser("run")
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    p.add_argument("--modes", default=",".join(DEFAULT_MODES))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--timeout", type=int, default=240)
    p = sub.add_parser("one")
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--workload", required=True)
    p.add_argument("--mode", required=True)
    sub.add_parser("h2d")
    p = sub.add_parser("compare", help="max |diff| of the images saved under BENCH_IMAGE_DIR against one mode")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--against", default="w1_resident")
    a = ap.parse_args()

    if a.cmd == "prepare":
        prepare(a.models, a.workers, a.workloads.split(","))
    elif a.cmd == "compare":
        print(json.dumps(compare_images(a.dir, a.against)))
    elif a.cmd == "h2d":
        print(json.dumps(h2d()))
    elif a.cmd == "one":
        mode = a.mode.split(":")[-1]
        res = run_sd_cli(a.models, a.workload, mode) if a.mode.startswith("sdcli:") else \
            run_one(a.models, a.workload, mode)
        if a.mode.startswith("py:"):
            res["mode"] = a.mode
        print("RESULT " + json.dumps(res), flush=True)
    else:
        data = json.loads(a.out.read_text()) if a.out.exists() else {"runs": []}
        data.update({"machine": machine(), "commit": git_commit(), "command": " ".join(sys.argv)})
        for mode in a.modes.split(","):
            cmd = [sys.executable, __file__, "one", "--models", str(a.models), "--workload", a.workload, "--mode", mode]
            t = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout,
                                      env={**os.environ, **MODE_ENV.get(mode.split(":")[-1], {})})
                lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                res = json.loads(lines[-1][7:]) if lines else {
                    "workload": a.workload, "mode": mode, "error": f"exit {proc.returncode}",
                    "stderr_tail": proc.stderr[-3000:]}
            except subprocess.TimeoutExpired:
                res = {"workload": a.workload, "mode": mode, "error": f"timeout {a.timeout}s"}
            res["process_s"] = round(time.perf_counter() - t, 1)
            print(json.dumps({k: res.get(k) for k in ("workload", "mode", "median_step_s", "steady_step_s",
                                                      "sampling_s", "peak_vram_mib",
                                                      "per_compute_call", "error", "process_s")}), flush=True)
            data["runs"].append(res)
            a.out.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
