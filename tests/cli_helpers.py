"""Helpers for the sd-cli equivalence tests: find sd-cli, run it, read PNG text chunks."""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def sd_cli_path() -> Path | None:
    """The sd-cli built from the same patched tree (installed with pysdcpp), if any."""
    import pysdcpp

    env = os.environ.get("PYSDCPP_SD_CLI")
    if env:
        return Path(env)
    path = Path(pysdcpp.__file__).parent / "bin" / "sd-cli"
    return path if path.exists() else None


def run_sd_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(sd_cli_path()), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def run_pysdcpp(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pysdcpp", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def png_text_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """(chunk type, raw data) of every text chunk of a PNG, in file order."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, out = 8, []
    while pos < len(data):
        length, = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        if ctype in (b"tEXt", b"iTXt", b"zTXt"):
            out.append((ctype, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def image_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")}


def assert_same_outputs(a_dir: Path, b_dir: Path) -> int:
    """Same file names, byte-identical pixels and identical text chunks; returns the count."""
    a, b = image_files(a_dir), image_files(b_dir)
    assert sorted(a) == sorted(b), f"sd-cli wrote {sorted(a)}, pysdcpp wrote {sorted(b)}"
    assert a, "no image written"
    for name in a:
        with Image.open(a[name]) as ia, Image.open(b[name]) as ib:
            assert (ia.mode, ia.size) == (ib.mode, ib.size), name
            assert np.array_equal(np.asarray(ia), np.asarray(ib)), f"{name}: pixels differ"
        if name.endswith(".png"):
            ta, tb = png_text_chunks(a[name]), png_text_chunks(b[name])
            assert ta == tb, f"{name}: metadata differs:\n sd-cli:  {ta}\n pysdcpp: {tb}"
    return len(a)


def help_flags(binary: Path) -> list[tuple[list[str], str]]:
    """(names, value hint) of every option line of `<binary> --help` (sd.cpp's ArgOptions::print)."""
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60).stdout
    flags = []
    for line in out.splitlines():
        m = re.match(r"^  (-{1,2}[^\s,]+)(?:, (--[^\s,]+))?(?: <(\w+)>)?(?:\s|$)", line)
        if m:
            flags.append(([n for n in m.group(1, 2) if n], m.group(3) or ""))
    return flags
