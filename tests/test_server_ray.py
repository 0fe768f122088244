"""pysdcpp-server on a local Ray cluster (CPU): two Generator replicas, each with its own
context, serve the same requests as one server (the Python API's pixels); the batch path
writes the images and a JSONL of their parameters, and both replicas did work."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from server_helpers import decode, free_port

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'pysdcpp[ray]')")

PROMPTS = [{"prompt": f"a lighthouse, version {i}", "seed": 100 + i, "sample_params": {"sample_steps": 2}}
           for i in range(4)]


@pytest.fixture(scope="module")
def cluster(sd15_path, tmp_path_factory):
    import os

    from ray import serve

    from pysdcpp.server import Settings, rayserve

    t0 = time.monotonic()
    # Ray puts the driver's working directory on its workers' sys.path: from the checkout they would
    # import its uncompiled pysdcpp/ instead of the installed package
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray-cwd"))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False,
             configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = Settings.for_model(sd15_path, n_threads=1, width=64, height=64, steps=2)
    serve.run(rayserve.application(settings, replicas=2, num_cpus=1), name=rayserve.APP_NAME, route_prefix="/")
    print(f"ray + serve + 2 replicas ready in {time.monotonic() - t0:.1f} s")
    try:
        yield f"http://127.0.0.1:{port}", settings
    finally:
        serve.shutdown()
        ray.shutdown()
        os.chdir(cwd)


def expected(ctx, body) -> np.ndarray:
    return np.asarray(ctx.txt2img(body["prompt"], width=64, height=64, steps=2, seed=body["seed"])[0].convert("RGB"))


def test_two_replicas_serve_the_same_pixels_as_one_server(cluster, ctx):
    url, _ = cluster

    async def send_all():
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            jobs = [(await client.post("/sdcpp/v1/img_gen", json=b)).json() for b in PROMPTS]
            sync = client.post("/sdapi/v1/txt2img", json={"prompt": PROMPTS[0]["prompt"], "seed": PROMPTS[0]["seed"],
                                                          "steps": 2, "width": 64, "height": 64})
            sync_response = await sync
            done = []
            for job in jobs:
                while True:
                    j = (await client.get(job["poll_url"])).json()
                    if j["status"] in ("completed", "failed", "cancelled"):
                        done.append(j)
                        break
                    await asyncio.sleep(0.1)
            return done, sync_response
    done, sync = asyncio.run(send_all())
    for body, job in zip(PROMPTS, done):
        assert job["status"] == "completed", job
        assert np.array_equal(decode(job["result"]["images"][0]["b64_json"]), expected(ctx, body))
    assert sync.status_code == 200
    assert np.array_equal(decode(sync.json()["images"][0]), expected(ctx, PROMPTS[0]))
    caps = httpx.get(url + "/sdcpp/v1/capabilities").json()
    assert caps["limits"]["max_queue_size"] == 64 and "euler_a" in caps["samplers"]


def test_a_generating_job_on_a_replica_can_be_cancelled(cluster):
    url, _ = cluster
    job = httpx.post(url + "/sdcpp/v1/img_gen", json={"prompt": "long", "sample_params": {"sample_steps": 30}}).json()
    deadline = time.monotonic() + 120
    while (j := httpx.get(url + job["poll_url"]).json())["progress"]["step"] < 1:
        assert time.monotonic() < deadline, j
        time.sleep(0.1)
    r = httpx.post(url + job["poll_url"] + "/cancel", timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    ok = httpx.post(url + "/v1/images/generations", json={"prompt": "after", "size": "64x64"}, timeout=300)
    assert ok.status_code == 200


def test_batch_path_writes_images_and_jsonl(cluster, ctx, tmp_path):
    from ray import serve

    from pysdcpp.server import rayserve

    _, settings = cluster
    handle = serve.get_deployment_handle("Generator", app_name=rayserve.APP_NAME)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in PROMPTS) + "\n" + json.dumps("just a prompt") + "\n")
    requests = rayserve.read_prompts(prompts)
    assert requests[-1] == {"prompt": "just a prompt"}
    rows = asyncio.run(rayserve.run_batch(handle, settings, requests[:4], tmp_path / "out"))
    lines = [json.loads(line) for line in (tmp_path / "out" / "params.jsonl").read_text().splitlines()]
    assert lines == rows and [r["index"] for r in rows] == [0, 1, 2, 3]
    for body, row in zip(PROMPTS, rows):
        assert row["request"] == body and row["seed"] == body["seed"] and row["file"].endswith(".png")
        assert f"Seed: {body['seed']}" in row["parameters"]
        with Image.open(tmp_path / "out" / row["file"]) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), expected(ctx, body))
            assert im.text["parameters"] == row["parameters"]
    assert len({r["worker"] for r in rows}) == 2, "both replicas generated"
