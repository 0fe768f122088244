#!/usr/bin/env python3
"""Throughput of pysdcpp-server on Ray Serve: 1 Generator replica against 2, on a local Ray cluster
on the CPU, the same requests sent through the Serve HTTP proxy.

    python3 -P bench/server_ray.py --out bench/results/server_ray.json [--requests 16] [--clients 8]

Each replica holds its own context with --threads threads (default 1: on a 2-core machine two
1-thread replicas use the cores that one 1-thread replica leaves idle).  Requests are
``POST /sdapi/v1/txt2img`` (64x64, 2 steps by default) with distinct seeds; every answer is checked.
Run it from outside the checkout's directory or with -P: Ray puts the working directory on its
workers' sys.path.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from server_load import bench_args, git_commit, machine, percentile, sd15_model  # noqa: E402


async def send(url: str, n: int, clients: int, body: dict) -> tuple[float, list[float], list[str]]:
    import httpx

    latencies, errors = [], []
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def client(c):
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                r = await c.post("/sdapi/v1/txt2img", json={**body, "seed": 500 + i})
                if r.status_code != 200 or len(r.json().get("images", [])) != 1:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except Exception as exc:  # counted, never hidden
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - t0)
    async with httpx.AsyncClient(base_url=url, timeout=900) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        return time.perf_counter() - t0, latencies, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_args(ap, "server_ray", threads=1, steps=2)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    import socket

    import ray
    from ray import serve

    from pysdcpp.server import Settings, rayserve

    model = sd15_model(a.models)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.chdir(tempfile.mkdtemp())  # see the docstring
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    ray_start_s = time.perf_counter() - t0
    settings = Settings.for_model(model, n_threads=a.threads, width=a.size, height=a.size, steps=a.steps)
    body = {"prompt": "a lighthouse at dusk", "width": a.size, "height": a.size, "steps": a.steps}
    url = f"http://127.0.0.1:{port}"
    runs = []
    try:
        for replicas in (1, 2):
            t0 = time.perf_counter()
            serve.run(rayserve.application(settings, replicas=replicas, num_cpus=1), name=rayserve.APP_NAME,
                      route_prefix="/")
            deploy_s = time.perf_counter() - t0
            asyncio.run(send(url, replicas, replicas, body))  # warm-up: one request per replica
            wall, lat, errors = asyncio.run(send(url, a.requests, a.clients, body))
            run = {"replicas": replicas, "threads_per_replica": a.threads, "requests": a.requests,
                   "clients": a.clients, "errors": len(errors), "error_samples": errors[:5], "deploy_s": round(deploy_s, 2), "wall_s": round(wall, 3),
                   "throughput_rps": round(a.requests / wall, 4), "p50_s": round(percentile(lat, 0.5), 3),
                   "p95_s": round(percentile(lat, 0.95), 3)}
            print(json.dumps(run), flush=True)
            runs.append(run)
            serve.delete(rayserve.APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
    out = {"bench": "server_ray", "commit": git_commit(), "machine": machine(),
           "command": " ".join(["python3 -P bench/server_ray.py", *sys.argv[1:]]),
           "request": {"endpoint": "POST /sdapi/v1/txt2img", **body}, "ray": ray.__version__,
           "ray_start_s": round(ray_start_s, 2), "runs": runs,
           "speedup_2_vs_1": round(runs[1]["throughput_rps"] / runs[0]["throughput_rps"], 3)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    plot(out, a.out.with_suffix(".png"))
    print(f"wrote {a.out}; 2 replicas / 1 replica = {out['speedup_2_vs_1']}x")
    return 0 if all(r["errors"] == 0 for r in runs) else 1


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = out["runs"]
    labels = [f"{r['replicas']} replica{'s' if r['replicas'] > 1 else ''}" for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.bar(labels, [r["throughput_rps"] for r in runs], color=["#888", "#3b6fd8"])
    ax1.set(ylabel="images / s", title=f"throughput ({out['speedup_2_vs_1']}x)")
    ax2.bar([x + " p50" for x in labels], [r["p50_s"] for r in runs], color="#888")
    ax2.bar([x + " p95" for x in labels], [r["p95_s"] for r in runs], color="#3b6fd8")
    ax2.set(ylabel="latency (s)", title="latency")
    ax2.tick_params(axis="x", labelsize=8)
    req = out["request"]
    fig.suptitle(f"pysdcpp-server on Ray Serve, CPU ({out['machine']['cores']} cores), {req['width']}x{req['height']} "
                 f"{req['steps']} steps, {runs[0]['requests']} requests, {runs[0]['clients']} clients, "
                 f"commit {out['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)

if __name__ == "__main__":
    sys.exit(main())
