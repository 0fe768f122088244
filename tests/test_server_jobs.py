"""The job queue through HTTP: progress, cancellation (queued, generating, many at once),
a full queue, expiry, and clients that go away; afterwards the context still gives the
Python API's pixels.  The app runs under uvicorn in a thread on the session's context."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import numpy as np
import pytest

from conftest import THREADS
from server_helpers import ThreadServer, decode

SLOW = 24  # steps of a job that must still be running while the test acts on it


@pytest.fixture(scope="module")
def make_server(ctx, sd15_path):
    from pysdcpp.server import Settings, create_app

    def make(**values):
        settings = Settings.for_model(sd15_path, n_threads=THREADS, width=64, height=64, steps=2, **values)
        return ThreadServer(create_app(settings, context=ctx))
    return make


@pytest.fixture(scope="module")
def server(make_server):
    with make_server() as s:
        yield s


def submit(url: str, prompt: str = "a lighthouse", steps: int = 2, seed: int = 1) -> dict:
    r = httpx.post(url + "/sdcpp/v1/img_gen",
                   json={"prompt": prompt, "seed": seed, "sample_params": {"sample_steps": steps}}, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()


def job(url: str, job_id: str) -> dict:
    r = httpx.get(f"{url}/sdcpp/v1/jobs/{job_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(url: str, job_id: str, pred, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = job(url, job_id)
        if pred(j):
            return j
        time.sleep(0.05)
    raise TimeoutError(job(url, job_id))


def finished(j) -> bool:
    return j["status"] in ("completed", "failed", "cancelled")


def generating(j) -> bool:
    return j["status"] == "generating" and j["progress"]["step"] >= 1


def api_pixels(ctx, prompt="a lighthouse", steps=2, seed=1):
    """The same generation through the Python API."""
    return np.asarray(ctx.txt2img(prompt, width=64, height=64, steps=steps, seed=seed)[0].convert("RGB"))


def test_progress_then_result_with_the_python_apis_pixels(server, ctx):
    j = submit(server.url, steps=5, seed=8)
    assert j["status"] == "queued" and j["poll_url"] == f"/sdcpp/v1/jobs/{j['id']}"
    seen = []
    while True:
        cur = job(server.url, j["id"])
        if cur["status"] == "generating":
            seen.append((cur["progress"]["step"], cur["progress"]["steps"], cur["progress"]["elapsed"]))
        if finished(cur):
            break
        time.sleep(0.02)
    assert cur["status"] == "completed" and cur["error"] is None and cur["queue_position"] == 0
    assert cur["started"] is not None and cur["completed"] >= cur["started"]
    steps = [s for s, n, _ in seen if n == 5]
    assert steps and steps == sorted(steps) and max(steps) >= 1, seen
    assert all(e2 >= e1 for (_, _, e1), (_, _, e2) in zip(seen, seen[1:])), "elapsed must grow"
    assert cur["progress"]["step"] == 5 and cur["progress"]["elapsed"] > 0
    assert np.array_equal(decode(cur["result"]["images"][0]["b64_json"]), api_pixels(ctx, steps=5, seed=8))


def test_cancel_a_generating_job_then_generate_again(server, ctx):
    j = submit(server.url, steps=SLOW)
    wait_for(server.url, j["id"], generating)
    t0 = time.monotonic()
    r = httpx.post(f"{server.url}/sdcpp/v1/jobs/{j['id']}/cancel", timeout=60)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert r.json()["error"] == {"code": "cancelled", "message": "job cancelled by client"}
    assert r.json()["progress"]["step"] < SLOW, "the job stopped before its last step"
    assert time.monotonic() - t0 < 30
    after = wait_for(server.url, submit(server.url, seed=2)["id"], finished)
    assert after["status"] == "completed"
    assert np.array_equal(decode(after["result"]["images"][0]["b64_json"]), api_pixels(ctx, seed=2))


def test_cancel_a_queued_job_and_cancel_twice(server):
    running = submit(server.url, steps=SLOW)
    queued = submit(server.url, seed=3)
    q = job(server.url, queued["id"])
    assert q["status"] == "queued" and q["queue_position"] == 1
    r = httpx.post(f"{server.url}/sdcpp/v1/jobs/{queued['id']}/cancel")
    assert r.status_code == 200
    c = r.json()
    assert (c["status"], c["started"], c["queue_position"], c["result"]) == ("cancelled", None, 0, None)
    again = httpx.post(f"{server.url}/sdcpp/v1/jobs/{queued['id']}/cancel")  # a finished job: its state
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    httpx.post(f"{server.url}/sdcpp/v1/jobs/{running['id']}/cancel", timeout=60)
    assert wait_for(server.url, running["id"], finished)["status"] == "cancelled"
    assert job(server.url, queued["id"])["started"] is None, "a cancelled queued job never runs"


def test_many_concurrent_cancels_of_one_job(server):
    j = submit(server.url, steps=SLOW)
    wait_for(server.url, j["id"], generating)

    async def cancel_all():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{server.url}/sdcpp/v1/jobs/{j['id']}/cancel")
                                          for _ in range(12)))
    responses = asyncio.run(cancel_all())
    assert [r.status_code for r in responses] == [200] * 12
    assert {r.json()["status"] for r in responses} == {"cancelled"}
    assert job(server.url, j["id"])["status"] == "cancelled"
    done = submit(server.url, seed=4)
    assert wait_for(server.url, done["id"], finished)["status"] == "completed"
    r = httpx.post(f"{server.url}/sdcpp/v1/jobs/{done['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "completed", "cancelling a finished job changes nothing"


def test_unknown_jobs(server):
    for method, path in (("GET", "/sdcpp/v1/jobs/job_0_00000000"), ("POST", "/sdcpp/v1/jobs/nope/cancel")):
        r = httpx.request(method, server.url + path)
        assert r.status_code == 404 and r.json() == {"error": "job not found"}


def test_full_queue_is_429_for_every_family(make_server):
    with make_server(max_queue_size=2) as s:
        jobs = [submit(s.url, steps=SLOW), submit(s.url, steps=SLOW)]
        for path, body in (("/sdcpp/v1/img_gen", {"prompt": "x"}), ("/v1/images/generations", {"prompt": "x"}),
                           ("/sdapi/v1/txt2img", {"prompt": "x"})):
            r = httpx.post(s.url + path, json=body, timeout=30)
            assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
            assert "queue is full" in r.json()["error"]
        for j in jobs:
            httpx.post(f"{s.url}/sdcpp/v1/jobs/{j['id']}/cancel", timeout=60)
        assert wait_for(s.url, submit(s.url)["id"], finished)["status"] == "completed"


def test_finished_jobs_expire_to_410(make_server):
    with make_server(job_ttl=1) as s:
        j = submit(s.url, steps=1)
        wait_for(s.url, j["id"], finished)
        time.sleep(1.2)
        for method, path in (("GET", f"/sdcpp/v1/jobs/{j['id']}"), ("POST", f"/sdcpp/v1/jobs/{j['id']}/cancel")):
            r = httpx.request(method, s.url + path)
            assert r.status_code == 410 and r.json() == {"error": "job expired"}


def _open_sync_request(url: str, path: str, body: dict) -> socket.socket:
    """Send a request on a raw socket and leave it waiting for its answer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _sync_job(app_state, status: str):
    return next((j for j in app_state.jobs.jobs.values() if not j.keep and j.status == status), None)


