"""Generation on the random-weight SD 1.5: determinism, modes, callbacks, logs, threads."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from PIL import Image

import pysdcpp
from conftest import SIZE


def pixels(images) -> list[bytes]:
    return [np.asarray(im).tobytes() for im in images]


def test_same_seed_same_bytes_and_image_has_content(ctx):
    a = ctx.txt2img("a red cube", seed=42, **SIZE)
    b = ctx.txt2img("a red cube", seed=42, **SIZE)
    assert pixels(a) == pixels(b)
    arr = np.asarray(a[0])
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert arr.std() > 1.0, "a random-weight model should still give a non-constant image"
    assert a[0].info["seed"] == 42 and "a red cube" in a[0].info["prompt"]


def test_different_seed_different_bytes(ctx):
    a = ctx.txt2img("a red cube", seed=1, **SIZE)
    b = ctx.txt2img("a red cube", seed=2, **SIZE)
    assert pixels(a) != pixels(b)


def test_numpy_output_matches_pil(ctx):
    pil = ctx.txt2img("x", seed=5, **SIZE)[0]
    arr = ctx.txt2img("x", seed=5, output="numpy", **SIZE)[0]
    assert isinstance(arr, np.ndarray) and np.array_equal(np.asarray(pil), arr)


def test_batch_count(ctx):
    images = ctx.txt2img("x", seed=7, batch_count=3, **SIZE)
    assert len(images) == 3
    assert [im.info["seed"] for im in images] == [7, 8, 9]
    assert len(set(pixels(images))) == 3


def test_img2img_and_inpaint(ctx, tmp_path):
    init = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = ctx.img2img(init, "x", strength=0.5, seed=3, **SIZE)
    assert len(out) == 1 and out[0].size == (64, 64)
    # the same init given as a PIL image and as a file path gives the same bytes
    path = tmp_path / "init.png"
    Image.fromarray(init).save(path)
    assert pixels(ctx.img2img(path, "x", strength=0.5, seed=3, **SIZE)) == pixels(out)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    inpainted = ctx.img2img(init, "x", mask=mask, strength=0.9, seed=3, **SIZE)
    assert pixels(inpainted) != pixels(out)


def test_progress_callback_step_counts(ctx):
    calls = []
    ctx.txt2img("x", seed=1, batch_count=2, progress=lambda s, n, t: calls.append((s, n)), **SIZE)
    steps = SIZE["steps"]
    # sd.cpp reports step 0 when sampling starts, then each step, for each image of the batch
    assert calls == [(s, steps) for s in range(steps + 1)] * 2


def test_exception_in_callback_is_reraised_and_context_usable(ctx):
    class Boom(Exception):
        pass

    def progress(step, steps, t):
        raise Boom("from the callback")

    with pytest.raises(Boom, match="from the callback"):
        ctx.txt2img("x", seed=1, progress=progress, **SIZE)
    assert len(ctx.txt2img("x", seed=1, **SIZE)) == 1


def test_logs_reach_logging(ctx, caplog):
    with caplog.at_level(logging.DEBUG, logger="pysdcpp"):
        ctx.txt2img("x", seed=1, **SIZE)
    records = [r for r in caplog.records if r.name == "pysdcpp"]
    assert records, "sd.cpp's log lines should reach the 'pysdcpp' logger"
    assert {r.levelno for r in records} >= {logging.INFO}
    assert any("sampling" in r.getMessage().lower() or "generate" in r.getMessage().lower() for r in records)
    assert not any(r.getMessage().endswith("\n") for r in records)


def test_threads_share_one_context_and_serialize(ctx):
    seeds = [11, 12, 13, 14]
    serial = {s: pixels(ctx.txt2img("x", seed=s, **SIZE))[0] for s in seeds}
    results, errors = {}, []

    def worker(seed):
        try:
            for _ in range(2):
                results.setdefault(seed, []).append(pixels(ctx.txt2img("x", seed=seed, **SIZE))[0])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s in seeds:
        assert results[s] == [serial[s], serial[s]]


def test_gil_released_during_generation(ctx):
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.005)

    t = threading.Thread(target=ticker)
    t.start()
    ctx.txt2img("x", seed=1, **SIZE)
    stop.set()
    t.join()
    assert len(ticks) > 20, "a Python thread should keep running while C generates"


@pytest.mark.parametrize("kwargs, match", [
    (dict(width=60), "multiple of 8"),
    (dict(height=0), "multiple of 8"),
    (dict(steps=0), "steps"),
    (dict(batch_count=0), "batch_count"),
    (dict(sampling_method="no_such_sampler"), "unknown sampling method"),
    (dict(scheduler="nope"), "unknown scheduler"),
    (dict(cfg_scale=float("nan")), "NaN"),
    (dict(strength=1.5), "strength"),
])
def test_bad_generation_arguments_raise(ctx, kwargs, match):
    with pytest.raises(pysdcpp.InvalidArgumentError, match=match):
        ctx.txt2img("x", **{**SIZE, **kwargs})
    assert len(ctx.txt2img("x", seed=1, **SIZE)) == 1


def test_unknown_keyword_is_a_type_error(ctx):
    with pytest.raises(TypeError, match="no_such_option"):
        ctx.txt2img("x", no_such_option=1)


def test_missing_model_file(tmp_path):
    with pytest.raises(pysdcpp.ModelFileNotFoundError, match="no such file"):
        pysdcpp.Context(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):
        pysdcpp.Context(tmp_path / "missing.safetensors")


def test_garbage_model_file_raises_model_load_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(pysdcpp.ModelLoadError):
        pysdcpp.Context(bad, n_threads=1)


def test_sampler_names_are_sd_cli_names():
    assert pysdcpp.SampleMethod.parse("euler_a") is pysdcpp.SampleMethod.EULER_A
    assert str(pysdcpp.SampleMethod.EULER_A) == "euler_a"
    assert pysdcpp.Scheduler.parse("karras").cli_name == "karras"
    assert pysdcpp.WeightType.parse("q8_0").value == 8


def test_sampler_and_scheduler_by_name_change_output(ctx):
    base = pixels(ctx.txt2img("x", seed=4, sampling_method="euler", **SIZE))
    other = pixels(ctx.txt2img("x", seed=4, sampling_method="euler_a", scheduler="karras", **SIZE))
    assert base != other


def test_system_and_build_info():
    info = pysdcpp.build_info()
    assert info["sdcpp_version"] == info["sdcpp_version_runtime"]
    assert "0.4.7" in info["sdcpp_version"]
    text = pysdcpp.system_info()
    assert ("backend: CUDA" in text) == info["cuda"]
    assert "System Info" in text  # sd.cpp's own part follows


def test_random_checkpoint_has_exactly_the_tensors_sd_cpp_expects(sd15_path, caplog):
    """sd.cpp itself is the judge of the names and shapes pysdcpp.testing writes."""
    with caplog.at_level(logging.DEBUG, logger="pysdcpp"):
        with pysdcpp.Context(sd15_path, n_threads=1):
            pass
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "Version: SD 1.x" in log
    for bad in ("not in model file", "unknown tensor", "wrong shape", "tensor not found"):
        assert bad not in log, bad
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
