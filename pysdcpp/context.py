"""The context: model files loaded once, images generated many times."""
from __future__ import annotations

import inspect
import math
import numbers
import os
import random
import threading
from dataclasses import asdict, make_dataclass
from typing import Any, Callable

import numpy as np

from . import _images, _native
from ._native import ffi, lib
from ._params import CTX, IMG_GEN
from ._validate import check_floats, check_model_file, prompt_text
from .enums import Preview
from .errors import (CancelledError, ContextClosedError, GenerationError, InvalidArgumentError, ModelLoadError,
                     ReentrantCallError, with_log)

ProgressCallback = Callable[[int, int, float], Any]


def _check_model_paths(values: dict[str, Any]) -> None:
    for name, leaf in CTX.leaves.items():
        if not leaf.path.endswith("_path") or values.get(name) is None:
            continue
        check_model_file(name, values[name])


def _stream_stats_class():
    """StreamStats mirrors sd_stream_stats_t field for field, read from the cdef (no hand copy)."""
    c_fields = ffi.typeof("sd_stream_stats_t").fields
    cls = make_dataclass("StreamStats", [(name, float if f.type.cname == "double" else int, 0)
                                         for name, f in c_fields], frozen=True)
    cls.__module__ = __name__
    cls.__doc__ = ("What weight streaming did during the last generation: the fields of sd.cpp's "
                   "sd_stream_stats_t (see include/stable-diffusion.h for each one's definition).")
    cls.from_c = classmethod(lambda k, c: k(**{name: getattr(c, name) for name, _ in c_fields}))
    cls.as_dict = lambda self: asdict(self)
    return cls


StreamStats = _stream_stats_class()


