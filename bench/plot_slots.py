#!/usr/bin/env python3
"""Bar chart of the W1 runs after the slot pipeline and the ggml-cuda fixes, with the earlier
run and the diffusers peer of each session beside them.

    python3 bench/plot_slots.py     # writes bench/results/stream_slots_h200.png
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = [("before (patches 0001-0009)", "stream_w1_h200.json", "peer_diffusers_h200.jsonl"),
        ("slots (0001-0011)", "stream_w1_slots_v1_h200.json", "peer_diffusers_slots_v1_h200.jsonl"),
        ("slots + 0012-0014", "stream_w1_slots_h200.json", "peer_diffusers_slots_h200.jsonl")]
MODES = ["resident", "prefetch_8", "prefetch_2", "residency_16", "pinned_sync_8"]


def main() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(RUNS)
    for i, (label, run_file, peer_file) in enumerate(RUNS):
        runs = {r["mode"]: r for r in json.loads((RESULTS / run_file).read_text())["runs"]}
        peer = {p["mode"]: p["median_s"] for p in map(json.loads, (RESULTS / peer_file).read_text().splitlines())}
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
