"""Patch 0024's ggml_rope_pe: Flux's RoPE as one op (SDCPP_FUSED_ROPE=1) must not change a bit.

The op replaces eight ggml ops per q and k; its kernels round each product and the sum as those
ops round them.  Here on the CPU backend, on a tiny random-weight Flux (one double and one single
block), compared on the float32 latent before the VAE (patch 0022's SDCPP_TEST_DUMP_LATENTS);
on the H200 the same comparison runs in bench/stream.py (mode resident_fused_rope).
"""
from __future__ import annotations

import numpy as np
import pytest

import pysdcpp
from conftest import THREADS, fused_rope_counts, read_latent

GEN = dict(prompt="a cat", width=64, height=64, steps=2, cfg_scale=1.0, guidance=3.5, seed=7,
           sampling_method="euler")


@pytest.fixture(scope="module")
def flux_paths(tmp_path_factory):
    from pysdcpp import testing

    out = tmp_path_factory.mktemp("flux")
    return testing.write_flux(out, seed=3, depth=1, depth_single=1, hidden_size=256,
                              components=("diffusion_model", "clip_l", "vae"))


def test_fused_rope_is_bit_exact(flux_paths, tmp_path, monkeypatch, debug_log):
    latents, images = {}, {}
    with pysdcpp.Context(**flux_paths, n_threads=THREADS) as ctx:
        for name, fused in (("graph", None), ("fused", "1")):
            if fused:
                monkeypatch.setenv("SDCPP_FUSED_ROPE", fused)
            monkeypatch.setenv("SDCPP_TEST_DUMP_LATENTS", str(tmp_path / name))
            debug_log.clear()
            images[name] = np.asarray(ctx.generate(**GEN)[0])
            latents[name] = read_latent(tmp_path / name)
            # the DiT's graph, once per step: q and k of its two blocks; none without the switch
            assert fused_rope_counts(debug_log) == ([4] * GEN["steps"] if fused else [])
    assert latents["graph"].size == 16 * (64 // 8) ** 2 and latents["graph"].std() > 0
    assert latents["fused"].tobytes() == latents["graph"].tobytes()
    assert np.array_equal(images["fused"], images["graph"])
