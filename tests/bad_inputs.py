"""The catalogue of bad inputs (issue 5): each case does one bad thing and names what
must happen -- a given exception, or a documented success.  Run in-process by
tests/test_bad_input.py and in child processes by tests/test_reliability.py (through
tests/harness_child.py), so the same list proves both "clear exception" and "no abort".

Documented semantics decided here:
* an empty prompt is fine (unconditional generation); a very long prompt is fine
  (sd.cpp splits it into 77-token chunks);
* prompts are text: ``str`` or ``bytes`` that decode as UTF-8; invalid UTF-8, lone
  surrogates and NUL characters raise InvalidArgumentError;
* width/height must be positive multiples of 8; sd.cpp then rounds them up to the model's
  own multiple (64 for SD 1.x) with a warning, and the image has the rounded size;
* NaN is never a valid float argument; +inf only where sd.cpp's default is +inf
  (``img_cfg_scale``, ``eta``, ``flow_shift``: "automatic");
* a progress/preview callback's exception is re-raised by generate(); a callback calling
  back into pysdcpp on its own thread raises ReentrantCallError (instead of deadlocking);
* close() is idempotent; any use after it raises ContextClosedError.
"""
from __future__ import annotations

import json
import math
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import pysdcpp
from pysdcpp.errors import (ContextClosedError, InvalidArgumentError, ModelFileNotFoundError,
                            ModelLoadError, ReentrantCallError)

THREADS = int(os.environ.get("PYSDCPP_TEST_THREADS", "2"))
# 1 step, cfg 1 (no unconditional pass): the cheapest generation there is
GEN = dict(width=64, height=64, steps=1, cfg_scale=1.0, seed=1)


# -- file builders ---------------------------------------------------------------------------

def st_bytes(header, data: bytes = b"", header_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


def st_tensor(dtype="F32", shape=(2, 2), offsets=None, esize=4):
    n = math.prod(shape) * esize
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets or (0, n))}


def valid_st(tensors: dict | None = None) -> bytes:
    """A valid safetensors file of a few small F32 tensors (of no known architecture)."""
    tensors = tensors or {"a.weight": (4, 4), "b.bias": (8,)}
    header, data, off = {}, b"", 0
    for name, shape in tensors.items():
        n = math.prod(shape) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        data += np.arange(math.prod(shape), dtype=np.float32).tobytes()
        off += n
    return st_bytes(header, data)


def gguf_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def gguf_bytes(tensors=(("w", (4, 4), 0, 0),), kv: bytes = b"", n_kv: int = 0, version: int = 3,
               n_tensors: int | None = None, data: bytes | None = None) -> bytes:
    """A GGUF file; tensors are (name, shape (ggml order), ggml type, offset)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors, n_kv) + kv
    for name, shape, ttype, offset in tensors:
        name = name.encode() if isinstance(name, str) else name
        out += gguf_string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<q", d) for d in shape)
        out += struct.pack("<IQ", ttype, offset)
    out += b"\0" * ((-len(out)) % 32)
    if data is None:
        data = b"\0" * 64
    return out + data


def sparse_safetensors(path: Path, header: dict) -> Path:
    """A safetensors file with `header` whose tensor data is a hole (zeros, no disk)."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + end)
    return path


def spec_header(spec, dtype="F16", esize=2) -> dict:
    header, off = {}, 0
    for name, t in spec.items():
        n = math.prod(t.shape) * esize
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    return header


# -- the environment a case runs in -----------------------------------------------------------

