"""The one place that turns images into ``sd_image_t`` and back.

In:  PIL images, numpy arrays (HxW, HxWx1, HxWx3 or HxWx4, uint8), or paths.
Out: PIL images (or HxWxC uint8 numpy arrays); the C buffers are freed here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ._native import ffi, lib
from .errors import InvalidArgumentError


def to_array(image, *, channels: int, what: str) -> np.ndarray:
    """An HxWxC contiguous uint8 array with `channels` (3 = RGB, 1 = L)."""
    if isinstance(image, (str, bytes, os.PathLike)):
        path = Path(os.fsdecode(image))
        if not path.is_file():
            raise InvalidArgumentError(f"{what}: no such file: {path}")
        try:
            with Image.open(path) as opened:
                image = opened.copy()
        except Exception as exc:  # PIL raises several types for unreadable files
            raise InvalidArgumentError(f"{what}: cannot read image {path}: {exc}") from exc
    if isinstance(image, Image.Image):
        try:
            image = image.convert("L" if channels == 1 else "RGB")
        except Exception as exc:  # PIL raises ValueError/OSError for modes it cannot convert
            raise InvalidArgumentError(f"{what}: cannot convert a {image.mode} image: {exc}") from exc
        array = np.asarray(image, dtype=np.uint8)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InvalidArgumentError(f"{what}: numpy images must be uint8, got {image.dtype}")
        array = image
    else:
        raise InvalidArgumentError(
            f"{what}: expected a PIL image, a uint8 numpy array or a path, got {type(image).__name__}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidArgumentError(f"{what}: expected an HxWxC image, got shape {array.shape}")
    have = array.shape[2]
    if have == channels:
        pass
    elif channels == 3 and have == 1:
        array = np.repeat(array, 3, axis=2)
    elif channels == 3 and have == 4:
        array = array[:, :, :3]
    elif channels == 1 and have in (3, 4):
        array = np.asarray(Image.fromarray(np.ascontiguousarray(array[:, :, :3])).convert("L"))[:, :, None]
    else:
        raise InvalidArgumentError(f"{what}: cannot use {have} channels")
    return np.ascontiguousarray(array)


def fill_image(c_image, array: np.ndarray, keepalive: list) -> None:
    """Point an sd_image_t at `array`'s pixels (kept alive through `keepalive`)."""
    buf = ffi.from_buffer("uint8_t[]", array)
    keepalive.append((array, buf))
    c_image.width = array.shape[1]
    c_image.height = array.shape[0]
    c_image.channel = array.shape[2]
    c_image.data = buf


def c_image_array(images, *, what: str, keepalive: list):
    """A C array of sd_image_t for a list of images; returns (pointer, count)."""
    if not images:
        return ffi.NULL, 0
    arr = ffi.new("sd_image_t[]", len(images))
    keepalive.append(arr)
    for i, image in enumerate(images):
        fill_image(arr[i], to_array(image, channels=3, what=f"{what}[{i}]"), keepalive)
    return arr, len(images)


def array_from_c(c_image) -> np.ndarray | None:
    if c_image.data == ffi.NULL or c_image.width == 0 or c_image.height == 0:
        return None
    shape = (c_image.height, c_image.width, c_image.channel)
    n = shape[0] * shape[1] * shape[2]
    return np.frombuffer(ffi.buffer(c_image.data, n), dtype=np.uint8).reshape(shape).copy()


def to_pil(array: np.ndarray) -> Image.Image:
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array, mode={3: "RGB", 4: "RGBA"}[array.shape[2]])


def images_from_c(c_images, count: int, *, free: bool) -> list[np.ndarray | None]:
    """Copy `count` images out of an sd_image_t array; with `free`, free the C buffers
    (each image's data and the array itself, as sd.cpp allocated them with malloc)."""
    if c_images == ffi.NULL:
        return []
    try:
        return [array_from_c(c_images[i]) for i in range(count)]
    finally:
        if free:
            for i in range(count):
                if c_images[i].data != ffi.NULL:
                    lib.free(c_images[i].data)
                    c_images[i].data = ffi.NULL
            lib.free(c_images)
