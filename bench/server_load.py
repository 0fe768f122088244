#!/usr/bin/env python3
"""Bounded load test of pysdcpp-server on loopback: a fixed number of requests at 1, 4 and 16
concurrent clients; throughput, p50/p95 latency, errors, and the server's RSS sampled all along.

    python3 -P bench/server_load.py --out bench/results/server_load.json [--requests 32] [--levels 1,4,16]

It writes a random-weight SD 1.5 (pysdcpp.testing, cached in --models), starts
``pysdcpp-server`` on 127.0.0.1 (64x64, 1 step by default: the server's own costs are what is
measured, not sd.cpp's), sends ``POST /sdapi/v1/txt2img`` requests, checks every answer (200,
one 64x64 PNG) and stops the server.  The client is asyncio + httpx rather than locust: the
run is a fixed count of requests (locust runs for a time), each latency is kept, the server's
RSS is sampled in the same event loop, and httpx is already a test dependency.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import pysdcpp

    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "pysdcpp": pysdcpp.__version__, "sdcpp": pysdcpp.build_info()["sdcpp_version"],
            "load_avg_at_start": os.getloadavg()}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        return ""


def bench_args(ap: argparse.ArgumentParser, name: str, threads: int, steps: int) -> None:
    """The options both server benches take."""
    ap.add_argument("--out", type=Path, default=ROOT / f"bench/results/{name}.json")
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("PYSDCPP_TEST_CACHE", "/tmp/pysdcpp-bench")))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--threads", type=int, default=threads)


def sd15_model(models: Path) -> Path:
    """The tests' random-weight SD 1.5 (pysdcpp.testing), written once."""
    from pysdcpp import testing

    models.mkdir(parents=True, exist_ok=True)
    model = models / "sd15-random-seed0-f16.safetensors"
    if not model.exists():
        testing.write_sd15(model.with_suffix(".tmp"), seed=0, dtype="f16")
        model.with_suffix(".tmp").rename(model)
    return model


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def level(url: str, clients: int, n: int, body: dict, pid: int, samples: list, t_origin: float) -> dict:
    import httpx
    from PIL import Image

    latencies, errors = [], []
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def client(c: httpx.AsyncClient):
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            try:
                r = await c.post("/sdapi/v1/txt2img", json={**body, "seed": 1000 + i})
                ok = r.status_code == 200
                if ok:
                    with Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))) as im:
                        ok = im.size == (body["width"], body["height"])
                if not ok:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except Exception as exc:  # a failed request is counted, never hidden
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - t0)

    async def sampler(stop: asyncio.Event):
        while not stop.is_set():
            samples.append((time.perf_counter() - t_origin, rss_mib(pid), clients))
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except asyncio.TimeoutError:
                pass

    stop = asyncio.Event()
    sampling = asyncio.ensure_future(sampler(stop))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    stop.set()
    await sampling
    return {"clients": clients, "requests": n, "errors": len(errors), "error_samples": errors[:5],
            "wall_s": round(wall, 3), "throughput_rps": round(n / wall, 4),
            "p50_s": round(percentile(latencies, 0.5), 4), "p95_s": round(percentile(latencies, 0.95), 4),
            "mean_s": round(statistics.mean(latencies), 4), "max_s": round(max(latencies), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_args(ap, "server_load", threads=2, steps=1)
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--port", type=int, default=18765)
    a = ap.parse_args()
    import httpx

    model = sd15_model(a.models)
    levels = [int(x) for x in a.levels.split(",")]
    cmd = [sys.executable, "-P", "-m", "pysdcpp.server", "-m", str(model), "-t", str(a.threads), "--listen-port",
           str(a.port), "--max-queue-size", str(max(levels) + 1)]
    log = open(a.out.with_suffix(".server.log"), "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{a.port}"
    try:
        t_start = time.perf_counter()
        while True:
            assert server.poll() is None, "the server exited"
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        ready_s = time.perf_counter() - t_start
        body = {"prompt": "a lighthouse at dusk", "width": a.size, "height": a.size, "steps": a.steps}
        samples: list = []
        t_origin = time.perf_counter()
        warm = asyncio.run(level(url, 1, 2, body, server.pid, samples, t_origin))  # warm-up, not reported
        rss_after_warmup = rss_mib(server.pid)
        results = []
        for clients in levels:
            r = asyncio.run(level(url, clients, a.requests, body, server.pid, samples, t_origin))
            print(json.dumps(r), flush=True)
            results.append(r)
        rss = [s[1] for s in samples]
        out = {
            "bench": "server_load", "commit": git_commit(), "machine": machine(),
            "command": " ".join(["python3 -P bench/server_load.py", *sys.argv[1:]]), "server_command": cmd,
            "request": {"endpoint": "POST /sdapi/v1/txt2img", **body}, "server_ready_s": round(ready_s, 2),
            "warmup": warm, "levels": results,
            "rss_mib": {"after_warmup": round(rss_after_warmup, 1), "min": round(min(rss), 1),
                        "max": round(max(rss), 1), "last": round(rss[-1], 1),
                        "growth_after_warmup": round(rss[-1] - rss_after_warmup, 1)},
            "rss_samples": [(round(t, 2), round(m, 1), c) for t, m, c in samples],
            "total_errors": sum(r["errors"] for r in results),
        }
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(dump(out))
    plot(out, a.out.with_suffix(".png"))
    print(f"wrote {a.out} and {a.out.with_suffix('.png')}")
    return 0 if out["total_errors"] == 0 else 1


def dump(out: dict) -> str:
    """JSON with the RSS samples one per line (thousands of them)."""
    samples = out["rss_samples"]
    text = json.dumps({**out, "rss_samples": "@@"}, indent=1)
    return text.replace('"@@"', "[\n" + ",\n".join(json.dumps(x) for x in samples) + "\n]") + "\n"


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = out["levels"]
    x = [r["clients"] for r in levels]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    ax1.plot(x, [r["throughput_rps"] for r in levels], "o-")
    ax1.set(xscale="log", xticks=x, xticklabels=x, xlabel="concurrent clients", ylabel="images / s",
            title="throughput")
    ax2.plot(x, [r["p50_s"] for r in levels], "o-", label="p50")
    ax2.plot(x, [r["p95_s"] for r in levels], "s--", label="p95")
    ax2.set(xscale="log", xticks=x, xticklabels=x, xlabel="concurrent clients", ylabel="latency (s)",
            title="latency")
    ax2.legend()
    t = [s[0] for s in out["rss_samples"]]
    ax3.plot(t, [s[1] for s in out["rss_samples"]])
    ax3.set(xlabel="time (s)", ylabel="server RSS (MiB)", title="server RSS, sampled every 0.25 s")
    req = out["request"]
    fig.suptitle(f"pysdcpp-server {req['endpoint']} {req['width']}x{req['height']} {req['steps']} step(s), "
                 f"{out['levels'][0]['requests']} requests per level, commit {out['commit']}, "
                 f"{out['machine']['cores']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