@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/v1/images/generations"])
def test_a_client_that_goes_away_loses_only_its_own_job(server, ctx, path):
    state = server.server.config.app.state.server
    before = state.jobs.counts["cancelled"]
    body = ({"prompt": "gone", "steps": SLOW, "seed": 1, "width": 64, "height": 64} if "sdapi" in path else
            {"prompt": "gone <sd_cpp_extra_args>{\"sample_params\": {\"sample_steps\": %d}}</sd_cpp_extra_args>"
                       % SLOW})
    sock = _open_sync_request(server.url, path, body)
    deadline = time.monotonic() + 120
    while (gone := _sync_job(state, "generating")) is None or gone.step < 1:
        assert time.monotonic() < deadline, "the request never started generating"
        time.sleep(0.05)
    queued_sync = _open_sync_request(server.url, "/sdapi/v1/txt2img", {"prompt": "stays", "steps": 2, "seed": 6,
                                                                        "width": 64, "height": 64})
    other = submit(server.url, seed=5)  # queued behind the client that will go away
    sock.close()
    done = wait_for(server.url, other["id"], finished)
    assert done["status"] == "completed"
    assert state.jobs.counts["cancelled"] == before + 1, "the abandoned job was cancelled"
    assert gone.status == "cancelled" and gone.step < SLOW
    assert np.array_equal(decode(done["result"]["images"][0]["b64_json"]), api_pixels(ctx, seed=5))
    # the other waiting client still gets its answer
    import http.client

    queued_sync.settimeout(120)
    reply = http.client.HTTPResponse(queued_sync)
    reply.begin()
    assert reply.status == 200
    image = json.loads(reply.read())["images"][0]
    queued_sync.close()
    assert np.array_equal(decode(image), np.asarray(
        ctx.txt2img("stays", width=64, height=64, steps=2, seed=6)[0].convert("RGB")))


def test_a_client_that_goes_away_while_queued_never_runs(server):
    state = server.server.config.app.state.server
    blocker = submit(server.url, steps=SLOW)
    wait_for(server.url, blocker["id"], generating)
    before = dict(state.jobs.counts)
    sock = _open_sync_request(server.url, "/sdapi/v1/txt2img", {"prompt": "never", "steps": 2})
    deadline = time.monotonic() + 30
    while _sync_job(state, "queued") is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    queued = _sync_job(state, "queued")
    sock.close()
    while queued.status == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert queued.status == "cancelled" and queued.started is None
    httpx.post(f"{server.url}/sdcpp/v1/jobs/{blocker['id']}/cancel", timeout=60)
    assert state.jobs.counts["completed"] == before.get("completed", 0)