@dataclass
class Env:
    model: Path          # the random-weight SD 1.5 checkpoint
    tmp: Path            # a scratch directory for this process
    shared: Any = None   # a shared Context (tests: the session `ctx`)
    _closed: Any = None

    @property
    def ctx(self) -> pysdcpp.Context:
        if self.shared is None:
            self.shared = pysdcpp.Context(self.model, n_threads=THREADS)
        return self.shared

    def closed_ctx(self) -> pysdcpp.Context:
        """A second context, opened and closed (loaded once per process)."""
        if self._closed is None:
            self._closed = pysdcpp.Context(self.model, n_threads=THREADS)
            self._closed.close()
        return self._closed

    def file(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def load(self, path, **kwargs):
        kwargs.setdefault("n_threads", THREADS)
        with pysdcpp.Context(path, **kwargs):
            pass

    def sd15_header(self) -> dict:
        from pysdcpp.testing import read_safetensors_header

        return dict(read_safetensors_header(self.model)[0])


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Env], Any]
    raises: type | None              # None: must succeed
    match: str | None = None         # regex on str(exception)
    uses_ctx: bool = False           # touches the shared context (checked afterwards)
    gen: bool = False                # runs a real generation (slow)
    skip: Callable[[], str | None] = field(default=lambda: None)


CASES: list[Case] = []


def case(name, raises, match=None, *, uses_ctx=False, gen=False, skip=None):
    def register(fn):
        CASES.append(Case(name, fn, raises, match, uses_ctx or gen, gen, skip or (lambda: None)))
        return fn
    return register


def _root_skip():
    return "root reads any file" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


# -- model files: paths ---------------------------------------------------------------------------

@case("file_missing", ModelFileNotFoundError, "no such file")
def _(env):
    env.load(env.tmp / "missing.safetensors")


@case("file_is_directory", ModelLoadError, "directory")
def _(env):
    env.load(env.tmp)


@case("file_unreadable", ModelLoadError, "not readable", skip=_root_skip)
def _(env):
    path = env.file("unreadable.safetensors", valid_st())
    path.chmod(0)
    env.load(path)


@case("file_empty", ModelLoadError, "empty")
def _(env):
    env.load(env.file("empty.safetensors", b""))


@case("file_text_garbage", ModelLoadError, "not a GGUF, safetensors or PyTorch file")
def _(env):
    env.load(env.file("garbage.ckpt", b"this is not a model file at all\n" * 10))


@case("path_with_nul", InvalidArgumentError, "NUL")
def _(env):
    env.load(str(env.tmp / "a\0b.safetensors"))


# -- model files: safetensors ---------------------------------------------------------------------

@case("st_header_length_past_end", ModelLoadError, "header length")
def _(env):
    env.load(env.file("st_len.safetensors", st_bytes({"a": st_tensor()}, header_len=10_000)))


@case("st_header_length_huge", ModelLoadError, "header length")
def _(env):
    env.load(env.file("st_len2.safetensors", st_bytes({"a": st_tensor()}, b"\0" * 16, header_len=1 << 63)))


@case("st_header_not_json", ModelLoadError, "not valid JSON")
def _(env):
    env.load(env.file("st_json.safetensors", st_bytes(b"{not json at all}", b"\0" * 16)))


@case("st_header_is_array", ModelLoadError, "not an object")  # sd.cpp: json type_error -> abort
def _(env):
    env.load(env.file("st_array.safetensors", st_bytes([1, 2, 3], b"\0" * 16)))


@case("st_dtype_not_string", ModelLoadError, "dtype must be a string")  # sd.cpp: abort
def _(env):
    env.load(env.file("st_dtype.safetensors", st_bytes({"a": {**st_tensor(), "dtype": 5}}, b"\0" * 16)))


@case("st_tensor_info_not_object", ModelLoadError, "expected an object")  # sd.cpp: abort
def _(env):
    env.load(env.file("st_info.safetensors", st_bytes({"a": "F32"}, b"\0" * 16)))


@case("st_missing_data_offsets", ModelLoadError, "data_offsets")  # sd.cpp: abort
def _(env):
    env.load(env.file("st_nooff.safetensors", st_bytes({"a": {"dtype": "F32", "shape": [2, 2]}}, b"\0" * 16)))


@case("st_unknown_dtype", ModelLoadError, "unsupported dtype")
def _(env):
    env.load(env.file("st_q.safetensors", st_bytes({"a": st_tensor("Q99")}, b"\0" * 16)))


