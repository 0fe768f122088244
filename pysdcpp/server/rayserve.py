"""pysdcpp-server on Ray Serve: the same ASGI app, its jobs run on N replicas that each hold
one :class:`pysdcpp.Context` (one GPU each, or a slice of CPUs), and a batch path that
sends many prompts to those replicas and writes images plus a JSONL of their parameters.

Two deployments:

* ``Generator`` (``num_replicas`` N, ``num_gpus``/``num_cpus`` per replica,
  ``max_ongoing_requests`` 1): loads the model once per replica and runs one job at a time
  through the same :class:`~pysdcpp.server.jobs.LocalBackend` as ``pysdcpp-server``; it
  streams progress back and stops sd.cpp (``Context.cancel()``) when the caller cancels.
* ``Ingress`` (one replica, no GPU): :func:`~pysdcpp.server.app.create_app` with a backend
  that sends each job to a Generator replica, so the job queue, its limits and the async
  job table live in one place (a poll finds its job whatever the replica that ran it).

Run (a local cluster, or ``--address`` of a running one; see README "Scale-out on Ray")::

    python -m pysdcpp.server.rayserve -m sd15.safetensors --replicas 2 --replica-cpus 1 -t 1
    python -m pysdcpp.server.rayserve batch prompts.jsonl out/ -m sd15.safetensors --replicas 2
    serve run pysdcpp.server.rayserve:build argv="-m /models/sd15.safetensors" replicas=8 replica_gpus=1
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from ray import serve

from . import generation
from .jobs import LocalBackend
from .settings import Settings

APP_NAME = "pysdcpp"


@serve.deployment(max_ongoing_requests=1)
class Generator:
    """One model in one replica; jobs one at a time."""

    def __init__(self, settings: Settings):
        import pysdcpp

        self.context = pysdcpp.Context(**settings.context_kwargs())
        self.backend = LocalBackend(self.context, generation.execute)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    async def run(self, spec):
        """Stream ``("progress", step, steps)`` events, then ``("result", images, worker)``."""
        events: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(self.backend.run(spec, lambda s, n: events.put_nowait(("progress", s, n))))
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not events.empty():
                    yield events.get_nowait()
                yield ("result", task.result(), self.worker)
                return
        finally:  # the caller cancelled (or went away): stop sd.cpp, wait for it
            if not task.done():
                task.cancel()
                await asyncio.wait({task})

    def __del__(self):
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()
            self.context.close()


class RayBackend:
    """The job queue's backend in the Ingress: each job goes to a Generator replica."""

    def __init__(self, handle, concurrency: int):
        self.handle = handle
        self.concurrency = concurrency

    async def run(self, spec, on_progress):
        stream = self.handle.options(stream=True).run.remote(spec)
        try:
            async for event in stream:
                if event[0] == "progress":
                    on_progress(event[1], event[2])
                else:
                    return event[1]
            raise RuntimeError("the replica ended the job without a result")
        except asyncio.CancelledError:
            stream.cancel()
            raise

    def close(self) -> None:
        pass


@serve.deployment(max_ongoing_requests=1024)
@serve.ingress()
class Ingress:
    """pysdcpp-server's ASGI app, its jobs sent to the Generator replicas."""

    def __init__(self, settings: Settings, generator, replicas: int):
        self.settings = settings
        self.backend = RayBackend(generator, replicas)

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self.settings, backend=self.backend)


def _actor_options(num_gpus: float | None, num_cpus: float | None) -> dict:
    opts = {}
    if num_gpus:
        opts["num_gpus"] = num_gpus
    if num_cpus is not None:
        opts["num_cpus"] = num_cpus
    return opts


def generator(settings: Settings, replicas: int = 1, num_gpus: float | None = None,
              num_cpus: float | None = None):
    """The Generator deployment alone (the batch path's target)."""
    return Generator.options(num_replicas=replicas, ray_actor_options=_actor_options(num_gpus, num_cpus)).bind(settings)


def application(settings: Settings, replicas: int = 1, num_gpus: float | None = None,
                num_cpus: float | None = None):
    """The HTTP application: Ingress in front of `replicas` Generators."""
    gen = generator(settings, replicas, num_gpus, num_cpus)
    return Ingress.options(ray_actor_options={"num_cpus": 0}).bind(settings, gen, replicas)


