"""The one place that holds the compiled cffi module and sd.cpp's global callbacks.

sd.cpp's log, progress and preview callbacks are process-global.  They are
registered once, with ``extern "Python"`` functions; each dispatches to the
target of the call in progress *on the calling thread* (sd.cpp calls them from
the thread that runs the generation), so two contexts generating in two threads
never see each other's progress.  An exception raised by a Python target is
stored and re-raised once the C call has returned (:func:`call`).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Iterator

from ._sdcpp import ffi, lib

logger = logging.getLogger("pysdcpp")

_LEVELS = {
    lib.SD_LOG_DEBUG: logging.DEBUG,
    lib.SD_LOG_INFO: logging.INFO,
    lib.SD_LOG_WARN: logging.WARNING,
    lib.SD_LOG_ERROR: logging.ERROR,
}


class _CallState(threading.local):
    def __init__(self) -> None:
        self.progress: Callable[[int, int, float], Any] | None = None
        self.preview: Callable[[int, list, bool], Any] | None = None
        self.errors: list[str] | None = None  # sd.cpp ERROR lines during the call
        self.exc: BaseException | None = None  # raised by a Python target during the call
        self.on_exception: Callable[[], None] | None = None  # e.g. ask sd.cpp to stop


_state = _CallState()


def _store_exception(exc: BaseException) -> None:
    if _state.exc is None:
        _state.exc = exc
        if _state.on_exception is not None:
            _state.on_exception()


def _onerror(exc_type, exc_value, tb) -> None:
    _store_exception(exc_value)


def decode(text) -> str:
    return ffi.string(text).decode("utf-8", "replace") if text != ffi.NULL else ""


@ffi.def_extern(onerror=_onerror)
def _pysdcpp_log_cb(level, text, data):
    message = decode(text).rstrip("\n")
    py_level = _LEVELS.get(level, logging.INFO)
    if py_level >= logging.ERROR and _state.errors is not None:
        _state.errors.append(message)
    if logger.isEnabledFor(py_level):
        logger.log(py_level, "%s", message)


@ffi.def_extern(onerror=_onerror)
def _pysdcpp_progress_cb(step, steps, seconds, data):
    target = _state.progress
    if target is not None and _state.exc is None:
        target(step, steps, seconds)


@ffi.def_extern(onerror=_onerror)
def _pysdcpp_preview_cb(step, frame_count, frames, is_noisy, data):
    target = _state.preview
    if target is not None and _state.exc is None:
        from ._images import images_from_c

        target(step, images_from_c(frames, frame_count, free=False), bool(is_noisy))


lib.sd_set_log_callback(lib._pysdcpp_log_cb, ffi.NULL)
lib.sd_set_progress_callback(lib._pysdcpp_progress_cb, ffi.NULL)


@contextlib.contextmanager
def call(progress=None, preview=None, on_exception=None) -> Iterator[list[str]]:
    """Scope one C call: route callbacks to these targets, collect sd.cpp's error
    lines, and re-raise an exception a target raised, after the C call returned."""
    if _state.errors is not None:
        raise RuntimeError("pysdcpp: nested C call on one thread")
    _state.progress, _state.preview, _state.on_exception = progress, preview, on_exception
    _state.errors, _state.exc = [], None
    errors = _state.errors
    try:
        yield errors
        exc = _state.exc
    finally:
        _state.progress = _state.preview = _state.on_exception = None
        _state.errors = None
        _state.exc = None
    if exc is not None:
        raise exc


def in_call() -> bool:
    """Whether this thread is inside a C call scoped by :func:`call` (i.e. in a callback)."""
    return _state.errors is not None


def take_c_string(ptr) -> str:
    """Read and free a malloc'ed C string returned by sd.cpp."""
    if ptr == ffi.NULL:
        return ""
    try:
        return decode(ptr)
    finally:
        lib.free(ptr)
