"""The one place that turns Python keyword arguments into sd.cpp's parameter structs.

Each struct is first filled by sd.cpp's own ``*_init`` function, so every default
is sd.cpp's; only the keywords a caller passes are written over it.  Python
names follow sd-cli's flags (``--cfg-scale`` -> ``cfg_scale``); the tables below
map them to C fields, and ``tests/test_cdef.py`` checks that every C field is
reachable.  Conversions go by the field's C type, read from cffi:

* ``bool``/integers/floats: checked Python numbers (no silent truncation);
* ``const char*``: ``str`` or ``os.PathLike`` (``None`` = NULL);
* enums: the Python enum (:mod:`pysdcpp.enums`), its sd-cli name or its value;
  ``None`` is the enum's ``*_COUNT`` sentinel, which sd.cpp reads as "automatic".
"""
from __future__ import annotations

import inspect
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._native import ffi, lib
from .enums import BY_C_TYPE
from .errors import InvalidArgumentError

# Where pysdcpp's default deliberately differs from sd_ctx_params_init's, and why:
# sd.cpp's defaults suit a one-shot CLI; a Python context is reused.
CTX_OVERRIDES = {
    "vae_decode_only": False,          # img2img/inpaint need the VAE encoder
    "free_params_immediately": False,  # the weights must survive the first generation
}


@dataclass(frozen=True)
class Leaf:
    """A Python keyword bound to one C field (`path` is dotted from the struct root)."""
    name: str
    path: str
    ctype: Any

    def get(self, root):
        obj = root
        for part in self.path.split("."):
            obj = getattr(obj, part)
        return obj

    def set(self, root, value, keepalive: list) -> None:
        *parents, last = self.path.split(".")
        obj = root
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, last, to_c(self.name, self.ctype, value, keepalive))


def leaf_fields(ctype, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, ctype) of every non-struct field of a struct type, in order."""
    out = []
    for name, field in ctype.fields:
        if field.type.kind == "struct":
            out.extend(leaf_fields(field.type, f"{prefix}{name}."))
        else:
            out.append((prefix + name, field.type))
    return out


def _enum_sentinel(ctype) -> int:
    return max(ctype.elements)


def to_python(ctype, value):
    """A C value as the Python default shown in signatures."""
    if ctype.kind == "enum":
        if value == _enum_sentinel(ctype) and ctype.cname in BY_C_TYPE and value not in BY_C_TYPE[ctype.cname]._value2member_map_:
            return None
        enum_cls = BY_C_TYPE.get(ctype.cname)
        return enum_cls(value) if enum_cls is not None else value
    if ctype.kind == "pointer":
        if value == ffi.NULL:
            return None
        if ctype.item.cname == "char":
            return ffi.string(value).decode()
        return value
    if ctype.kind == "primitive" and ctype.cname == "float":
        return float(str(np.float32(value)))  # 0.01, not 0.009999999776482582
    return value


def to_c(name: str, ctype, value, keepalive: list):
    if ctype.kind == "enum":
        if value is None:
            return _enum_sentinel(ctype)
        enum_cls = BY_C_TYPE.get(ctype.cname)
        if enum_cls is None:
            raise InvalidArgumentError(f"{name}: no Python enum for {ctype.cname}")
        return int(enum_cls.parse(value))
    if ctype.kind == "pointer" and ctype.item.cname == "char":
        if value is None:
            return ffi.NULL
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, (str, os.PathLike)):
            data = os.fsencode(value)
        else:
            raise InvalidArgumentError(f"{name}: expected a string or path, got {type(value).__name__}")
        if b"\0" in data:
            raise InvalidArgumentError(f"{name}: contains a NUL character")
        cstr = ffi.new("char[]", data)
        keepalive.append(cstr)
        return cstr
    if ctype.kind == "primitive":
        cname = ctype.cname
        if cname == "_Bool":
            if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
                raise InvalidArgumentError(f"{name}: expected a bool, got {value!r}")
            return bool(value)
        if cname in ("float", "double"):
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise InvalidArgumentError(f"{name}: expected a number, got {value!r}")
            return float(value)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise InvalidArgumentError(f"{name}: expected an integer, got {value!r}")
        lo, hi = _int_range(cname)
        if not lo <= int(value) <= hi:
            raise InvalidArgumentError(f"{name}: {value} is out of range for {cname}")
        return int(value)
    raise InvalidArgumentError(f"{name}: cannot convert to {ctype.cname}")


def _int_range(cname: str) -> tuple[int, int]:
    size = ffi.sizeof(cname)
    if cname.startswith("u") or cname == "size_t":
        return 0, (1 << (8 * size)) - 1
    return -(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1


class Table:
    """The keyword <-> C field mapping of one parameter struct."""

    def __init__(self, cname: str, init: Callable, names: dict[str, str],
                 special: dict[str, tuple[str, ...]], overrides: dict[str, Any] | None = None):
        self.cname = cname
        self.init = init
        self.ctype = ffi.typeof(cname)
        types = dict(leaf_fields(self.ctype))
        self.leaves = {name: Leaf(name, path, types[path]) for name, path in names.items()}
        # keywords converted by the caller (images, lists); value: the C paths they fill
        self.special = special
        self.overrides = dict(overrides or {})

    def c_defaults(self) -> dict[str, Any]:
        """The Python value of each leaf keyword after sd.cpp's ``*_init``."""
        c = ffi.new(self.cname + "*")
        self.init(c)
        return {name: to_python(leaf.ctype, leaf.get(c)) for name, leaf in self.leaves.items()}

    def defaults(self) -> dict[str, Any]:
        values = self.c_defaults()
        values.update(self.overrides)
        return values

    def covered_paths(self) -> set[str]:
        paths = {leaf.path for leaf in self.leaves.values()}
        for filled in self.special.values():
            paths.update(filled)
        return paths

    def build(self, values: dict[str, Any], keepalive: list):
        """A new C struct: ``*_init`` defaults, then the overrides, then `values`."""
        c = ffi.new(self.cname + "*")
        keepalive.append(c)
        self.init(c)
        merged = dict(self.overrides)
        merged.update(values)
        for name, value in merged.items():
            leaf = self.leaves.get(name)
            if leaf is None:
                raise TypeError(f"unexpected keyword argument {name!r}")
            leaf.set(c, value, keepalive)
        return c

    def parameters(self) -> list[inspect.Parameter]:
        params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value)
                  for name, value in self.defaults().items()]
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
                   for name in self.special]
        return params


