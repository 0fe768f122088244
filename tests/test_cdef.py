"""The cffi layer covers the vendored header, and Python defaults are sd.cpp's defaults."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import pysdcpp
from pysdcpp import _params
from pysdcpp._native import ffi, lib

HEADER = Path(__file__).resolve().parent.parent / "vendor" / "stable-diffusion.cpp" / "include" / "stable-diffusion.h"


def parse_header(text: str):
    """An independent, regex-level reading of the header: functions and struct fields."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    functions = set(re.findall(r"^SD_API\s[^;(]*?\b(\w+)\s*\(", text, flags=re.M))
    structs = {}
    for body, name in re.findall(r"typedef struct\s*\w*\s*\{(.*?)\}\s*(\w+)\s*;", text, flags=re.S):
        fields = []
        for decl in body.split(";"):
            decl = decl.strip()
            if decl:
                fields.append(re.findall(r"(\w+)\s*(?:\[[^\]]*\])?$", decl)[0])
        structs[name] = fields
    enums = {}
    for name, body in re.findall(r"enum\s+(\w+)\s*\{(.*?)\}", text, flags=re.S):
        enums[name] = [e.split("=")[0].strip() for e in body.split(",") if e.strip()]
    return functions, structs, enums


@pytest.fixture(scope="module")
def header():
    if not HEADER.exists():
        pytest.skip("vendor tree not synced (run python vendor/sync.py)")
    return parse_header(HEADER.read_text())


def test_header_parse_finds_things(header):
    functions, structs, enums = header
    assert {"new_sd_ctx", "generate_image", "sd_ctx_params_init"} <= functions
    assert "sd_ctx_params_t" in structs and "model_path" in structs["sd_ctx_params_t"]
    assert len(structs) >= 12 and len(functions) >= 40


def test_every_function_is_declared(header):
    functions, _, _ = header
    missing = sorted(f for f in functions if not hasattr(lib, f))
    assert not missing, f"functions in stable-diffusion.h missing from the cdef: {missing}"


def test_every_struct_field_is_declared_in_order(header):
    _, structs, _ = header
    for name, fields in structs.items():
        declared = [f for f, _ in ffi.typeof(name).fields]
        assert declared == fields, f"{name}: cdef {declared} != header {fields}"


def test_every_enum_value_matches(header):
    _, _, enums = header
    for name, members in enums.items():
        relements = ffi.typeof(f"enum {name}").relements
        assert set(members) == set(relements), name
        for member in members:
            assert getattr(lib, member) == relements[member]


def test_every_ctx_field_is_reachable():
    all_paths = {p for p, _ in _params.leaf_fields(ffi.typeof("sd_ctx_params_t"))}
    assert _params.CTX.covered_paths() == all_paths


def test_every_img_gen_field_is_reachable():
    all_paths = {p for p, _ in _params.leaf_fields(ffi.typeof("sd_img_gen_params_t"))}
    assert _params.IMG_GEN.covered_paths() == all_paths


def _struct_bytes(cname, fill):
    c = ffi.new(cname + "*")
    fill(c)
    return bytes(ffi.buffer(c))


@pytest.mark.parametrize("table", [_params.CTX, _params.IMG_GEN], ids=["ctx", "img_gen"])
def test_python_defaults_build_the_c_default_struct(table):
    """Building with no keywords (and overrides undone) gives sd.cpp's *_init bytes."""
    keep = []
    undo = {k: v for k, v in table.c_defaults().items() if k in table.overrides}
    built = table.build(undo, keep)
    assert bytes(ffi.buffer(built)) == _struct_bytes(table.cname, table.init)


@pytest.mark.parametrize("table", [_params.CTX, _params.IMG_GEN], ids=["ctx", "img_gen"])
def test_python_defaults_round_trip_through_c(table):
    """Every default shown in the Python signature, passed explicitly, gives the C default."""
    keep = []
    c_defaults = table.c_defaults()
    built = table.build(c_defaults, keep)
    assert bytes(ffi.buffer(built)) == _struct_bytes(table.cname, table.init)


def test_signatures_show_c_defaults():
    ctx_sig = inspect.signature(pysdcpp.Context)
    c_ctx = _params.CTX.c_defaults()
    for name, default in c_ctx.items():
        expected = _params.CTX_OVERRIDES.get(name, default)
        assert ctx_sig.parameters[name].default == expected, name
    gen_sig = inspect.signature(pysdcpp.Context.generate)
    for name, default in _params.IMG_GEN.c_defaults().items():
        if name == "prompt":
            continue
        got = gen_sig.parameters[name].default
        assert got == default or (got != got and default != default), name
    # spot checks against the values sd.cpp's init functions set
    assert gen_sig.parameters["steps"].default == 20
    assert gen_sig.parameters["cfg_scale"].default == 7.0
    assert gen_sig.parameters["width"].default == 512
    assert ctx_sig.parameters["n_threads"].default == lib.sd_get_num_physical_cores()


def test_overrides_are_documented_and_few():
    assert set(_params.CTX_OVERRIDES) == {"vae_decode_only", "free_params_immediately"}
