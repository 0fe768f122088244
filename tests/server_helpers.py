"""Helpers for the server tests: run pysdcpp-server / sd-server on loopback, decode images."""
from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sd_server_path() -> Path | None:
    """The sd-server built from the same patched tree (installed with pysdcpp), if any."""
    import pysdcpp

    env = os.environ.get("PYSDCPP_SD_SERVER")
    if env:
        return Path(env)
    path = Path(pysdcpp.__file__).parent / "bin" / "sd-server"
    return path if path.exists() else None


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} was not ready after {timeout} s")


class ProcessServer:
    """A server program on 127.0.0.1:<free port>; its output goes to `log`."""

    def __init__(self, argv: list[str], log: Path, cwd: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen([*argv, "--listen-ip", "127.0.0.1", "--listen-port", str(self.port)],
                                     stdout=self._out, stderr=subprocess.STDOUT, cwd=cwd)

    def wait(self, timeout: float = 180) -> "ProcessServer":
        try:
            wait_ready(self.url, self.proc, timeout)
        except Exception:
            self.stop()
            raise RuntimeError(f"server did not start; its log:\n{self.log.read_text(errors='replace')[-4000:]}")
        return self

    def stop(self, sig=signal.SIGTERM) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def pysdcpp_server_argv() -> list[str]:
    return [sys.executable, "-m", "pysdcpp.server"]


class ThreadServer:
    """uvicorn serving an ASGI app in a thread of this process (real TCP on loopback)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        wait_ready(self.url, timeout=60)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def decode(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im.convert("RGB"))


def png_parameters(b64: str) -> str:
    data = base64.b64decode(b64)
    for ctype, raw in _chunks(data):
        if ctype == b"tEXt" and raw.startswith(b"parameters\0"):
            return raw[len(b"parameters\0"):].decode("utf-8")
    return ""


def _chunks(data: bytes):
    import struct

    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos = 8
    while pos < len(data):
        length, = struct.unpack(">I", data[pos:pos + 4])
        yield data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length


def image_b64(width: int, height: int, seed: int = 0, mode: str = "RGB", fmt: str = "PNG") -> str:
    rng = np.random.default_rng(seed)
    shape = (height, width) if mode == "L" else (height, width, len(mode))
    im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def shape_of(value):
    """The JSON shape: dict keys (recursively) and value types; lists by their first item."""
    if isinstance(value, dict):
        return {k: shape_of(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape_of(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def assert_shape_covers(ours, theirs, path="$"):
    """Every key sd-server's response has, ours has, with the same JSON type (ours may add keys)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), f"{path}: sd-server has an object, we have {ours!r}"
        for k, v in theirs.items():
            assert k in ours, f"{path}: sd-server's key {k!r} is missing (we have {sorted(ours)})"
            assert_shape_covers(ours[k], v, f"{path}.{k}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list), f"{path}: sd-server has a list, we have {ours!r}"
        if theirs and ours:
            assert_shape_covers(ours[0], theirs[0], f"{path}[0]")
    elif theirs != "null" and ours != "null":
        assert ours == theirs, f"{path}: sd-server has a {theirs}, we have a {ours}"

