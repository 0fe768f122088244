#!/usr/bin/env python3
"""Plot and summarize bench/results/*.json (streaming benchmark on the H200).

    python3 bench/plot.py            # writes bench/results/stream_h200.png and prints the table
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load():
    w1 = json.loads((RESULTS / "stream_w1_h200.json").read_text())
    w2 = json.loads((RESULTS / "stream_w2_h200.json").read_text())
    h2d = json.loads((RESULTS / "h2d_h200.json").read_text())
    peer = [json.loads(l) for l in (RESULTS / "peer_diffusers_h200.jsonl").read_text().splitlines() if l.strip()]
    return w1, w2, h2d, peer


# Bytes the denoiser streams per step when nothing stays resident: W1 one DiT forward
# (23.80 GB of bf16), W2 two UNet calls (cond and uncond, 5.14 GB of f16 each).
FULL_STEP_BYTES = {"w1": 23.80e9, "w2": 2 * 5.14e9}
CALLS_PER_STEP = {"w1": 1, "w2": 2}


def summarize(data, workload, h2d_gbps, peer_stream=None):
    """One row per mode.  Stats are totals over the generation (the text encoders' segmented
    calls included), so per-step figures come from the denoiser's size and the resident bytes:
    residency starts with the 3rd segmented call, after which `bytes_resident` is counted once
    per call."""
    runs = {r["mode"]: r for r in data["runs"] if "error" not in r}
    resident_s = runs["resident"]["steady_step_s"]
    steps = runs["resident"]["gen"]["steps"]
    rows = []
    for mode, r in runs.items():
        if r.get("steady_step_s") is None:
            continue
        st = r.get("stats") or {}
        segmented = bool(st.get("segments"))
        resident_calls = max(1, (steps - 2) * CALLS_PER_STEP[workload])
        resident_per_step = st.get("bytes_resident", 0) / resident_calls * CALLS_PER_STEP[workload]
        streamed = FULL_STEP_BYTES[workload] - resident_per_step if segmented else 0.0
        bound = max(streamed / 1e9 / h2d_gbps, resident_s)
        rows.append({
            "mode": mode, "s_per_step": r["steady_step_s"],
            "gb_streamed_per_step": round(streamed / 1e9, 2),
            "gb_resident": round(resident_per_step / 1e9, 2),
            "segments_per_call": round(st["segments"] / st["compute_calls"], 1) if segmented else None,
            "h2d_ms_total": round(st.get("h2d_ms", 0)), "compute_ms_total": round(st.get("compute_ms", 0)),
            "wait_ms_total": round(st.get("wait_ms", 0)),
            "prefetch_adopted": st.get("prefetch_adopted"), "prefetch_skipped": st.get("prefetch_skipped"),
            "peak_vram_gib": round(r["peak_vram_mib"] / 1024, 1),
            "bound_s": round(bound, 3), "over_bound": round(r["steady_step_s"] / bound, 2),
            "vs_diffusers": round(peer_stream / r["steady_step_s"], 2) if peer_stream else None})
    return rows


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w1, w2, h2d, peer = load()
    gbps = h2d["pinned_GBps"]
    peer_modes = {p["mode"]: p["median_s"] for p in peer}
    tables = {"W1 Flux-dev bf16 1024² (1 forward/step)": summarize(w1, "w1", gbps, peer_modes.get("grp_stream")),
              "W2 SDXL f16 1024² (CFG)": summarize(w2, "w2", gbps)}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    for ax, (title, rows) in zip(axes, tables.items()):
        names = [r["mode"] for r in rows]
        vals = [r["s_per_step"] for r in rows]
        if title.startswith("W1"):
            for label, key in (("diffusers resident", "resident"), ("diffusers group offload+stream", "grp_stream")):
                if key in peer_modes:
                    names.append(label)
                    vals.append(peer_modes[key])
        colors = ["tab:gray" if n.startswith("diffusers") else "tab:blue" for n in names]
        ax.barh(names, vals, color=colors)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
        ax.set_xlim(0, max(vals) * 1.15)
        ax.set_xlabel("seconds per step (median, steps 3+)")
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        print(f"\n{title}  (pinned H2D {gbps} GB/s, pageable {h2d['pageable_GBps']} GB/s)")
        for r in rows:
            print(json.dumps(r))
    fig.suptitle("pysdcpp weight streaming on one H200 (offload_params_to_cpu + max_vram GiB)", fontsize=11)
    fig.tight_layout()
    out = RESULTS / "stream_h200.png"
    fig.savefig(out, dpi=110)
    (RESULTS / "summary_h200.json").write_text(json.dumps(tables, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
