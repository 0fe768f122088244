"""Build-time generator of the `pysdcpp._sdcpp` cffi extension (API, out-of-line mode).

The cdef is derived from the *patched* `include/stable-diffusion.h` at build time,
so it cannot drift from the library it is compiled against; the C compiler then
checks every struct layout and enum value the Python side uses.  CMake runs

    python _ffi_build.py <stable-diffusion.h> <out.c>

and compiles <out.c> with `python_add_library`, linked to libstable-diffusion.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

# sd.cpp's callbacks are process-global; each is registered once and dispatches
# to the Python target of the call in progress (see pysdcpp/_callbacks.py).
CALLBACKS = """
extern "Python" void _pysdcpp_log_cb(enum sd_log_level_t level, const char* text, void* data);
extern "Python" void _pysdcpp_progress_cb(int step, int steps, float time, void* data);
extern "Python" void _pysdcpp_preview_cb(int step, int frame_count, sd_image_t* frames, bool is_noisy, void* data);
void free(void* ptr);
"""


def make_cdef(header: str) -> str:
    """Turn the public C header into a cdef: no comments, no preprocessor, no SD_API."""
    text = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    lines = []
    depth = 0  # inside `#ifdef __cplusplus` blocks
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if re.match(r"#\s*if(def)?\s+(defined\()?__cplusplus", stripped):
                depth += 1
            elif depth and re.match(r"#\s*endif", stripped):
                depth -= 1
            continue
        if depth:
            continue
        lines.append(line)
    text = "\n".join(lines)
    text = re.sub(r"\bSD_API\b", "", text)
    # `int32_t f();` is a prototype-less declaration in C; cffi wants `(void)`.
    text = re.sub(r"(\w+\s*\*?\s*\w+)\(\s*\)\s*;", r"\1(void);", text)
    return text.strip() + "\n" + CALLBACKS


def make_ffi(header_path: Path):
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(make_cdef(header_path.read_text()))
    ffi.set_source("pysdcpp._sdcpp", '#include <stdlib.h>\n#include "stable-diffusion.h"\n')
    return ffi


def main(argv: list[str]) -> int:
    header, out = Path(argv[1]), Path(argv[2])
    make_ffi(header).emit_c_code(str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
