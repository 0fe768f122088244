#!/usr/bin/env python3
"""Bar charts of the W1 streaming runs on the H200, with the diffusers peer of each session.

    python3 bench/plot_slots.py     # writes bench/results/stream_slots_h200.png (session 2:
                                    # slots and the first compute fixes) and
                                    # bench/results/stream_launch_h200.png (session 3: how slots
                                    # are queued, segment sizes) and
                                    # bench/results/stream_inputs_h200.png (session 4: inputs once
                                    # per call, depth 2 ahead, conversion kernels, final defaults)
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = [("before (patches 0001-0009)", "stream_w1_h200.json", "peer_diffusers_h200.jsonl"),
        ("slots (0001-0011)", "stream_w1_slots_v1_h200.json", "peer_diffusers_slots_v1_h200.jsonl"),
        ("slots + 0012-0014", "stream_w1_slots_h200.json", "peer_diffusers_slots_h200.jsonl")]
MODES = ["resident", "prefetch_8", "prefetch_2", "residency_16", "pinned_sync_8"]


# Session 3: (panel title, run file, peer file, [(mode, label)]).
PANELS = [
    ("how slots are queued (fdfb9b5)", "stream_w1_launch_h200.json", "peer_diffusers_launch_h200.jsonl",
     [("prefetch_8", "8 GiB, per segment"), ("prefetch_8_ahead", "8 GiB, slots ahead"),
      ("prefetch_8_launch", "8 GiB, slots after launch"), ("prefetch_2", "2 GiB, per segment"),
      ("prefetch_2_launch", "2 GiB, slots after launch"), ("residency_16_off", "res. 16 GiB, per segment"),
      ("residency_16", "res. 16 GiB, slots ahead"), ("residency_16_launch", "res. 16 GiB, slots after launch")]),
    ("segment size, slots after launch (a0f7d7a)", "stream_w1_0017_h200.json", "peer_diffusers_0017_h200.jsonl",
     [("pinned_sync_8", "8 GiB, pinned sync"), ("prefetch_8", "8 GiB, max_vram/2"),
      ("prefetch_8_div4", "8 GiB, /4 (default)"), ("residency_8", "res. 8 GiB, /4"),
      ("residency_8_div8", "res. 8 GiB, /8 (default)"), ("residency_16", "res. 16 GiB, /4"),
      ("residency_16_div8", "res. 16 GiB, /8 (default)"), ("residency_16_div12", "res. 16 GiB, /12")]),
]

# Session 4: the 0021 runs, one machine; prefetch_4_d2 and residency_16_d2 ran with
# SDCPP_STREAM_INPUTS=call SDCPP_STREAM_SLOTS=ahead (what depth 2 does by default since 0023).
PANELS_4 = [
    ("inputs once per call, depth 2 ahead (90a69a9)", "stream_w1_0021_h200.json", "peer_diffusers_0021_h200.jsonl",
     [("pinned_sync_8", "8 GiB, pinned sync"), ("prefetch_8", "8 GiB, after launch"),
      ("prefetch_8_inputs", "8 GiB, after launch, inputs once"), ("prefetch_8_d2_ahead", "8 GiB, 2 ahead"),
      ("prefetch_8_d2_ahead_inputs", "8 GiB, 2 ahead, inputs once"), ("prefetch_4_d2", "4 GiB, 2 ahead, inputs once"),
      ("residency_16", "res. 16 GiB, after launch"), ("residency_16_inputs", "res. 16 GiB, inputs once"),
      ("residency_16_d2", "res. 16 GiB, 2 ahead, inputs once")]),
    ("conversion kernels (0021) and 0014, same session", "stream_w1_0021_h200.json", "peer_diffusers_0021_h200.jsonl",
     [("resident_base_kernels", "resident, base kernels"), ("resident_convert_x1", "resident, one value/thread"),
      ("resident", "resident (0021)"), ("residency_16_convert_x1", "res. 16 GiB, one value/thread"),
      ("residency_16", "res. 16 GiB (0021)")]),
    ("final defaults (4ba0bf8)", "stream_w1_0023_h200.json", "peer_diffusers_0023_h200.jsonl",
     [("prefetch_8", "8 GiB, depth 1"), ("prefetch_8_d2", "8 GiB, depth 2"),
      ("prefetch_8_d2_segment_inputs", "8 GiB, depth 2, inputs per segment"), ("prefetch_4_d2", "4 GiB, depth 2"),
      ("residency_16", "res. 16 GiB, depth 1")]),
]


def load(run_file: str, peer_file: str) -> tuple[dict, dict]:
    """The runs of one bench/stream.py JSON by mode, and the peer's median s/step by mode."""
    runs = {r["mode"]: r for r in json.loads((RESULTS / run_file).read_text())["runs"]}
    peer = {p["mode"]: p["median_s"] for p in map(json.loads, (RESULTS / peer_file).read_text().splitlines())}
    return runs, peer


def plot_panels(plt, panels: list, out_name: str) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), sharex=True)
    for ax, (title, run_file, peer_file, modes) in zip(axes, panels):
        runs, peer = load(run_file, peer_file)
        values = [runs[m]["steady_step_s"] for m, _ in modes]
        ys = range(len(modes))
        ax.barh(ys, values, color=["tab:green" if "res" in label else "tab:blue" for _, label in modes])
        for y, v in zip(ys, values):
            ax.text(v + 0.01, y, f"{v:.3f}", va="center", fontsize=7)
        ax.set_yticks(list(ys), [label for _, label in modes], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(peer["grp_stream"], color="tab:red", lw=1, label=f"diffusers grp_stream {peer['grp_stream']:.3f}")
        ax.axvline(23.80e9 / 55.43e9, color="k", ls="--", lw=0.8, label="full-stream bound 0.429")
        if "resident" in runs:
            ax.axvline(runs["resident"]["steady_step_s"], color="gray", ls=":", lw=1,
                       label=f"resident {runs['resident']['steady_step_s']:.3f}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("s / step (W1: FLUX.1-dev bf16, 1024², H200)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / out_name, dpi=120)


def main() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_panels(plt, PANELS, "stream_launch_h200.png")
    plot_panels(plt, PANELS_4, "stream_inputs_h200.png")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(RUNS)
    for i, (label, run_file, peer_file) in enumerate(RUNS):
        runs, peer = load(run_file, peer_file)
        values = [runs.get(m, {}).get("steady_step_s") or 0 for m in MODES] + [peer.get("grp_stream", 0)]
        xs = [j + i * width for j in range(len(values))]
        ax.bar(xs, values, width, label=label)
        for x, v in zip(xs, values):
            if v:
                ax.text(x, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    ax.axhline(23.80e9 / 55.43e9, color="k", ls="--", lw=0.8, label="full-stream transfer bound 0.429 s")
    ax.set_xticks([j + width for j in range(len(MODES) + 1)], MODES + ["diffusers grp_stream"], fontsize=8)
    ax.set_ylabel("s / step (W1: FLUX.1-dev bf16, 1024², H200)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "stream_slots_h200.png", dpi=120)


if __name__ == "__main__":
    main()
