"""sd.cpp's enums as Python enums, built from sd.cpp's own name functions.

Member values are the C values; ``str(member)`` and ``member.cli_name`` are
sd-cli's spelling (``SampleMethod.EULER_A.cli_name == "euler_a"``), and
``SampleMethod.parse("euler_a")`` goes through sd.cpp's ``str_to_*``.  Nothing
is mirrored by hand: a new sampler in sd.cpp appears here by itself.
"""
from __future__ import annotations

import enum
import re

from ._native import ffi, lib
from .errors import InvalidArgumentError


class _SDEnum(enum.IntEnum):
    cli_name: str

    def __str__(self) -> str:
        return self.cli_name

    @classmethod
    def parse(cls, value):
        """An enum member from a member, its C value, or its sd-cli name."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            member = cls._by_cli_name().get(value.strip().lower())
            if member is not None:
                return member
        elif isinstance(value, int) and not isinstance(value, bool) and value in cls._value2member_map_:
            return cls(value)
        choices = ", ".join(m.cli_name for m in cls)
        raise InvalidArgumentError(f"unknown {cls._label}: {value!r} (choose from {choices})")

    @classmethod
    def _by_cli_name(cls) -> dict:
        return {m.cli_name.lower(): m for m in cls}


def _identifier(name: str) -> str:
    ident = name.upper().replace("++", "PP").replace("+", "P")
    ident = re.sub(r"[^0-9A-Z_]", "_", ident)
    return "_" + ident if ident[0].isdigit() else ident


def _build(cls_name: str, label: str, count: int, name_of, parse_c=None) -> type[_SDEnum]:
    members = {}
    cli_names = {}
    for value in range(count):
        raw = name_of(value)
        if raw == ffi.NULL:
            continue
        cli = ffi.string(raw).decode()
        if not cli or cli.upper() in ("NONE", "DEPRECATED") or (parse_c and parse_c(raw) != value):
            continue  # a hole in the C enum (a removed type)
        members[_identifier(cli)] = value
        cli_names[value] = cli
    cls = _SDEnum(cls_name, members, module=__name__)
    cls._label = label
    for member in cls:
        member.cli_name = cli_names[member.value]
    cls.__doc__ = f"sd.cpp's {label} (sd-cli names: {', '.join(cli_names.values())})."
    return cls


SampleMethod = _build("SampleMethod", "sampling method", lib.SAMPLE_METHOD_COUNT,
                      lib.sd_sample_method_name, lib.str_to_sample_method)
Scheduler = _build("Scheduler", "scheduler", lib.SCHEDULER_COUNT,
                   lib.sd_scheduler_name, lib.str_to_scheduler)
RNGType = _build("RNGType", "rng type", lib.RNG_TYPE_COUNT, lib.sd_rng_type_name, lib.str_to_rng_type)
Prediction = _build("Prediction", "prediction type", lib.PREDICTION_COUNT,
                    lib.sd_prediction_name, lib.str_to_prediction)
WeightType = _build("WeightType", "weight type", lib.SD_TYPE_COUNT, lib.sd_type_name, lib.str_to_sd_type)
Preview = _build("Preview", "preview mode", lib.PREVIEW_COUNT, lib.sd_preview_name, lib.str_to_preview)
LoraApplyMode = _build("LoraApplyMode", "lora apply mode", lib.LORA_APPLY_MODE_COUNT,
                       lib.sd_lora_apply_mode_name, lib.str_to_lora_apply_mode)
HiresUpscaler = _build("HiresUpscaler", "hires upscaler", lib.SD_HIRES_UPSCALER_COUNT,
                       lib.sd_hires_upscaler_name, lib.str_to_sd_hires_upscaler)
# sd.cpp has no name function for the cache modes; their names are sd-cli's
# `--cache-mode` spellings, derived from the C enumerator names.
CacheMode = _SDEnum("CacheMode", {
    name[len("SD_CACHE_"):]: value
    for name, value in ffi.typeof("enum sd_cache_mode_t").relements.items()
}, module=__name__)
CacheMode._label = "cache mode"
for _m in CacheMode:
    _m.cli_name = _m.name.lower().replace("_", "-") if _m.name != "DISABLED" else "disabled"

# C enum type name -> Python enum, for the generic struct conversion.
BY_C_TYPE = {
    "enum sample_method_t": SampleMethod,
    "enum scheduler_t": Scheduler,
    "enum rng_type_t": RNGType,
    "enum prediction_t": Prediction,
    "enum sd_type_t": WeightType,
    "enum preview_t": Preview,
    "enum lora_apply_mode_t": LoraApplyMode,
    "enum sd_hires_upscaler_t": HiresUpscaler,
    "enum sd_cache_mode_t": CacheMode,
}

__all__ = ["SampleMethod", "Scheduler", "RNGType", "Prediction", "WeightType", "Preview",
           "LoraApplyMode", "HiresUpscaler", "CacheMode"]