@case("st_offsets_past_end", ModelLoadError, "past the end")
def _(env):
    env.load(env.file("st_off.safetensors", st_bytes({"a": st_tensor(shape=(1000, 1000))}, b"\0" * 16)))


@case("st_offsets_reversed", ModelLoadError, "data_offsets")
def _(env):
    env.load(env.file("st_rev.safetensors", st_bytes({"a": st_tensor(offsets=(16, 0))}, b"\0" * 16)))


@case("st_shape_size_mismatch", ModelLoadError, "needs .* bytes")
def _(env):
    env.load(env.file("st_size.safetensors", st_bytes({"a": st_tensor(shape=(3, 3), offsets=(0, 16))}, b"\0" * 16)))


@case("st_negative_dim", ModelLoadError, "non-negative")
def _(env):
    env.load(env.file("st_neg.safetensors", st_bytes({"a": st_tensor(shape=(-2, -2), offsets=(0, 16))}, b"\0" * 16)))


@case("st_too_many_dims", ModelLoadError, "dimensions")
def _(env):
    env.load(env.file("st_dims.safetensors", st_bytes({"a": st_tensor(shape=(1,) * 6)}, b"\0" * 16)))


@case("st_nan_in_header", ModelLoadError, "not valid JSON")
def _(env):
    env.load(env.file("st_nan.safetensors", st_bytes(b'{"__metadata__": {"x": NaN}}', b"\0" * 16)))


@case("st_truncated_real_model", ModelLoadError, "past the end")
def _(env):
    # the first 1 MiB of the real SD 1.5 file: header intact, tensor data cut off
    with open(env.model, "rb") as f:
        env.load(env.file("st_trunc.safetensors", f.read(1 << 20)))


@case("st_valid_unknown_architecture", ModelLoadError, "sd.cpp")  # reaches sd.cpp
def _(env):
    env.load(env.file("st_unknown.safetensors", valid_st()))


@case("st_shape_inconsistent_with_architecture", ModelLoadError, "load tensors")  # reaches sd.cpp
def _(env):
    # the SD 1.5 header with one weight's shape transposed (same byte count), data a hole
    header = env.sd15_header()
    name = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    header[name] = {**header[name], "shape": header[name]["shape"][::-1]}
    env.load(sparse_safetensors(env.tmp / "st_arch.safetensors", header))


# -- model files: GGUF -----------------------------------------------------------------------------

@case("gguf_magic_only", ModelLoadError, "GGUF")
def _(env):
    env.load(env.file("g_magic.gguf", b"GGUF"))


@case("gguf_bad_version", ModelLoadError, "version")
def _(env):
    env.load(env.file("g_ver.gguf", gguf_bytes(version=99)))


@case("gguf_tensor_name_length_huge", ModelLoadError, "name")  # sd.cpp: length_error -> abort
def _(env):
    env.load(env.file("g_name.gguf", b"GGUF" + struct.pack("<IQQQ", 3, 1, 0, 1 << 62) + b"\0" * 64))


@case("gguf_tensor_dims_huge", ModelLoadError, "dimensions")  # sd.cpp: bad_alloc -> abort
def _(env):
    env.load(env.file("g_dims.gguf", b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + gguf_string(b"w")
                      + struct.pack("<I", 0xFFFFFFFF) + b"\0" * 64))


@case("gguf_invalid_ggml_type", ModelLoadError, "invalid ggml type")
def _(env):
    env.load(env.file("g_type.gguf", gguf_bytes((("w", (4, 4), 9999, 0),))))


@case("gguf_offset_past_end", ModelLoadError, "past the end")
def _(env):
    env.load(env.file("g_off.gguf", gguf_bytes((("w", (4, 4), 0, 1 << 40),))))


@case("gguf_counts_huge", ModelLoadError, "do not fit")
def _(env):
    env.load(env.file("g_count.gguf", gguf_bytes(n_tensors=1 << 60)))


