"""pysdcpp: stable-diffusion.cpp from Python, with fast streaming of models larger than VRAM.

>>> import pysdcpp
>>> with pysdcpp.Context("sd15.safetensors") as ctx:
...     image, = ctx.txt2img("a lighthouse at dusk", width=512, height=512, seed=42)
...     image.save("out.png")
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from ._native import ffi, lib
from .context import Context, StreamStats
from .enums import (CacheMode, HiresUpscaler, LoraApplyMode, Prediction, Preview, RNGType,
                    SampleMethod, Scheduler, WeightType)
from .errors import (CancelledError, ContextClosedError, GenerationError, InvalidArgumentError,
                     ModelFileNotFoundError, ModelLoadError, ReentrantCallError, SDError)
from .upscaler import Upscaler

__version__ = "0.1.0"


def system_info() -> str:
    """The GPU backend this copy was built with, then sd.cpp's own system information
    (the CPU features ggml uses)."""
    info = build_info()
    backend = f"CUDA (architectures {info['cuda_architectures'] or 'default'})" if info["cuda"] else "CPU only"
    return (f"pysdcpp {__version__}, sd.cpp {info['sdcpp_version']}, backend: {backend}\n"
            + ffi.string(lib.sd_get_system_info()).decode())


@lru_cache(maxsize=None)
def build_info() -> dict:
    """How this copy was built: sd.cpp version/commit, CUDA or not, CMake arguments."""
    info = json.loads(resources.files(__name__).joinpath("_build_info.json").read_text())
    info["sdcpp_version_runtime"] = ffi.string(lib.sd_version()).decode()
    info["sdcpp_commit_runtime"] = ffi.string(lib.sd_commit()).decode()
    info["pysdcpp_version"] = __version__
    return info


def num_physical_cores() -> int:
    return lib.sd_get_num_physical_cores()


__all__ = [
    "Context", "Upscaler", "StreamStats", "system_info", "build_info", "num_physical_cores",
    "SampleMethod", "Scheduler", "RNGType", "Prediction", "WeightType", "Preview", "LoraApplyMode",
    "HiresUpscaler", "CacheMode",
    "SDError", "InvalidArgumentError", "ModelLoadError", "ModelFileNotFoundError", "GenerationError",
    "ContextClosedError", "CancelledError", "ReentrantCallError",
]
