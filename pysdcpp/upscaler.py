"""ESRGAN upscaling (sd-cli's ``--upscale-model``)."""
from __future__ import annotations

import os
import threading

from . import _images, _native
from ._native import ffi, lib
from .errors import ContextClosedError, GenerationError, InvalidArgumentError, ModelLoadError, with_log


class Upscaler:
    """An ESRGAN model.  ``upscale(image)`` returns a PIL image ``factor`` times larger."""

    def __init__(self, model, *, offload_params_to_cpu: bool = False, direct: bool = False,
                 n_threads: int | None = None, tile_size: int = 128):
        from .context import _check_model_paths

        self._ptr = None
        self._lock = threading.Lock()
        _check_model_paths({"model": model})
        if n_threads is None:
            n_threads = lib.sd_get_num_physical_cores()
        if tile_size <= 0:
            raise InvalidArgumentError("tile_size must be positive")
        with _native.call() as errors:
            ptr = lib.new_upscaler_ctx(os.fsencode(model), offload_params_to_cpu, direct,
                                       n_threads, tile_size)
        if ptr == ffi.NULL:
            raise ModelLoadError(with_log(f"sd.cpp could not load the upscaler {os.fsdecode(model)}", errors))
        self._ptr = ffi.gc(ptr, lib.free_upscaler_ctx)

    @property
    def factor(self) -> int:
        with self._lock:
            return lib.get_upscale_factor(self._handle())

    def _handle(self):
        if self._ptr is None:
            raise ContextClosedError("this upscaler is closed")
        return self._ptr

    def upscale(self, image, *, factor: int | None = None, output: str = "pil"):
        keepalive: list = []
        arr = _images.to_array(image, channels=3, what="image")
        c = ffi.new("sd_image_t*")
        _images.fill_image(c, arr, keepalive)
        with self._lock:
            handle = self._handle()
            f = lib.get_upscale_factor(handle) if factor is None else int(factor)
            with _native.call() as errors:
                result = lib.upscale(handle, c[0], f)
        if result.data == ffi.NULL:
            raise GenerationError(with_log("upscale failed", errors))
        try:
            out = _images.array_from_c(result)
        finally:
            lib.free(result.data)
        return out if output == "numpy" else _images.to_pil(out)

    def close(self) -> None:
        with self._lock:
            ptr, self._ptr = self._ptr, None
            if ptr is not None:
                ffi.release(ptr)

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