@case("gguf_metadata_string_past_end", ModelLoadError, "file ends")
def _(env):
    kv = gguf_string(b"general.name") + struct.pack("<I", 8) + struct.pack("<Q", 1 << 40)
    env.load(env.file("g_kv.gguf", gguf_bytes(kv=kv, n_kv=1)))


@case("gguf_valid_unknown_architecture", ModelLoadError, "sd.cpp")  # reaches sd.cpp
def _(env):
    env.load(env.file("g_ok.gguf", gguf_bytes((("w", (4, 4), 0, 0),))))


# -- model files: one family given as another ------------------------------------------------------

@case("clip_l_file_as_model", ModelLoadError, "sd.cpp")  # reaches sd.cpp: no diffusion model
def _(env):
    from pysdcpp import testing

    header = spec_header(testing.clip_l_spec())
    env.load(sparse_safetensors(env.tmp / "clip_l_only.safetensors", header))


@case("vae_file_as_model", ModelLoadError, "sd.cpp")  # reaches sd.cpp
def _(env):
    from pysdcpp import testing

    header = spec_header(testing.sd_vae_spec(prefix=""))
    env.load(sparse_safetensors(env.tmp / "vae_only.safetensors", header))


@case("sd15_file_as_taesd", ModelLoadError, "not in model file|load tensors")  # reaches sd.cpp, loads 2 GB
def _(env):
    env.load(env.model, taesd=env.model)


@case("sd15_file_as_upscaler", ModelLoadError, "upscaler")  # reaches sd.cpp
def _(env):
    pysdcpp.Upscaler(env.model, n_threads=THREADS)


# -- context arguments -------------------------------------------------------------------------------

@case("context_without_model", InvalidArgumentError, "model")
def _(env):
    pysdcpp.Context(n_threads=1)


@case("context_unknown_keyword", TypeError, "no_such_option")
def _(env):
    pysdcpp.Context(env.model, no_such_option=1)


@case("context_unknown_weight_type", InvalidArgumentError, "unknown weight type")
def _(env):
    env.load(env.model, wtype="q99")


@case("context_too_many_threads", InvalidArgumentError, "n_threads")
def _(env):
    env.load(env.model, n_threads=100_000)


@case("context_thread_count_not_int", InvalidArgumentError, "n_threads")
def _(env):
    env.load(env.model, n_threads=1.5)


# -- generation arguments (shared context) -----------------------------------------------------------

def _gen_case(name, raises, match, **kwargs):
    prompt = kwargs.pop("prompt", "x")

    def run(env):
        return env.ctx.generate(prompt, **{**GEN, **kwargs})
    CASES.append(Case(name, run, raises, match, True, raises is None))