def build(args: dict):
    """``serve run``/``serve deploy`` builder: ``argv`` is pysdcpp-server's command line;
    ``replicas``, ``replica_gpus``, ``replica_cpus`` size the Generator deployment."""
    from . import settings as settings_mod

    settings = settings_mod.parse(shlex.split(args.get("argv", "")))
    return application(settings, int(args.get("replicas", 1)),
                       float(args["replica_gpus"]) if "replica_gpus" in args else None,
                       float(args["replica_cpus"]) if "replica_cpus" in args else None)


# --- the batch path ----------------------------------------------------------------------------------
async def run_batch(handle, settings: Settings, requests: list[dict], out_dir: Path) -> list[dict]:
    """Send every request (the native schema of ``POST /sdcpp/v1/img_gen``) to the Generator
    replicas at once (Serve queues them, one per replica at a time); write each image as
    ``<index>[_<n>].<format>`` and one JSONL line per image to ``params.jsonl``."""
    from .app import ServerState
    from .sdcpp import KINDS

    state = ServerState(settings, backend=None)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = [KINDS["img_gen"].parse(state, body) for body in requests]  # all checked before any runs
    rows: list[dict] = []

    async def one(index: int, body: dict, spec):
        t0 = time.monotonic()
        images, worker = None, None
        async for event in handle.options(stream=True).run.remote(spec):
            if event[0] == "result":
                images, worker = event[1], event[2]
        seconds = time.monotonic() - t0
        ext = "jpg" if spec.output_format == "jpeg" else spec.output_format
        for n, data in enumerate(images):
            name = f"{index:06d}.{ext}" if len(images) == 1 else f"{index:06d}_{n}.{ext}"
            (out_dir / name).write_bytes(data)
            rows.append({"index": index, "image": n, "file": name, "seed": spec.p["seed"] + n,
                         "request": body, "parameters": generation.cli.image_parameters(spec.p, spec.p["seed"] + n),
                         "worker": worker, "seconds": round(seconds, 3)})

    await asyncio.gather(*(one(i, body, spec) for i, (body, spec) in enumerate(zip(requests, specs))))
    rows.sort(key=lambda r: (r["index"], r["image"]))
    with open(out_dir / "params.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows


def read_prompts(path: Path) -> list[dict]:
    """One request per line: a JSON object of the native schema, or a JSON string (the prompt)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        value = json.loads(line)
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object or string")
        out.append(value)
    return out


def main(argv: list[str] | None = None) -> int:
    from .. import cli
    from . import settings as settings_mod

    argv = list(sys.argv[1:] if argv is None else argv)
    batch = bool(argv) and argv[0] == "batch"
    parser = argparse.ArgumentParser(prog="python -m pysdcpp.server.rayserve", add_help=False)
    if batch:
        argv = argv[1:]
        parser.add_argument("prompts", type=Path)
        parser.add_argument("out", type=Path)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--replica-gpus", type=float, default=None)
    parser.add_argument("--replica-cpus", type=float, default=None)
    parser.add_argument("--address", default=None, help="a running Ray cluster (ray start --head); "
                        "default: start a local one")
    ours, rest = parser.parse_known_args(argv)
    try:
        settings = settings_mod.parse(rest)
    except cli.UsageError as exc:
        print(f"pysdcpp-server (ray): error: {exc}", file=sys.stderr)
        return 2
    import ray

    ray.init(address=ours.address)
    if batch:
        handle = serve.run(generator(settings, ours.replicas, ours.replica_gpus, ours.replica_cpus),
                           name=f"{APP_NAME}-batch", route_prefix=None)
        rows = asyncio.run(run_batch(handle, settings, read_prompts(ours.prompts), ours.out))
        print(f"{len(rows)} images written to {ours.out} (params.jsonl)")
        serve.delete(f"{APP_NAME}-batch")
        return 0
    serve.start(http_options={"host": settings.listen_ip, "port": settings.listen_port})
    serve.run(application(settings, ours.replicas, ours.replica_gpus, ours.replica_cpus), name=APP_NAME,
              route_prefix="/", blocking=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
