#!/usr/bin/env python3
"""Where a resident diffusion step's GPU time goes, per kernel and per op type.

    python3 bench/profile.py --models /tmp/pysdcpp-models --workload w1 --out profile_w1.json

Runs one generation of a bench/stream.py workload fully resident and records every CUDA
kernel of the steady sampling steps with CUPTI, through torch.profiler (kineto): CUPTI's
activity records are per process, so it sees the kernels that ggml-cuda launches through
its own CUDA runtime.  The window opens at the progress callback of step 2 and closes at
that of the last step, so it holds whole steps only (no text encoders, no VAE).

Per step it reports: wall time, the sum of kernel times, their difference (GPU idle: launch
gaps, host work between graphs; "timeline" splits the kernel-free time by gap length, and
"host_timing_ms" gives sd.cpp's own timing of each phase of a call from its debug log), and
kernel time grouped by op type (matmul, flash attention,
norms, RoPE, elementwise, type conversions and copies, other), with the 25 costliest kernels.

With --ctx for a streamed context (e.g. '{"offload_params_to_cpu": true, "max_vram": 8,
"stream_layers": true}') the "timeline" part says, per step, how long the GPU ran kernels, how
long host->device copies ran, how long both ran at once, and how long neither did: the time a
streamed step loses to copies that do not overlap compute, and to nothing at all.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stream  # noqa: E402  (workload definitions, machine/commit helpers)

# Kernel-name patterns, first match wins.  ggml-cuda names its kernels after the op.
CATEGORIES = [
    ("matmul (cuBLAS/CUTLASS)", r"gemm|cutlass|xmma|nvjet|sm90_|cublas|splitKreduce"),
    ("matmul (ggml mmq/mmf/mmvf)", r"mul_mat|mmq|mmf|mmvf|mmvq"),
    ("flash attention", r"flash_attn|fattn"),
    ("softmax", r"soft_max"),
    ("norms", r"norm"),
    ("rope", r"rope"),
    ("type conversion / copy", r"convert|cpy|dup|k_set_rows|concat|transpose|get_rows"),
    ("elementwise", r"bin_bcast|unary|gelu|silu|scale|add|mul|sigmoid|tanh|exp|op_|clamp|repeat|sum|sqr"),
]


def category(name: str) -> str:
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, low):
            return cat
    return "other"


def short(name: str) -> str:
    return re.sub(r"\s+", " ", name)[:160]


def _union(intervals):
    """Merged [start, end) intervals, sorted."""
    out = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _length(merged) -> float:
    return sum(b - a for a, b in merged)


def _intersection(x, y) -> float:
    i = j = 0
    total = 0.0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        total += max(0.0, b - a)
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return total


def timeline(trace_path: Path, n_steps: int) -> dict:
    """Kernel / host->device copy busy time and their overlap, per step, from a kineto trace."""
    events = json.loads(trace_path.read_text()).get("traceEvents", [])
    kernels, h2d, h2d_bytes = [], [], 0
    for ev in events:
        if ev.get("ph") != "X" or "dur" not in ev:
            continue
        span = (float(ev["ts"]), float(ev["ts"]) + float(ev["dur"]))
        cat = ev.get("cat", "")
        if cat == "kernel":
            kernels.append(span)
        elif cat == "gpu_memcpy" and "HtoD" in ev.get("name", ""):
            h2d.append(span)
            h2d_bytes += int((ev.get("args") or {}).get("bytes", 0))
    if not kernels:
        return {}
    k, c = _union(kernels), _union(h2d)
    start = min(k[0][0], c[0][0] if c else k[0][0])
    end = max(k[-1][1], c[-1][1] if c else k[-1][1])
    both = _intersection(k, c)
    h2d_ms = _length(c)
    busy = _length(k) + h2d_ms - both
    per = lambda us: round(us / 1e3 / n_steps, 2)  # noqa: E731
    # Kernel-free stretches by length: >= 1 ms is host work between graphs (graph build, input
    # upload, readback, the sampler); shorter ones are launch gaps inside a graph.
    gaps = [b[0] - a[1] for a, b in zip(k, k[1:]) if b[0] > a[1]]
    bins = {"ge_1ms": lambda g: g >= 1000, "20us_1ms": lambda g: 20 <= g < 1000, "lt_20us": lambda g: g < 20}
    idle = {name: per(sum(g for g in gaps if f(g))) for name, f in bins.items()}
    idle["n_ge_1ms_per_step"] = round(sum(g >= 1000 for g in gaps) / n_steps, 1)
    idle["largest_ms"] = [round(g / 1e3, 2) for g in sorted(gaps, reverse=True)[:8]]
    return {
        "kernel_gaps_ms": idle,
        "gpu_span_ms": per(end - start),
        "kernel_busy_ms": per(_length(k)),
        "h2d_busy_ms": per(h2d_ms),
        "kernel_and_h2d_ms": per(both),
        "h2d_only_ms": per(h2d_ms - both),
        "kernel_only_ms": per(_length(k) - both),
        "neither_ms": per((end - start) - busy),
        "h2d_gb": round(h2d_bytes / 1e9 / n_steps, 3),
        "h2d_gbps_while_copying": round(h2d_bytes / 1e3 / h2d_ms, 2) if h2d_ms else None,
        "h2d_copies": round(len(h2d) / n_steps, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--workload", default="w1", choices=sorted(stream.WORKLOADS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ctx", default="{}", help="extra Context kwargs as JSON")
    a = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    import pysdcpp

    w = stream.WORKLOADS[a.workload]
    files = {k: str(a.models / v) for k, v in w["files"].items()}
    ctx_kwargs = {**w["ctx"], **json.loads(a.ctx)}
    gen = {**w["gen"], "steps": a.steps}
    torch.cuda.init()
    prof = profile(activities=[ProfilerActivity.CUDA])
    marks = {}

    def progress(step, steps, t):
        now = time.perf_counter()
        if steps != a.steps:
            return
        if step == 2:
            prof.start()
            marks["start"] = now
        elif step == steps and "start" in marks:
            prof.stop()
            marks["stop"] = now

    grab = stream.LogGrab()
    with grab, pysdcpp.Context(**files, **ctx_kwargs) as ctx:
        ctx.generate(**gen, progress=progress)
    n_steps = a.steps - 2
    wall = marks["stop"] - marks["start"]

    per_kernel = defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.device_type.name != "CUDA":
            continue
        dur_us = ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
        rec = per_kernel[ev.name]
        rec[0] += 1
        rec[1] += dur_us / 1e3
    trace = a.out.with_suffix(".trace.json")
    prof.export_chrome_trace(str(trace))
    tl = timeline(trace, n_steps)
    trace.unlink()
    total_ms = sum(v[1] for v in per_kernel.values())
    by_cat = defaultdict(float)
    for name, (count, ms) in per_kernel.items():
        by_cat[category(name)] += ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:25]
    result = {
        "machine": stream.machine(), "commit": stream.git_commit(), "command": " ".join(sys.argv),
        "workload": a.workload, "ctx": ctx_kwargs, "gen": gen, "steps_profiled": n_steps,
        "step_wall_ms": round(wall * 1e3 / n_steps, 2),
        "step_kernel_ms": round(total_ms / n_steps, 2),
        "step_gpu_idle_ms": round((wall * 1e3 - total_ms) / n_steps, 2),
        "kernels_per_step": round(sum(v[0] for v in per_kernel.values()) / n_steps, 1),
        "by_category_ms_per_step": {k: round(v / n_steps, 2) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "timeline": tl,
        "host_timing_ms": stream.host_timing(grab.lines),
        "top_kernels": [{"name": short(n), "category": category(n), "calls_per_step": round(c / n_steps, 1),
                         "ms_per_step": round(ms / n_steps, 3)} for n, (c, ms) in top],
    }
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("step_wall_ms", "step_kernel_ms", "step_gpu_idle_ms",
                                             "kernels_per_step", "by_category_ms_per_step", "timeline",
                                             "host_timing_ms")}, indent=1))
    for t in result["top_kernels"][:12]:
        print(f"{t['ms_per_step']:9.2f} ms {t['calls_per_step']:7.1f}x  {t['category']:<28} {t['name'][:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
