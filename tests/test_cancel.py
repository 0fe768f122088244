"""Cancellation: ctx.cancel() from another thread or a callback, and Ctrl-C, stop at the next step."""
from __future__ import annotations

import _thread
import threading

import numpy as np
import pytest

import pysdcpp
from conftest import SIZE

LONG = dict(SIZE, steps=8)


def test_cancel_from_another_thread_stops_early_and_context_stays_usable(ctx):
    steps_seen = []
    started = threading.Event()

    def progress(step, steps, t):
        steps_seen.append(step)
        if step >= 1:
            started.set()

    def canceller():
        started.wait(60)
        ctx.cancel()

    t = threading.Thread(target=canceller)
    t.start()
    with pytest.raises(pysdcpp.CancelledError):
        ctx.txt2img("x", seed=3, progress=progress, **LONG)
    t.join()
    assert max(steps_seen) < LONG["steps"], "the sampler should stop before its last step"
    # usable afterwards, and the cancel request does not leak into the next generation
    a = ctx.txt2img("x", seed=3, **SIZE)
    b = ctx.txt2img("x", seed=3, **SIZE)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_cancel_from_the_progress_callback(ctx):
    seen = []

    def progress(step, steps, t):
        seen.append(step)
        if step == 2:
            ctx.cancel()

    with pytest.raises(pysdcpp.CancelledError):
        ctx.txt2img("x", seed=1, progress=progress, **LONG)
    assert max(seen) == 2  # the callback keeps running: sd.cpp stopped before step 3


def test_cancel_without_a_generation_is_a_no_op(ctx):
    ctx.cancel()
    assert len(ctx.txt2img("x", seed=1, **SIZE)) == 1


def cancelled_in_log(caplog) -> bool:
    return any("sampling cancelled" in r.getMessage() for r in caplog.records if r.name == "pysdcpp")


def test_keyboard_interrupt_stops_the_generation(ctx, caplog):
    seen = []

    def progress(step, steps, t):
        seen.append(step)
        if step == 1:
            _thread.interrupt_main()  # as Ctrl-C would: raised in the next Python code that runs

    with caplog.at_level("WARNING", logger="pysdcpp"), pytest.raises(KeyboardInterrupt):
        ctx.txt2img("x", seed=1, progress=progress, **LONG)
    assert cancelled_in_log(caplog), "sd.cpp itself should have stopped sampling"
    assert len(ctx.txt2img("x", seed=1, **SIZE)) == 1


def test_exception_in_callback_stops_sampling_early(ctx, caplog):
    seen = []

    def progress(step, steps, t):
        seen.append(step)
        if step == 1:
            raise ValueError("stop")

    with caplog.at_level("WARNING", logger="pysdcpp"), pytest.raises(ValueError, match="stop"):
        ctx.txt2img("x", seed=1, progress=progress, **LONG)
    assert cancelled_in_log(caplog), "sd.cpp should stop at the next step once a callback raised"