_gen_case("width_not_multiple_of_8", InvalidArgumentError, "multiple of 8", width=60)
_gen_case("height_zero", InvalidArgumentError, "multiple of 8", height=0)
_gen_case("width_negative", InvalidArgumentError, "multiple of 8", width=-64)
_gen_case("width_huge", InvalidArgumentError, "multiple of 8", width=1 << 20)
_gen_case("width_float", InvalidArgumentError, "multiple of 8", width=64.0)
_gen_case("size_overflows_int", InvalidArgumentError, "multiple of 8|out of range", width=1 << 40)
_gen_case("steps_zero", InvalidArgumentError, "steps", steps=0)
_gen_case("steps_negative", InvalidArgumentError, "steps", steps=-3)
_gen_case("batch_count_zero", InvalidArgumentError, "batch_count", batch_count=0)
_gen_case("batch_count_negative", InvalidArgumentError, "batch_count", batch_count=-1)
_gen_case("unknown_sampler", InvalidArgumentError, "unknown sampling method", sampling_method="no_such")
_gen_case("unknown_scheduler", InvalidArgumentError, "unknown scheduler", scheduler="nope")
_gen_case("sampler_wrong_type", InvalidArgumentError, "unknown sampling method", sampling_method=3.5)
_gen_case("cfg_nan", InvalidArgumentError, "NaN", cfg_scale=math.nan)
_gen_case("cfg_inf", InvalidArgumentError, "finite", cfg_scale=math.inf)
_gen_case("guidance_minus_inf", InvalidArgumentError, "finite", guidance=-math.inf)
_gen_case("img_cfg_nan", InvalidArgumentError, "NaN", img_cfg_scale=math.nan)
_gen_case("strength_nan", InvalidArgumentError, "NaN", strength=math.nan)
_gen_case("strength_inf", InvalidArgumentError, "finite", strength=math.inf)
_gen_case("strength_above_one", InvalidArgumentError, "strength", strength=1.5)
_gen_case("eta_minus_inf", InvalidArgumentError, "finite", eta=-math.inf)
_gen_case("seed_not_int", InvalidArgumentError, "seed", seed="42")
_gen_case("clip_skip_out_of_int_range", InvalidArgumentError, "out of range", clip_skip=1 << 40)
_gen_case("unknown_generate_keyword", TypeError, "no_such_option", no_such_option=1)
_gen_case("output_unknown", InvalidArgumentError, "output", output="tiff")
_gen_case("prompt_invalid_utf8_bytes", InvalidArgumentError, "UTF-8", prompt=b"caf\xe9 \xff\xfe")
_gen_case("prompt_lone_surrogate", InvalidArgumentError, "UTF-8", prompt="a \udcff b")
_gen_case("prompt_with_nul", InvalidArgumentError, "NUL", prompt="a\0b")
_gen_case("prompt_not_text", InvalidArgumentError, "prompt must be a str", prompt=42)
_gen_case("negative_prompt_invalid_utf8", InvalidArgumentError, "negative_prompt",
          negative_prompt=b"\xc3\x28")
_gen_case("progress_not_callable", TypeError, "progress must be callable", progress=5)
_gen_case("preview_not_callable", TypeError, "preview must be callable", preview="yes")
_gen_case("lora_missing_file", ModelFileNotFoundError, "loras", loras=[("/nonexistent/x.safetensors", 1.0)])
_gen_case("hires_model_garbage", ModelLoadError, "hires_model_path", hires_enabled=True,
          hires_upscaler="model", hires_model_path="/etc/hostname")
# documented successes (a real generation each; kept few: they are the slow ones)
_gen_case("prompt_empty", None, None, prompt="")
_gen_case("prompt_very_long_unicode", None, None,
          prompt="ein schönes Haus, 雪の山, 🏔️ " * 12)  # ~170 tokens: 3 chunks of 77


@case("lora_multiplier_nan", InvalidArgumentError, "multiplier", uses_ctx=True)
def _(env):
    env.ctx.generate("x", **GEN, loras=[(env.model, math.nan)])


@case("lora_garbage_file", ModelLoadError, "loras", uses_ctx=True)
def _(env):
    env.ctx.generate("x", **GEN, loras=[(env.file("lora.safetensors", b"garbage" * 10), 1.0)])


# -- images ----------------------------------------------------------------------------------------------

def _img_case(name, raises, match, init=None, mask=None, **kwargs):
    def run(env):
        i = init(env) if callable(init) else init
        m = mask(env) if callable(mask) else mask
        return env.ctx.generate("x", init_image=i, mask_image=m, **{**GEN, "strength": 0.5, **kwargs})
    CASES.append(Case(name, run, raises, match, True, False))


