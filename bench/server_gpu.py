#!/usr/bin/env python3
"""pysdcpp-server's overhead on the GPU: 20 sequential requests to the server with a streamed
Flux-dev-shaped model against the same 20 generations through the Python API.

    python3 bench/stream.py prepare --models /tmp/pysdcpp-models --workloads w1    # once (bench/device.sh models)
    python3 bench/server_gpu.py --models /tmp/pysdcpp-models --out /tmp/out/server_gpu.json

Both sides run in their own fresh process, one after the other, with the same context
(W1 of bench/stream.py: FLUX.1-dev-shaped bf16 DiT, CLIP-L, T5-XXL, VAE; diffusion flash
attention) and pysdcpp's streaming (``--offload-to-cpu --max-vram 8 --stream-layers``),
1024x1024, 4 steps, euler, cfg 1, seeds 42..61; one untimed warm-up each.

* ``api``: ``ctx.txt2img`` per image, timed around the call; also timed with the PNG encoding a
  caller does to keep the image (the server encodes every image as PNG).
* ``server``: ``pysdcpp-server`` on 127.0.0.1, ``POST /sdapi/v1/txt2img`` sent with urllib
  (no third-party client on the GPU machine), timed from send to the decoded JSON.

Why 1024x1024 and 4 steps: Flux's own resolution, where streaming at 8 GiB is what the patch
is for; 4 steps keep each image near 3 s on the H200 (about 2 min per side with loading),
still long enough that a 2% overhead (~60 ms) stands well above the run-to-run noise.
The first images of both sides must be the same pixels.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import stream  # noqa: E402  (bench/stream.py: W1's files, context and generation values)

W1 = stream.WORKLOADS["w1"]
STREAMING = dict(offload_params_to_cpu=True, max_vram=8, stream_layers=True)
STEPS, SIZE, N = 4, 1024, 20
FLAGS = {"model": "-m", "diffusion_model": "--diffusion-model", "clip_l": "--clip_l", "t5xxl": "--t5xxl",
         "vae": "--vae"}


def context_kwargs(models: Path) -> dict:
    return {**{k: str(models / v) for k, v in W1["files"].items()}, **W1["ctx"], **STREAMING}


def server_args(models: Path) -> list[str]:
    """The same context as pysdcpp-server's (sd-server's) command line."""
    args = [x for k, v in W1["files"].items() for x in (FLAGS[k], str(models / v))]
    if W1["ctx"].get("diffusion_flash_attn"):
        args.append("--diffusion-fa")
    return args + ["--offload-to-cpu", "--max-vram", str(STREAMING["max_vram"]), "--stream-layers"]


def gen_values(i: int) -> dict:
    g = W1["gen"]
    return dict(width=SIZE, height=SIZE, steps=STEPS, seed=42 + i, cfg_scale=g["cfg_scale"],
                **({"guidance": g["guidance"]} if "guidance" in g else {}), sampling_method=g["sampling_method"])


def run_api(models: Path, n: int) -> dict:
    import numpy as np

    import pysdcpp

    t0 = time.perf_counter()
    ctx = pysdcpp.Context(**context_kwargs(models))
    load_s = time.perf_counter() - t0
    prompt = W1["gen"]["prompt"]
    ctx.txt2img(prompt, **gen_values(-1))  # warm-up
    gen, gen_png, first = [], [], None
    for i in range(n):
        t0 = time.perf_counter()
        image, = ctx.txt2img(prompt, **gen_values(i))
        t1 = time.perf_counter()
        buf = io.BytesIO()
        image.save(buf, "PNG")
        t2 = time.perf_counter()
        gen.append(t1 - t0)
        gen_png.append(t2 - t0)
        if i == 0:
            first = np.asarray(image.convert("RGB"))
    np.save(os.environ["SERVER_GPU_FIRST"], first)
    return {"load_s": round(load_s, 2), "per_image_s": [round(x, 4) for x in gen],
            "per_image_with_png_s": [round(x, 4) for x in gen_png]}


def post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def run_server(models: Path, n: int, log: Path) -> dict:
    import numpy as np
    from PIL import Image

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-P", "-m", "pysdcpp.server", *server_args(models), "--listen-port", str(port)]
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"pysdcpp-server exited with {proc.returncode}; see {log}")
                try:
                    urllib.request.urlopen(url + "/v1/models", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.5)
            load_s = time.perf_counter() - t0

            def body(i):
                g = gen_values(i)
                return {"prompt": W1["gen"]["prompt"], "width": g["width"], "height": g["height"], "steps": g["steps"],
                        "seed": g["seed"], "cfg_scale": g["cfg_scale"], "sampler_name": g["sampling_method"]}
            post(url + "/sdapi/v1/txt2img", body(-1))  # warm-up
            times, first = [], None
            for i in range(n):
                t0 = time.perf_counter()
                r = post(url + "/sdapi/v1/txt2img", body(i))
                data = base64.b64decode(r["images"][0])
                times.append(time.perf_counter() - t0)
                if i == 0:
                    with Image.open(io.BytesIO(data)) as im:
                        first = np.asarray(im.convert("RGB"))
        finally:
            proc.terminate()
            proc.wait(120)
    return {"load_s": round(load_s, 2), "per_image_s": [round(x, 4) for x in times], "command": cmd,
            "first": first}


def summary(xs: list[float]) -> dict:
    return {"median_s": round(statistics.median(xs), 4), "mean_s": round(statistics.mean(xs), 4),
            "min_s": round(min(xs), 4), "max_s": round(max(xs), 4), "n": len(xs)}


def main() -> int:
    global W1, SIZE, STEPS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("MODELS", "/tmp/pysdcpp-models")))
    ap.add_argument("--out", type=Path, default=Path("/tmp/out/server_gpu.json"))
    ap.add_argument("-n", type=int, default=N)
    ap.add_argument("--workload", default="w1", help="a bench/stream.py workload (smoke: SD 1.5, a CPU check)")
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--side", choices=("api",), help=argparse.SUPPRESS)  # the child process
    a = ap.parse_args()
    W1, SIZE, STEPS = stream.WORKLOADS[a.workload], a.size, a.steps
    if a.side == "api":
        print(json.dumps(run_api(a.models, a.n)))
        return 0
    import numpy as np

    a.out.parent.mkdir(parents=True, exist_ok=True)
    first = a.out.with_suffix(".api_first.npy")
    result = {"bench": "server_gpu", "commit": stream.git_commit(), "machine": stream.machine(),
              "command": " ".join(["python3 bench/server_gpu.py", *sys.argv[1:]]),
              "workload": {"name": a.workload, "files": W1["files"], "ctx": {**W1["ctx"], **STREAMING},
                           **gen_values(0), "n": a.n}}
    # each side in its own process, so that neither inherits the other's allocations
    env = dict(os.environ, SERVER_GPU_FIRST=str(first))
    r = subprocess.run([sys.executable, __file__, "--side", "api", "--models", str(a.models), "-n", str(a.n),
                        "--workload", a.workload, "--size", str(a.size), "--steps", str(a.steps)],
                       capture_output=True, text=True, env=env, timeout=1200)
    if r.returncode != 0:
        result["api_error"] = r.stderr[-3000:]
        a.out.write_text(json.dumps(result, indent=1))
        print(r.stderr[-3000:], file=sys.stderr)
        return 1
    api = json.loads(r.stdout.strip().splitlines()[-1])
    server = run_server(a.models, a.n, a.out.with_suffix(".server.log"))
    server_first = server.pop("first")
    result.update(api={**api, "generate": summary(api["per_image_s"]),
                       "generate_and_png": summary(api["per_image_with_png_s"])},
                  server={**server, **summary(server["per_image_s"])})
    med_server = result["server"]["median_s"]
    result["overhead_vs_generate"] = round(med_server / result["api"]["generate"]["median_s"] - 1, 4)
    result["overhead_vs_generate_and_png"] = round(med_server / result["api"]["generate_and_png"]["median_s"] - 1, 4)
    result["first_image_pixels_equal"] = bool(np.array_equal(np.load(first), server_first))
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("overhead_vs_generate", "overhead_vs_generate_and_png",
                                             "first_image_pixels_equal")}))
    print(f"server median {med_server} s/image; api {result['api']['generate']['median_s']} "
          f"(with PNG {result['api']['generate_and_png']['median_s']}); wrote {a.out}")
    return 0 if result["first_image_pixels_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