def _ctx_names() -> dict[str, str]:
    names = {}
    for path, _ in leaf_fields(ffi.typeof("sd_ctx_params_t")):
        if path in ("embeddings", "embedding_count"):
            continue
        names[path[: -len("_path")] if path.endswith("_path") else path] = path
    return names


CTX = Table("sd_ctx_params_t", lib.sd_ctx_params_init, _ctx_names(),
            special={"embeddings": ("embeddings", "embedding_count")},
            overrides=CTX_OVERRIDES)


def _prefixed(struct: str, prefix: str, base: str) -> dict[str, str]:
    return {f"{prefix}{path.replace('.', '_')}": f"{base}.{path}"
            for path, _ in leaf_fields(ffi.typeof(struct))}


_IMG_NAMES = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "clip_skip": "clip_skip",
    "width": "width",
    "height": "height",
    "sampling_method": "sample_params.sample_method",
    "scheduler": "sample_params.scheduler",
    "steps": "sample_params.sample_steps",
    "cfg_scale": "sample_params.guidance.txt_cfg",
    "img_cfg_scale": "sample_params.guidance.img_cfg",
    "guidance": "sample_params.guidance.distilled_guidance",
    "slg_scale": "sample_params.guidance.slg.scale",
    "skip_layer_start": "sample_params.guidance.slg.layer_start",
    "skip_layer_end": "sample_params.guidance.slg.layer_end",
    "eta": "sample_params.eta",
    "timestep_shift": "sample_params.shifted_timestep",
    "flow_shift": "sample_params.flow_shift",
    "strength": "strength",
    "seed": "seed",
    "batch_count": "batch_count",
    "control_strength": "control_strength",
    "auto_resize_ref_image": "auto_resize_ref_image",
    "increase_ref_index": "increase_ref_index",
    "pm_id_embed_path": "pm_params.id_embed_path",
    "pm_style_strength": "pm_params.style_strength",
    "vae_tiling": "vae_tiling_params.enabled",
    "vae_tile_size_x": "vae_tiling_params.tile_size_x",
    "vae_tile_size_y": "vae_tiling_params.tile_size_y",
    "vae_tile_overlap": "vae_tiling_params.target_overlap",
    "vae_relative_tile_size_x": "vae_tiling_params.rel_size_x",
    "vae_relative_tile_size_y": "vae_tiling_params.rel_size_y",
}
_IMG_NAMES.update(_prefixed("sd_cache_params_t", "cache_", "cache"))
_IMG_NAMES.update(_prefixed("sd_hires_params_t", "hires_", "hires"))

IMG_GEN = Table("sd_img_gen_params_t", lib.sd_img_gen_params_init, _IMG_NAMES, special={
    "init_image": ("init_image.width", "init_image.height", "init_image.channel", "init_image.data"),
    "mask_image": ("mask_image.width", "mask_image.height", "mask_image.channel", "mask_image.data"),
    "control_image": ("control_image.width", "control_image.height", "control_image.channel",
                      "control_image.data"),
    "ref_images": ("ref_images", "ref_images_count"),
    "pm_id_images": ("pm_params.id_images", "pm_params.id_images_count"),
    "loras": ("loras", "lora_count"),
    "skip_layers": ("sample_params.guidance.slg.layers", "sample_params.guidance.slg.layer_count"),
    "sigmas": ("sample_params.custom_sigmas", "sample_params.custom_sigmas_count"),
})