class Context:
    """A loaded model.  Keywords are sd_ctx_params_t's fields under sd-cli's names
    (``model``, ``diffusion_model``, ``vae``, ``offload_params_to_cpu``, ``max_vram``,
    ...); their defaults are sd.cpp's own (``sd_ctx_params_init``), except those in
    ``pysdcpp._params.CTX_OVERRIDES``.  Use as a context manager or call :meth:`close`.
    One context serializes its calls; several contexts may run in parallel threads.
    """

    def __init__(self, model=None, **kwargs):
        self._ptr = None
        self._lock = threading.Lock()
        if model is not None:
            kwargs["model"] = model
        unknown = set(kwargs) - set(CTX.leaves) - set(CTX.special)
        if unknown:
            raise TypeError(f"Context() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        if kwargs.get("model") is None and kwargs.get("diffusion_model") is None:
            raise InvalidArgumentError("give `model` (a full checkpoint) or `diffusion_model`")
        _check_model_paths(kwargs)
        _check_threads(kwargs.get("n_threads"))
        embeddings = kwargs.pop("embeddings", None)
        keepalive: list = []
        c = CTX.build(kwargs, keepalive)
        if embeddings:
            items = embeddings.items() if isinstance(embeddings, dict) else \
                [(os.path.splitext(os.path.basename(os.fsdecode(p)))[0], p) for p in embeddings]
            arr = ffi.new("sd_embedding_t[]", len(items))
            keepalive.append(arr)
            for i, (name, path) in enumerate(items):
                check_model_file(f"embeddings[{name!r}]", path)
                for attr, value in (("name", os.fsencode(str(name))), ("path", os.fsencode(path))):
                    s = ffi.new("char[]", value)
                    keepalive.append(s)
                    setattr(arr[i], attr, s)
            c.embeddings, c.embedding_count = arr, len(items)
        self.params = {**CTX.defaults(), **kwargs}
        with _native.call() as errors:
            ptr = lib.new_sd_ctx(c)
        if ptr == ffi.NULL:
            raise ModelLoadError(with_log("sd.cpp could not load the model", errors))
        # The finalizer holds `lib`, so the library outlives every context (cairocffi's rule).
        self._ptr = ffi.gc(ptr, lib.free_sd_ctx)
        self.last_stream_stats: StreamStats | None = None
        # the same per model component ("unet", "flux", "t5", "clip", "vae", ...): which one streamed what
        self.last_stream_stats_by_model: dict[str, StreamStats] = {}
        self._cancel = threading.Event()     # set by cancel(), cleared when a generation starts
        self._ptr_lock = threading.Lock()    # cancel() vs close(): never signal a freed context

    # -- lifetime ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        """Free the model (RAM and VRAM).  Idempotent; waits for a running generation."""
        if _native.in_call():
            raise ReentrantCallError("close() called from a progress/preview callback")
        with self._lock, self._ptr_lock:
            ptr, self._ptr = self._ptr, None
            if ptr is not None:
                ffi.release(ptr)

    def cancel(self) -> None:
        """Stop the generation in progress at its next sampling step; it raises
        :class:`CancelledError` and the context stays usable.  Callable from any thread and
        from a progress callback; without a generation in progress it does nothing."""
        with self._ptr_lock:
            if self._ptr is not None:
                self._cancel.set()
                lib.sd_set_cancel(self._ptr, True)

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        model = self.params.get("model") or self.params.get("diffusion_model")
        return f"<pysdcpp.Context {state} model={model!r}>"

    def _no_reentry(self) -> None:
        if _native.in_call():
            raise ReentrantCallError("this Context was called from a progress/preview callback")

    def _handle(self):
        if self._ptr is None:
            raise ContextClosedError("this context is closed")
        return self._ptr

    # -- queries -------------------------------------------------------------------------
    def default_sampling_method(self):
        from .enums import SampleMethod

        self._no_reentry()
        with self._lock:
            return SampleMethod(lib.sd_get_default_sample_method(self._handle()))

    def default_scheduler(self, sampling_method=None):
        from .enums import SampleMethod, Scheduler

        method = lib.SAMPLE_METHOD_COUNT if sampling_method is None else int(SampleMethod.parse(sampling_method))
        self._no_reentry()
        with self._lock:
            return Scheduler(lib.sd_get_default_scheduler(self._handle(), method))

    # -- generation ------------------------------------------------------------------------
    def generate(self, prompt: str = "", *, progress: ProgressCallback | None = None,
                 progress_bar: bool = False, preview: Callable | None = None,
                 preview_mode=None, preview_interval: int = 1, preview_noisy: bool = False,
                 preview_denoised: bool = True, output: str = "pil", **kwargs) -> list:
        """Generate ``batch_count`` images; every field of sd_img_gen_params_t is a keyword.

        Images (``init_image``, ``mask_image``, ``control_image``, ``ref_images``,
        ``pm_id_images``) may be PIL images, HxWxC uint8 arrays or paths.  ``loras`` is a
        list of ``(path, multiplier)`` (or ``(path, multiplier, is_high_noise)``).
        ``progress(step, steps, seconds)`` is called after each step; an exception
        it raises is re-raised here.  Returns PIL images (``output="numpy"``: arrays),
        each with the generation parameters in ``.info``.
        """
        if output not in ("pil", "numpy"):
            raise InvalidArgumentError("output must be 'pil' or 'numpy'")
        for name, target in (("progress", progress), ("preview", preview)):
            if target is not None and not callable(target):
                raise TypeError(f"{name} must be callable, got {type(target).__name__}")
        if _native.in_call():
            # A progress/preview callback of this thread calling back into pysdcpp: the
            # context's lock is held (same context: a deadlock) and sd.cpp is not reentrant.
            raise ReentrantCallError("generate() called from a progress/preview callback")
        kwargs["prompt"] = prompt
        keepalive: list = []
        c, resolved = self._img_gen_params(kwargs, keepalive)
        bar = None
        if progress_bar:
            bar = _progress_bar(resolved["steps"], resolved["batch_count"])
        on_progress = _chain(progress, bar.update_to if bar else None)
        with self._lock:
            handle = self._handle()
            self._cancel.clear()
            lib.sd_set_cancel(handle, False)
            if preview is not None:
                mode = Preview.parse(preview_mode) if preview_mode is not None else Preview.PROJ
                lib.sd_set_preview_callback(lib._pysdcpp_preview_cb, int(mode), preview_interval,
                                            preview_denoised, preview_noisy, ffi.NULL)
            try:
                # An exception in a callback (KeyboardInterrupt included: Python raises it in the
                # next callback) stops sd.cpp at the next step; call() re-raises it afterwards.
                with _native.call(progress=on_progress, preview=_preview_adapter(preview, output),
                                  on_exception=lambda: lib.sd_set_cancel(handle, True)) as errors:
                    c_images = lib.generate_image(handle, c)
                    arrays = _images.images_from_c(c_images, resolved["batch_count"], free=True)
                self.last_stream_stats = self._stream_stats(handle)
                self.last_stream_stats_by_model = self._stream_stats_by_model(handle)
                if self._cancel.is_set() and (not arrays or any(a is None for a in arrays)):
                    raise CancelledError("the generation was cancelled")
            finally:
                lib.sd_set_cancel(handle, False)
                if preview is not None:
                    lib.sd_set_preview_callback(ffi.NULL, lib.PREVIEW_NONE, 1, True, False, ffi.NULL)
                if bar is not None:
                    bar.close()
        if not arrays or any(a is None for a in arrays):
            raise GenerationError(with_log("sd.cpp returned no image", errors))
        return [self._wrap(a, resolved, i, output) for i, a in enumerate(arrays)]

    def txt2img(self, prompt: str, **kwargs) -> list:
        """Text to image(s): :meth:`generate` without an init image."""
        if kwargs.get("init_image") is not None:
            raise InvalidArgumentError("txt2img takes no init_image; use img2img")
        return self.generate(prompt, **kwargs)

    def img2img(self, image, prompt: str, *, strength: float | None = None, mask=None, **kwargs) -> list:
        """Image to image(s); with `mask` (white = repaint) this is inpainting."""
        if strength is not None:
            kwargs["strength"] = strength
        return self.generate(prompt, init_image=image, mask_image=mask, **kwargs)

    def _img_gen_params(self, kwargs: dict, keepalive: list):
        unknown = set(kwargs) - set(IMG_GEN.leaves) - set(IMG_GEN.special)
        if unknown:
            raise TypeError(f"generate() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        special = {k: kwargs.pop(k) for k in list(kwargs) if k in IMG_GEN.special}
        values = {**IMG_GEN.defaults(), **kwargs}
        _validate_gen(values)
        for name in ("prompt", "negative_prompt"):
            if name in kwargs:
                kwargs[name] = values[name]
        if values["seed"] < 0:
            values["seed"] = kwargs["seed"] = random.randrange(1 << 31)
        c = IMG_GEN.build(kwargs, keepalive)
        w, h = values["width"], values["height"]
        init = special.get("init_image")
        if init is not None:
            arr = _images.to_array(init, channels=3, what="init_image")
            if arr.shape[:2] != (h, w):
                raise InvalidArgumentError(
                    f"init_image is {arr.shape[1]}x{arr.shape[0]} but width x height is {w}x{h}")
            _images.fill_image(c.init_image, arr, keepalive)
        mask = special.get("mask_image")
        if mask is not None:
            if init is None:
                raise InvalidArgumentError("mask_image needs an init_image")
            arr = _images.to_array(mask, channels=1, what="mask_image")
            if arr.shape[:2] != (h, w):
                raise InvalidArgumentError(f"mask_image is {arr.shape[1]}x{arr.shape[0]}, expected {w}x{h}")
            _images.fill_image(c.mask_image, arr, keepalive)
        control = special.get("control_image")
        if control is not None:
            _images.fill_image(c.control_image, _images.to_array(control, channels=3, what="control_image"),
                               keepalive)
        c.ref_images, c.ref_images_count = _images.c_image_array(
            special.get("ref_images"), what="ref_images", keepalive=keepalive)
        c.pm_params.id_images, c.pm_params.id_images_count = _images.c_image_array(
            special.get("pm_id_images"), what="pm_id_images", keepalive=keepalive)
        c.loras, c.lora_count = _loras(special.get("loras"), keepalive)
        layers = special.get("skip_layers")
        if layers:
            arr = ffi.new("int[]", [int(x) for x in layers])
            keepalive.append(arr)
            c.sample_params.guidance.slg.layers = arr
            c.sample_params.guidance.slg.layer_count = len(layers)
        sigmas = special.get("sigmas")
        if sigmas:
            arr = ffi.new("float[]", [float(x) for x in sigmas])
            keepalive.append(arr)
            c.sample_params.custom_sigmas = arr
            c.sample_params.custom_sigmas_count = len(sigmas)
        values["parameters"] = _native.take_c_string(lib.sd_img_gen_params_to_str(c))
        return c, values

    def _wrap(self, array: np.ndarray, resolved: dict, index: int, output: str):
        if output == "numpy":
            return array
        image = _images.to_pil(array)
        image.info["parameters"] = resolved["parameters"]
        image.info["seed"] = resolved["seed"] + index
        image.info["prompt"] = resolved["prompt"]
        return image

    @staticmethod
    def _stream_stats(handle) -> StreamStats | None:
        if not hasattr(lib, "sd_get_stream_stats"):
            return None
        c = ffi.new("sd_stream_stats_t*")
        if not lib.sd_get_stream_stats(handle, c):
            return None
        return StreamStats.from_c(c)

    @staticmethod
    def _stream_stats_by_model(handle) -> dict:
        out = {}
        c = ffi.new("sd_stream_stats_t*")
        name = ffi.new("char[64]")
        for i in range(lib.sd_get_stream_stats_count(handle)):
            if lib.sd_get_stream_stats_at(handle, i, name, len(name), c):
                out[ffi.string(name).decode("utf-8", "replace")] = StreamStats.from_c(c)
        return out


def _check_threads(n_threads) -> None:
    # <= 0 means "physical cores"; ggml's thread pools hold at most GGML_MAX_N_THREADS (512),
    # and thousands of spinning threads would only stall the machine.
    if isinstance(n_threads, int) and n_threads > 512:
        raise InvalidArgumentError(f"n_threads must be at most 512, got {n_threads}")


_GEN_C_DEFAULTS = IMG_GEN.c_defaults()
_FLOATS = tuple(name for name, leaf in IMG_GEN.leaves.items()
                if leaf.ctype.kind == "primitive" and leaf.ctype.cname in ("float", "double"))


def _validate_gen(values: dict) -> None:
    check_floats(values, _GEN_C_DEFAULTS, _FLOATS)
    for name in ("hires_model_path", "pm_id_embed_path"):
        if values.get(name):
            check_model_file(name, values[name])
    for name in ("width", "height"):
        v = values[name]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % 8 or v > 16384:
            raise InvalidArgumentError(f"{name} must be a positive multiple of 8 up to 16384, got {v!r}")
    if not isinstance(values["seed"], int) or isinstance(values["seed"], bool):
        raise InvalidArgumentError(f"seed must be an integer, got {values['seed']!r}")
    if not isinstance(values["steps"], int) or values["steps"] <= 0:
        raise InvalidArgumentError(f"steps must be a positive integer, got {values['steps']!r}")
    if not isinstance(values["batch_count"], int) or values["batch_count"] <= 0:
        raise InvalidArgumentError(f"batch_count must be a positive integer, got {values['batch_count']!r}")
    strength = values["strength"]
    if not 0.0 <= strength <= 1.0:
        raise InvalidArgumentError(f"strength must be within [0, 1], got {strength!r}")
    for name in ("prompt", "negative_prompt"):
        values[name] = prompt_text(name, values[name])


def _loras(loras, keepalive: list):
    if not loras:
        return ffi.NULL, 0
    arr = ffi.new("sd_lora_t[]", len(loras))
    keepalive.append(arr)
    for i, item in enumerate(loras):
        path, multiplier, *rest = (item, 1.0) if isinstance(item, (str, os.PathLike)) else item
        path = os.fsdecode(path)
        check_model_file(f"loras[{i}]", path)
        if not isinstance(multiplier, numbers.Real) or not math.isfinite(multiplier):
            raise InvalidArgumentError(f"loras[{i}]: the multiplier must be a finite number, got {multiplier!r}")
        s = ffi.new("char[]", os.fsencode(path))
        keepalive.append(s)
        arr[i].path = s
        arr[i].multiplier = float(multiplier)
        arr[i].is_high_noise = bool(rest[0]) if rest else False
    return arr, len(loras)


def _chain(*targets):
    targets = [t for t in targets if t is not None]
    if not targets:
        return None

    def call(step, steps, seconds):
        for t in targets:
            t(step, steps, seconds)
    return call


def _preview_adapter(preview, output):
    if preview is None:
        return None

    def call(step, arrays, is_noisy):
        images = [a if output == "numpy" else _images.to_pil(a) for a in arrays if a is not None]
        preview(step, images, is_noisy)
    return call


def _progress_bar(steps: int, batch: int):
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise InvalidArgumentError("progress_bar=True needs tqdm (pip install tqdm)") from exc

    bar = tqdm(total=steps, unit="step")

    def update_to(step, total, seconds):
        if step < bar.n:  # the next image of the batch
            bar.reset(total=total)
        bar.total = total
        bar.update(step - bar.n)
    bar.update_to = update_to
    return bar


def _signature(params) -> inspect.Signature:
    return inspect.Signature([inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY), *params])


# Signatures built from sd.cpp's *_init defaults (what help() and IDEs show).
Context.__init__.__signature__ = _signature(
    [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
    + [p for p in CTX.parameters() if p.name != "model"])
_gen_sig = inspect.signature(Context.generate)
Context.generate.__signature__ = _gen_sig.replace(parameters=[
    *[p for p in _gen_sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD],
    *[p for p in IMG_GEN.parameters() if p.name not in ("prompt",)],
])
