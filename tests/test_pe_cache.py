"""Patch 0025: a DiT keeps its RoPE table between sampling steps instead of rebuilding it on the host
at every step (13-18 ms per step for a 1024x1024 Flux image on one desktop core).

The table is keyed by the shapes it depends on.  A stale table of the right length would not fail
loudly: 96x64 and 64x96 have the same number of image tokens and different positions, so a key that
mixed up width and height would silently reuse the wrong table.  Each size is generated twice on one
context, with the table kept and with SDCPP_NO_PE_CACHE=1 (rebuilt at every step), and the final
latents (patch 0022) must be the same bits.  Patch 0026's debug timing line is checked on the way.
"""
from __future__ import annotations

import pysdcpp
from conftest import THREADS, _logged_counts, read_latent

GEN = dict(prompt="a cat", steps=2, cfg_scale=1.0, guidance=3.5, seed=7, sampling_method="euler")
SIZES = ((64, 64), (96, 64), (64, 96), (64, 64))  # (width, height); the key changes at each call


def test_pe_table_kept_between_steps_is_bit_exact(tiny_flux_paths, tmp_path, monkeypatch, debug_log):
    latents = {}
    with pysdcpp.Context(**tiny_flux_paths, n_threads=THREADS) as ctx:
        for table in ("kept", "rebuilt"):
            if table == "rebuilt":
                monkeypatch.setenv("SDCPP_NO_PE_CACHE", "1")
            for i, (width, height) in enumerate(SIZES):
                prefix = tmp_path / f"{table}{i}"
                monkeypatch.setenv("SDCPP_TEST_DUMP_LATENTS", str(prefix))
                debug_log.clear()
                ctx.generate(**GEN, width=width, height=height)
                latents[table, i] = read_latent(prefix)
                # one timing line per DiT call: the graph build is timed (patch 0026)
                builds = _logged_counts(debug_log, r"flux compute timing: build=(\d+)\.\d+ ms alloc=")
                assert len(builds) == GEN["steps"], (table, i)
    for i, (width, height) in enumerate(SIZES):
        assert latents["kept", i].size == 16 * (width // 8) * (height // 8)
        assert latents["kept", i].tobytes() == latents["rebuilt", i].tobytes(), SIZES[i]
    # back to the first size: its table again, not the third call's
    assert latents["kept", 0].tobytes() == latents["kept", 3].tobytes()