RGB = np.zeros((64, 64, 3), np.uint8)
_img_case("init_image_wrong_size", InvalidArgumentError, "init_image is 32x64", init=np.zeros((64, 32, 3), np.uint8))
_img_case("init_image_two_channels", InvalidArgumentError, "channels", init=np.zeros((64, 64, 2), np.uint8))
_img_case("init_image_float_array", InvalidArgumentError, "uint8", init=np.zeros((64, 64, 3), np.float32))
_img_case("init_image_4d_array", InvalidArgumentError, "HxWxC", init=np.zeros((1, 64, 64, 3), np.uint8))
_img_case("init_image_empty_array", InvalidArgumentError, "HxWxC", init=np.zeros((0, 64, 3), np.uint8))
_img_case("init_image_not_an_image", InvalidArgumentError, "expected a PIL image", init=[[1, 2], [3, 4]])
_img_case("init_image_missing_file", InvalidArgumentError, "no such file", init="/nonexistent/init.png")
_img_case("init_image_corrupt_file", InvalidArgumentError, "cannot read image",
          init=lambda env: env.file("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40))
_img_case("init_image_mode_I16_wrong_size", InvalidArgumentError, "init_image is",
          init=lambda env: __import__("PIL.Image").Image.new("I;16", (32, 32)))
_img_case("mask_wrong_size", InvalidArgumentError, "mask_image is", init=RGB, mask=np.zeros((32, 32), np.uint8))
_img_case("mask_without_init", InvalidArgumentError, "needs an init_image", mask=np.zeros((64, 64), np.uint8))
_img_case("mask_two_channels", InvalidArgumentError, "channels", init=RGB, mask=np.zeros((64, 64, 2), np.uint8))
_img_case("strength_negative", InvalidArgumentError, "strength", init=RGB, strength=-0.1)


# -- callbacks -----------------------------------------------------------------------------------------

@case("callback_reenters_same_context", ReentrantCallError, "callback", gen=True)
def _(env):
    ctx = env.ctx

    def progress(step, steps, seconds):
        ctx.generate("x", **GEN)  # would deadlock on the context's lock
    ctx.generate("x", progress=progress, **GEN)


# -- lifetime --------------------------------------------------------------------------------------------

@case("use_after_close", ContextClosedError, "closed")
def _(env):
    env.closed_ctx().generate("x", **GEN)


@case("query_after_close", ContextClosedError, "closed")
def _(env):
    env.closed_ctx().default_sampling_method()


@case("double_close", None)
def _(env):
    ctx = env.closed_ctx()
    ctx.close()
    ctx.close()
    with ctx:  # __exit__ closes once more
        pass
    assert ctx.closed


@case("upscaler_use_after_close", ContextClosedError, "closed")
def _(env):
    up = object.__new__(pysdcpp.Upscaler)
    up._ptr, up._lock = None, threading.Lock()
    up.close()
    up.upscale(RGB)


CASE_BY_NAME = {c.name: c for c in CASES}
assert len(CASE_BY_NAME) == len(CASES), "duplicate case names"


def run_case(c: Case, env: Env) -> tuple[str, str]:
    """Run one case; returns ("pass" | "fail" | "skip", detail)."""
    import re

    reason = c.skip()
    if reason:
        return "skip", reason
    try:
        c.run(env)
    except BaseException as exc:  # noqa: BLE001 - the catalogue judges every exception
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if c.raises is None:
            return "fail", f"expected success, got {type(exc).__name__}: {exc}"
        if not isinstance(exc, c.raises):
            return "fail", f"expected {c.raises.__name__}, got {type(exc).__name__}: {exc}"
        if c.match and not re.search(c.match, str(exc)):
            return "fail", f"{type(exc).__name__} message {str(exc)!r} does not match {c.match!r}"
        if c.raises is not TypeError and not isinstance(exc, pysdcpp.SDError):
            return "fail", f"{type(exc).__name__} is not an SDError"
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    else:
        if c.raises is not None:
            return "fail", f"expected {c.raises.__name__}, nothing was raised"
        detail = "succeeded"
    if c.uses_ctx:
        problem = context_problem(env.ctx)
        if problem:
            return "fail", f"{detail}; then the context is unusable: {problem}"
    return "pass", detail


def context_problem(ctx) -> str | None:
    """Cheap check that a context is still usable (a full generation is done once at the end)."""
    if ctx.closed:
        return "closed"
    if not ctx._lock.acquire(timeout=60):
        return "its lock is still held"
    ctx._lock.release()
    try:
        ctx.default_sampling_method()
    except Exception as exc:  # noqa: BLE001
        return f"default_sampling_method() raised {exc!r}"
    return None
