"""Checks that run before sd.cpp sees an input.

sd.cpp (pinned version) aborts the whole process on some malformed model files: a
C++ exception (nlohmann::json::type_error, std::length_error, std::bad_alloc)
escapes ``new_sd_ctx``, whose callers are C, so ``std::terminate`` ends the
interpreter; its fallback GGUF reader also accepts out-of-range ggml types.  These
checks read only the file's header (a few KB, no tensor data) and reject, with a
:class:`~pysdcpp.errors.ModelLoadError`, every file on which sd.cpp could do that.
They are at least as strict as sd.cpp's own parsers on the structure and no stricter
on the content, so a file sd.cpp loads is accepted here.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

from .errors import InvalidArgumentError, ModelFileNotFoundError, ModelLoadError

# -- model files ---------------------------------------------------------------------------

# safetensors dtype -> bytes per element in the file (sd.cpp's safetensors_io.cpp list; U8 is skipped)
ST_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "I32": 4, "I64": 8, "U8": 1}
ST_MAX_DIMS = 5  # SD_MAX_DIMS

# ggml type -> (block size, bytes per block), read from ggml_blck_size/ggml_type_size of the
# vendored ggml (GGML_TYPE_COUNT = 41; 4, 5, 31-33, 36-38 are removed types).
GGML_TYPES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36),
}
GGUF_MAX_NAME = 4096  # sd.cpp's GGUF reader's own bound on key lengths
GGUF_MAX_DIMS = 4     # GGML_MAX_DIMS
# GGUF metadata value type -> fixed size (8 = string, 9 = array are variable)
GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
TORCH_PICKLE = b"\x80"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def check_model_file(name: str, path) -> None:
    """Raise if `path` is not a model file sd.cpp can safely open (see the module doc)."""
    path = os.fsdecode(path)
    if "\0" in path:
        raise InvalidArgumentError(f"{name}: the path contains a NUL character")
    if not os.path.exists(path):
        raise ModelFileNotFoundError(f"{name}: no such file: {path}")
    if os.path.isdir(path):
        raise ModelLoadError(f"{name}: {path} is a directory, not a model file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ModelLoadError(f"{name}: {path} is empty")
            head = f.read(16)
            # the order of sd.cpp's ModelLoader::init_from_file
            if head[:4] == b"GGUF":
                _check_gguf(f, size)
            elif _check_safetensors(f, size):
                pass
            elif head[:1] == TORCH_PICKLE or head[:4] in ZIP_MAGICS:
                pass  # PyTorch checkpoints: sd.cpp's own readers bound-check these
            elif head[8:9] in (b"{", b"["):
                (n,) = struct.unpack("<Q", head[:8])
                if n <= 2 or n >= size:
                    raise _bad(f"safetensors header length {n} does not fit a {size}-byte file")
                raise _bad("safetensors header is not valid JSON")
            else:
                raise ModelLoadError("not a GGUF, safetensors or PyTorch file "
                                     f"(first bytes {head[:8].hex(' ')})")
    except PermissionError as exc:
        raise ModelLoadError(f"{name}: {path} is not readable: {exc.strerror}") from exc
    except ModelLoadError as exc:
        if isinstance(exc, ModelFileNotFoundError) or str(exc).startswith(f"{name}:"):
            raise
        raise ModelLoadError(f"{name}: {path}: {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"{name}: cannot read {path}: {exc}") from exc


def _bad(message: str):
    return ModelLoadError(message)


def _reject_constant(token: str):
    raise ValueError(f"{token} is not JSON")


def _is_uint(value, limit=1 << 64) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _check_safetensors(f, size: int) -> bool:
    """False if sd.cpp would not take the file for safetensors (is_safetensors_file: the
    header length fits and the header parses as JSON); raises if it would, but its
    reader could abort or read past the end of the file."""
    if size <= 8:
        return False
    f.seek(0)
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len <= 2 or header_len >= size:
        return False
    raw = f.read(header_len)
    if len(raw) < header_len:
        raise _bad(f"safetensors header length {header_len} does not fit a {size}-byte file")
    raw = raw.split(b"\0", 1)[0]  # sd.cpp parses the header as a C string
    try:
        header = json.loads(raw.decode("utf-8-sig"), parse_constant=_reject_constant,
                            object_pairs_hook=_pairs)
    except (ValueError, RecursionError):
        return False
    if not isinstance(header, _Obj):
        raise _bad(f"safetensors header is a JSON {type(header).__name__}, not an object")
    data_size = size - 8 - header_len
    for key, info in header.pairs:
        if key == "__metadata__":
            continue
        where = f"tensor {key!r}"
        if not isinstance(info, _Obj):
            raise _bad(f"{where}: expected an object with dtype, shape and data_offsets")
        info = dict(info.pairs)
        dtype = info.get("dtype")
        if not isinstance(dtype, str):
            raise _bad(f"{where}: dtype must be a string, got {dtype!r}")
        if dtype not in ST_DTYPES:
            raise _bad(f"{where}: unsupported dtype {dtype!r} (supported: {', '.join(ST_DTYPES)})")
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(_is_uint(d, 1 << 62) for d in shape):
            raise _bad(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        if len(shape) > ST_MAX_DIMS:
            raise _bad(f"{where}: {len(shape)} dimensions (at most {ST_MAX_DIMS})")
        offsets = info.get("data_offsets")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_uint(o) for o in offsets) or offsets[0] > offsets[1]):
            raise _bad(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
        if offsets[1] > data_size:
            raise _bad(f"{where}: data_offsets {offsets} point past the end of the file "
                       f"({data_size} bytes of tensor data)")
        if dtype != "U8" and math.prod(shape) * ST_DTYPES[dtype] != offsets[1] - offsets[0]:
            raise _bad(f"{where}: shape {shape} of {dtype} needs {math.prod(shape) * ST_DTYPES[dtype]} "
                       f"bytes but data_offsets span {offsets[1] - offsets[0]}")
    return True


class _Obj:
    """A JSON object kept as its (key, value) pairs, duplicates included."""
    __slots__ = ("pairs",)

    def __init__(self, pairs):
        self.pairs = pairs


def _pairs(pairs):
    return _Obj(pairs)


class _Reader:
    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def remaining(self) -> int:
        return self.size - self.f.tell()

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining():
            raise _bad(f"GGUF {what}: {n} bytes needed, the file ends first")
        return self.f.read(n)

    def u(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str, limit: int | None = None) -> bytes:
        n = self.u("Q", f"{what} length")
        if limit is not None and n > limit:
            raise _bad(f"GGUF {what}: length {n} is over {limit}")
        return self.take(n, what)


def _check_gguf(f, size: int) -> None:
    f.seek(0)
    r = _Reader(f, size)
    r.take(4, "magic")
    version = r.u("I", "version")
    if version not in (2, 3):
        raise _bad(f"GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = r.u("Q", "tensor count"), r.u("Q", "metadata count")
    # every tensor info takes >= 8+4+4+8 bytes and every key/value >= 8+4+1
    if n_tensors * 24 > size or n_kv * 13 > size:
        raise _bad(f"GGUF counts ({n_tensors} tensors, {n_kv} metadata entries) do not fit the file")
    alignment = 32
    for _ in range(n_kv):
        key = r.string("metadata key", GGUF_MAX_NAME)
        vtype = r.u("I", "metadata type")
        if key == b"general.alignment":
            if vtype != 4:
                raise _bad("GGUF general.alignment must be a uint32")
            alignment = r.u("I", "alignment")
            if alignment == 0 or alignment & (alignment - 1):
                raise _bad(f"GGUF general.alignment {alignment} is not a power of two")
            continue
        _skip_gguf_value(r, vtype, depth=0)
    infos = []
    for i in range(n_tensors):
        name = r.string(f"tensor {i} name", GGUF_MAX_NAME)
        n_dims = r.u("I", "tensor dims")
        if n_dims > GGUF_MAX_DIMS:
            raise _bad(f"GGUF tensor {name!r}: {n_dims} dimensions (at most {GGUF_MAX_DIMS})")
        shape = [r.u("q", "tensor shape") for _ in range(n_dims)]
        if any(d < 0 for d in shape):
            raise _bad(f"GGUF tensor {name!r}: negative dimension in {shape}")
        ttype = r.u("I", "tensor type")
        if ttype not in GGML_TYPES:
            raise _bad(f"GGUF tensor {name!r}: invalid ggml type {ttype}")
        block, type_size = GGML_TYPES[ttype]
        if shape and shape[0] % block:
            raise _bad(f"GGUF tensor {name!r}: first dimension {shape[0]} is not a multiple of "
                       f"the block size {block} of type {ttype}")
        offset = r.u("Q", "tensor offset")
        nbytes = math.prod(shape) // block * type_size
        infos.append((name, offset, nbytes))
    data_start = -(-f.tell() // alignment) * alignment
    data_size = size - data_start
    for name, offset, nbytes in infos:
        if offset + nbytes > data_size:
            raise _bad(f"GGUF tensor {name!r}: data at {offset}+{nbytes} is past the end of the file")


def _skip_gguf_value(r: _Reader, vtype: int, depth: int) -> None:
    if vtype in GGUF_SCALARS:
        r.take(GGUF_SCALARS[vtype], "metadata value")
    elif vtype == 8:
        r.string("metadata string")
    elif vtype == 9:
        if depth > 0:
            raise _bad("GGUF nested arrays are not supported")
        etype, n = r.u("I", "array type"), r.u("Q", "array length")
        if etype in GGUF_SCALARS:
            r.take(n * GGUF_SCALARS[etype], "array data")
        elif etype == 8:
            if n * 8 > r.remaining():
                raise _bad(f"GGUF array of {n} strings does not fit the file")
            for _ in range(n):
                r.string("array string")
        else:
            raise _bad(f"GGUF array of unsupported type {etype}")
    else:
        raise _bad(f"GGUF metadata value of unknown type {vtype}")


# -- generation arguments ------------------------------------------------------------------

def check_floats(values: dict[str, Any], defaults: dict[str, Any], names) -> None:
    """NaN is never valid; +inf only where sd.cpp's default is +inf (its "automatic")."""
    for name in names:
        value = values.get(name)
        if not isinstance(value, float) or math.isfinite(value):
            continue
        if math.isnan(value):
            raise InvalidArgumentError(f"{name} is NaN")
        if not (value > 0 and defaults.get(name) == math.inf):
            raise InvalidArgumentError(f"{name} must be finite, got {value!r}")


def prompt_text(name: str, value) -> str | None:
    """Prompts are text: str, or bytes that decode as UTF-8.  Lone surrogates and NUL
    characters cannot reach sd.cpp's tokenizer as UTF-8, so they are rejected."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(f"{name}: bytes are not valid UTF-8 ({exc.reason} at {exc.start})") from None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"{name}: not encodable as UTF-8 ({exc.reason} at {exc.start})") from None
    if "\0" in value:
        raise InvalidArgumentError(f"{name}: contains a NUL character")
    return value
