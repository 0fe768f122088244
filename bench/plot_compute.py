#!/usr/bin/env python3
"""The resident Flux-dev step on the H200, change by change (#6), with PyTorch on the same machine.

    python3 bench/plot_compute.py    # writes bench/results/compute_h200.png

Left: session 5's opt-in changes measured one process per mode on one machine
(results/stream_w1_0029_h200.json), against that machine's defaults and diffusers' resident step
(results/peer_diffusers_0029_h200.jsonl). Right: the step's kernel time by op type before and after
(results/profile_w1_0029_default_h200.json, results/profile_w1_0029_all_h200.json), and the new
defaults measured on a second machine (results/stream_w1_0030_h200.json).
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.265  # #6: resident step <= 1.5x PyTorch's 0.177 s

# (mode in stream_w1_0029_h200.json, label)
MODES = [("resident_pe_rebuilt", "RoPE table rebuilt\neach step (pre-0025)"),
         ("resident_rms_block", "rms_norm block\nper row (pre-0028)"),
         ("resident", "defaults at 3e99fdd"),
         ("resident_fused_modulate", "norm-modulate op\nalone (0029)"),
         ("resident_lt_bias", "cuBLASLt bias\nepilogue alone (0027)"),
         ("resident_fused_rope", "RoPE op alone (0024)"),
         ("resident_exact", "RoPE + modulate ops"),
         ("resident_all", "all three\n(defaults since 0030)")]


def steps(name: str) -> dict:
    return {r["mode"]: r["steady_step_s"] for r in json.loads((RESULTS / name).read_text())["runs"]}


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s29 = steps("stream_w1_0029_h200.json")
    s30 = steps("stream_w1_0030_h200.json")
    peer_rows = [json.loads(line) for line in (RESULTS / "peer_diffusers_0029_h200.jsonl").open()]
    peer = {row["mode"]: row["median_s"] for row in peer_rows}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [3, 2]})

    labels = [lab for _, lab in MODES] + ["PyTorch/diffusers\nresident"]
    values = [s29[m] for m, _ in MODES] + [peer["resident"]]
    colors = ["#bbbbbb", "#bbbbbb", "#777777"] + ["#4c72b0"] * (len(MODES) - 3) + ["#dd8452"]
    bars = ax.bar(range(len(values)), values, color=colors)
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.004, f"{v:.3f}", ha="center", fontsize=8)
    ax.axhline(TARGET, color="#c44e52", ls="--", lw=1)
    ax.text(len(values) - 0.5, TARGET + 0.004, f"target {TARGET} s", color="#c44e52", ha="right", fontsize=8)
    ax.set_xticks(range(len(values)), [lab.replace("\n", " ") for lab in labels], fontsize=8, rotation=28,
                  ha="right", rotation_mode="anchor")
    ax.set_ylabel("s per step (steady, W1 1024x1024 bf16)")
    ax.set_title("resident Flux-dev step, one process per mode, one H200 (session 5, machine 1)", fontsize=10)

    before = json.loads((RESULTS / "profile_w1_0029_default_h200.json").read_text())
    after = json.loads((RESULTS / "profile_w1_0029_all_h200.json").read_text())
    b_ms, a_ms = before["by_category_ms_per_step"], after["by_category_ms_per_step"]
    cats = [c for c in dict.fromkeys([*b_ms, *a_ms]) if max(b_ms.get(c, 0), a_ms.get(c, 0)) > 1]
    x = range(len(cats))
    bx.barh([i + 0.2 for i in x], [b_ms.get(c, 0) for c in cats], 0.4,
            color="#777777", label=f"defaults at 3e99fdd: {before['step_kernel_ms']:.0f} ms of kernels")
    bx.barh([i - 0.2 for i in x], [a_ms.get(c, 0) for c in cats], 0.4,
            color="#4c72b0", label=f"all three on: {after['step_kernel_ms']:.0f} ms of kernels")
    bx.set_yticks(list(x), cats, fontsize=8)
    bx.invert_yaxis()
    bx.set_xlabel("kernel ms per step (CUPTI)")
    bx.legend(fontsize=8, loc="lower right")
    bx.set_title(f"where the kernel time goes; new defaults on machine 2: {s30['resident']:.3f} s/step\n"
                 f"(all three off there: {s30['resident_unfused']:.3f})", fontsize=10)
    fig.tight_layout()
    out = RESULTS / "compute_h200.png"
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
