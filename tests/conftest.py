"""Shared fixtures: one random-weight SD 1.5 checkpoint and one context per session.

No weights can be downloaded: `pysdcpp.testing` writes a checkpoint with the exact
tensor names and shapes of SD 1.5, random values, deterministic from a seed.
CPU tests keep images tiny (64x64, 2 steps): 2 cores are slow.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# The tests run against the installed, compiled package, never the checkout's pysdcpp/ (which has no
# compiled module): pytest is started with `python3 -P` (safe path), and child processes inherit
# PYTHONSAFEPATH so that `python -m pysdcpp` run from the checkout does not import the source tree.
os.environ["PYTHONSAFEPATH"] = "1"

def _installed_package() -> None:
    import importlib.util

    spec = importlib.util.find_spec("pysdcpp")
    checkout = Path(__file__).resolve().parent.parent
    if spec is None or Path(spec.origin).resolve().is_relative_to(checkout):
        where = "nowhere" if spec is None else spec.origin
        raise pytest.UsageError(
            f"pysdcpp would be imported from {where}, not from an installed build: run "
            "`python3 -m pip install .` and then `python3 -P -m pytest ...` (see README.md)")


_installed_package()

SIZE = dict(width=64, height=64, steps=2)
# ggml's worker threads spin while they wait: on a loaded 2-core machine 1 thread is faster.
THREADS = int(os.environ.get("PYSDCPP_TEST_THREADS", "2"))


def _logged_counts(caplog, pattern: str) -> list:
    """The integer that `pattern`'s group captures, from each log record that matches it."""
    import re

    found = (re.search(pattern, r.getMessage()) for r in caplog.records)
    return [int(m.group(1)) for m in found if m]


def slot_counts(caplog) -> list:
    """How many stream slots each segmented call used, from the patch's debug log ([]: none did)."""
    return _logged_counts(caplog, r"streaming \d+ segments through (\d+) slots")


def fused_rope_counts(caplog) -> list:
    """How many ggml_rope_pe ops each graph held, from patch 0024's debug log ([]: no graph had one)."""
    return _logged_counts(caplog, r"graph: (\d+) fused RoPE ops")


def fused_modulate_counts(caplog) -> list:
    """How many ggml_norm_modulate ops each graph held, from the debug log ([]: no graph had one)."""
    return _logged_counts(caplog, r"graph: (\d+) fused norm-modulate ops")


def read_latent(prefix) -> np.ndarray:
    """The first final latent that SDCPP_TEST_DUMP_LATENTS=prefix wrote (patch 0022: prefix.0.f32)."""
    return np.fromfile(f"{prefix}.0.f32", dtype=np.float32)


@pytest.fixture
def debug_log(caplog):
    """caplog at DEBUG for the pysdcpp logger, where sd.cpp's log goes."""
    import logging

    caplog.set_level(logging.DEBUG, logger="pysdcpp")
    return caplog


def _cache_dir() -> Path:
    path = Path(os.environ.get("PYSDCPP_TEST_CACHE", Path.home() / ".cache" / "pysdcpp-tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def sd15_path() -> Path:
    from pysdcpp import testing

    path = _cache_dir() / "sd15-random-seed0-f16.safetensors"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        testing.write_sd15(tmp, seed=0, dtype="f16")
        tmp.rename(path)
    return path


@pytest.fixture(scope="session")
def tiny_flux_paths(tmp_path_factory) -> dict:
    """A random-weight Flux with one double and one single block (DiT, CLIP-L, VAE): the fused-op
    and RoPE-table tests compare its final latents between code paths."""
    from pysdcpp import testing

    out = tmp_path_factory.mktemp("flux")
    return testing.write_flux(out, seed=3, depth=1, depth_single=1, hidden_size=256,
                              components=("diffusion_model", "clip_l", "vae"))


@pytest.fixture(scope="session")
def ctx(sd15_path):
    import pysdcpp

    with pysdcpp.Context(sd15_path, n_threads=THREADS) as context:
        yield context


def pytest_collection_modifyitems(config, items):
    try:
        import pysdcpp

        has_cuda = pysdcpp.build_info()["cuda"]
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA build of pysdcpp and a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
