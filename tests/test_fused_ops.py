"""Ops that patches 0024 and 0029 fuse for Flux (on by default since 0030) must not change a bit.

* RoPE as one ggml_rope_pe op instead of eight ops per q and k (SDCPP_FUSED_ROPE=0: the eight ops).
* Each LayerNorm and its modulation, (n + n*scale) + shift, as one ggml_norm_modulate op instead of a
  norm, a multiply and two adds (SDCPP_FUSED_MODULATE=0: the four ops).

Their kernels round each product and sum as the separate ops do.  Here on the CPU backend, on a
tiny random-weight Flux (one double and one single block), compared on the float32 latent before
the VAE (patch 0022's SDCPP_TEST_DUMP_LATENTS) and on the image; the debug log proves that the ops
were in the graph.  On the H200 the same comparisons run in tests/test_gpu_stream.py and in
bench/stream.py's *_fused_* modes.
"""
from __future__ import annotations

import numpy as np

import pysdcpp
from conftest import THREADS, fused_modulate_counts, fused_rope_counts, read_latent

GEN = dict(prompt="a cat", width=64, height=64, steps=2, cfg_scale=1.0, guidance=3.5, seed=7,
           sampling_method="euler")
# per DiT graph: RoPE on q and k of each of the two blocks; a norm-modulate for img_norm1/2 and
# txt_norm1/2 of the double block, pre_norm of the single block and the final layer's norm
FUSED = {"rope": ("SDCPP_FUSED_ROPE", fused_rope_counts, 4),
         "modulate": ("SDCPP_FUSED_MODULATE", fused_modulate_counts, 6)}


def test_fused_ops_are_bit_exact(tiny_flux_paths, tmp_path, monkeypatch, debug_log):
    latents, images = {}, {}
    runs = {"graph": (), "rope": ("rope",), "modulate": ("modulate",), "both": ("rope", "modulate")}
    with pysdcpp.Context(**tiny_flux_paths, n_threads=THREADS) as ctx:
        for name, fused in runs.items():
            for op, (var, _, _) in FUSED.items():
                if op in fused:
                    monkeypatch.delenv(var, raising=False)  # the default
                else:
                    monkeypatch.setenv(var, "0")
            monkeypatch.setenv("SDCPP_TEST_DUMP_LATENTS", str(tmp_path / name))
            debug_log.clear()
            images[name] = np.asarray(ctx.generate(**GEN)[0])
            latents[name] = read_latent(tmp_path / name)
            for op, (_, counts, per_graph) in FUSED.items():
                # once per step: the DiT's graph; no op at all without the switch
                assert counts(debug_log) == ([per_graph] * GEN["steps"] if op in fused else []), (name, op)
    assert latents["graph"].size == 16 * (64 // 8) ** 2 and latents["graph"].std() > 0
    for name in runs:
        assert latents[name].tobytes() == latents["graph"].tobytes(), name
        assert np.array_equal(images[name], images["graph"]), name
