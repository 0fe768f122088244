"""The streaming code paths (segments, prefetch, adoption, fallbacks, residency) on the CPU.

Our patch's test hook SDCPP_TEST_STREAM_ON_CPU=1 makes a CPU-only build take the path a
GPU build takes with offload_params_to_cpu + max_vram: a separate params backend, the
graph cut into segments, each segment's params copied in (or prefetched) and released.
There is no overlap on a CPU, but every line of the mechanism runs, and its output must
be byte-identical to a plain run.  The GPU run of the same checks is test_gpu_stream.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import pysdcpp
from conftest import SIZE, THREADS, read_latent, slot_counts

GEN = dict(prompt="a lighthouse", seed=42, **SIZE)
BUDGET = 0.25  # GiB: the SD 1.5 UNet (1.7 GB of f16) in many segments, too small for two slots
SLOT_BUDGET = 0.5  # GiB: 14 segments through two slots (three need 1 GiB)


@pytest.fixture(autouse=True)
def stream_on_cpu(monkeypatch):
    monkeypatch.setenv("SDCPP_TEST_STREAM_ON_CPU", "1")


@pytest.fixture(scope="module")
def reference(ctx):
    return [np.asarray(im) for im in ctx.generate(**GEN)]


def run(sd15_path, gens=(GEN,), **kwargs):
    out, stats = [], []
    with pysdcpp.Context(sd15_path, n_threads=THREADS, offload_params_to_cpu=True, **kwargs) as c:
        for g in gens:
            out.append([np.asarray(im) for im in c.generate(**g)])
            stats.append(c.last_stream_stats)
    return out, stats


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)


def test_prefetch_is_bit_exact_with_many_segments(sd15_path, reference):
    (images,), (s,) = run(sd15_path, max_vram=BUDGET, stream_layers=True)
    assert same(images, reference)
    assert s.compute_calls > 0 and s.segments / s.compute_calls >= 8
    assert s.prefetch_adopted > 0 and s.bytes_prefetched > 0
    assert s.peak_vram_bytes <= s.budget_bytes


def test_final_latents_dumped_and_bit_exact(sd15_path, ctx, tmp_path, monkeypatch):
    """Patch 0022's SDCPP_TEST_DUMP_LATENTS: the float32 latent before the VAE, resident and streamed."""
    monkeypatch.setenv("SDCPP_TEST_DUMP_LATENTS", str(tmp_path / "resident"))
    ctx.generate(**GEN)
    monkeypatch.setenv("SDCPP_TEST_DUMP_LATENTS", str(tmp_path / "streamed"))
    run(sd15_path, max_vram=BUDGET, stream_layers=True)
    resident, streamed = read_latent(tmp_path / "resident"), read_latent(tmp_path / "streamed")
    assert resident.size == 4 * (GEN["width"] // 8) * (GEN["height"] // 8)
    assert np.isfinite(resident).all() and resident.std() > 0
    assert resident.tobytes() == streamed.tobytes()


def test_depth0_and_plain_segmented_offload_are_bit_exact(sd15_path, reference):
    (sync,), (s0,) = run(sd15_path, max_vram=BUDGET, stream_layers=True, stream_prefetch_depth=0)
    (plain,), (sp,) = run(sd15_path, max_vram=BUDGET, stream_layers=False)
    assert same(sync, reference) and same(plain, reference)
    assert s0.segments > 0 and s0.prefetch_adopted == 0 and s0.bytes_prefetched == 0
    assert sp.segments > 0


@pytest.mark.parametrize("hook", ["SDCPP_TEST_PREFETCH_ALLOC_FAIL", "SDCPP_TEST_PREFETCH_MISMATCH"])
def test_injected_failures_fall_back_bit_exact(sd15_path, reference, monkeypatch, hook):
    monkeypatch.setenv(hook, "1")
    (images,), (s,) = run(sd15_path, max_vram=BUDGET, stream_layers=True)
    assert same(images, reference)
    assert s.prefetch_adopted == 0 and s.prefetch_fallback > 0


def test_residency_streams_less_and_is_bit_exact(sd15_path, ctx):
    gen = dict(GEN, steps=3)
    ref = [np.asarray(im) for im in ctx.generate(**gen)]
    (res,), (s,) = run(sd15_path, (gen,), max_vram=1.2, stream_layers=True, stream_residency=True)
    (nores,), (n,) = run(sd15_path, (gen,), max_vram=1.2, stream_layers=True, stream_residency=False)
    assert same(res, ref) and same(nores, ref)
    assert s.bytes_resident > 0 and s.bytes_streamed < n.bytes_streamed


def test_two_generations_and_a_resolution_change(sd15_path, ctx):
    gens = [GEN, dict(GEN, seed=7, width=80, height=48)]
    ref = [[np.asarray(im) for im in ctx.generate(**g)] for g in gens]
    got, stats = run(sd15_path, gens, max_vram=BUDGET, stream_layers=True)
    for a, b in zip(got, ref):
        assert same(a, b)
    assert all(s.prefetch_adopted > 0 for s in stats)


def test_depth2_three_slots_bit_exact_within_budget(sd15_path, reference, debug_log):
    """Depth 2 queues up to two segments ahead: three slots (depth 1 queues the next one after each
    launch, through two)."""
    (images,), (s,) = run(sd15_path, max_vram=1.0, stream_layers=True, stream_residency=False,
                          stream_prefetch_depth=2)
    assert same(images, reference)
    assert slot_counts(debug_log) == [3] * s.compute_calls
    assert s.prefetch_adopted > 0 and s.prefetch_fallback == 0
    assert s.peak_vram_bytes <= s.budget_bytes


def test_failed_segment_raises_and_the_context_recovers(sd15_path, reference, monkeypatch):
    """A segment fails with its params adopted and the next ones' copies queued: the generation
    raises, and the same context then streams the reference bytes again."""
    with pysdcpp.Context(sd15_path, n_threads=THREADS, offload_params_to_cpu=True, max_vram=BUDGET,
                         stream_layers=True) as c:
        monkeypatch.setenv("SDCPP_TEST_FAIL_SEGMENT", "3")
        with pytest.raises(pysdcpp.GenerationError):
            c.generate(**GEN)
        monkeypatch.delenv("SDCPP_TEST_FAIL_SEGMENT")
        again = [np.asarray(im) for im in c.generate(**GEN)]
        assert c.last_stream_stats.prefetch_adopted > 0
    assert same(again, reference)


@pytest.mark.parametrize("mode,residency", [("launch", False), ("ahead", False), ("off", True), (None, True)])
def test_slot_modes_are_bit_exact(sd15_path, reference, monkeypatch, debug_log, mode, residency):
    """SDCPP_STREAM_SLOTS picks how a call uses slots (queued ahead, queued after each launch (the
    default), or per-segment prefetch); the bytes never depend on it."""
    if mode:
        monkeypatch.setenv("SDCPP_STREAM_SLOTS", mode)
    (images,), (s,) = run(sd15_path, max_vram=SLOT_BUDGET, stream_layers=True, stream_residency=residency)
    assert same(images, reference)
    assert slot_counts(debug_log) == ([] if mode == "off" else [2] * s.compute_calls)
    assert s.prefetch_adopted > 0 and s.prefetch_fallback == 0
    assert s.peak_vram_bytes <= s.budget_bytes


@pytest.mark.parametrize("mode,inputs", [("launch", None), ("ahead", None), ("launch", "segment")])
def test_inputs_uploaded_once_per_call_are_bit_exact(sd15_path, reference, monkeypatch, debug_log, mode, inputs):
    """A call through slots uploads the graph's inputs once, before any params are queued, and every
    segment reads them there (patch 0023's default); SDCPP_STREAM_INPUTS=segment has each segment
    upload its own copy."""
    monkeypatch.setenv("SDCPP_STREAM_SLOTS", mode)
    if inputs:
        monkeypatch.setenv("SDCPP_STREAM_INPUTS", inputs)
    (images,), (s,) = run(sd15_path, max_vram=SLOT_BUDGET, stream_layers=True, stream_residency=False)
    assert same(images, reference)
    assert slot_counts(debug_log) == [2] * s.compute_calls
    uploads = [r.getMessage() for r in debug_log.records if "stream inputs" in r.getMessage()]
    assert len(uploads) == (0 if inputs == "segment" else s.compute_calls), uploads[:3]
    assert s.prefetch_adopted > 0 and s.prefetch_fallback == 0


def test_stream_stats_by_model_add_up_to_the_total(sd15_path, reference):
    """ctx.last_stream_stats_by_model splits the generation's counters by model component; with
    CFG the UNet is evaluated twice per step."""
    with pysdcpp.Context(sd15_path, n_threads=THREADS, offload_params_to_cpu=True, max_vram=BUDGET,
                         stream_layers=True) as c:
        images = [np.asarray(im) for im in c.generate(**GEN)]
        total, by_model = c.last_stream_stats, c.last_stream_stats_by_model
    assert same(images, reference)
    assert by_model["unet"].compute_calls == 2 * GEN["steps"] and by_model["unet"].bytes_streamed > 0
    for field, value in total.as_dict().items():
        parts = [getattr(s, field) for s in by_model.values()]
        if field == "peak_vram_bytes":
            assert value == max(parts)
        elif field == "budget_bytes":
            assert all(p == value for p in parts)
        else:
            assert value == pytest.approx(sum(parts)), field
