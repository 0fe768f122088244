"""`pysdcpp-server` against sd-server built from the same patched tree, and against the CLI.

Both servers run on loopback with the same random-weight SD 1.5 and the same command line;
each API family's requests must give the same response shapes, byte-identical decoded
pixels and the same PNG `parameters` text.  The command line is sd-server's: every flag its
--help lists parses, with the same value type.
"""
from __future__ import annotations

import base64
import io
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import THREADS
from cli_helpers import help_flags
from server_helpers import (ProcessServer, assert_shape_covers, decode, image_b64, png_parameters,
                            pysdcpp_server_argv, sd_server_path, shape_of)
from pysdcpp import cli
from pysdcpp.server import settings as settings_mod

needs_sd_server = pytest.mark.skipif(sd_server_path() is None, reason="sd-server was not built with this pysdcpp")


# --- the command line -------------------------------------------------------------------------------
@needs_sd_server
def test_every_sd_server_flag_is_accepted_with_its_type():
    flags = help_flags(sd_server_path())
    assert len(flags) > 100, "could not parse sd-server --help"
    missing, wrong = [], []
    for names, hint in flags:
        for name in names:
            opt = settings_mod.BY_NAME.get(name)
            if opt is None:
                missing.append(name)
            elif hint and opt.kind != hint:
                wrong.append(f"{name}: sd-server <{hint}>, pysdcpp-server {opt.kind}")
        if len(names) == 2:
            assert settings_mod.BY_NAME[names[0]] is settings_mod.BY_NAME[names[1]], names
    assert not missing, f"pysdcpp-server does not accept: {missing}"
    assert not wrong, wrong
    # and nothing sd-cli-only (output files, run modes, previews) is taken
    for flag in ("-o", "--mode", "--preview", "--canny", "--output-begin-idx"):
        assert flag not in settings_mod.BY_NAME, flag


def test_context_and_defaults_follow_the_cli_table(tmp_path):
    argv = ["-m", "model.safetensors", "-t", "3", "--offload-to-cpu", "--max-vram", "-1.5", "--stream-layers",
            "--stream-prefetch-depth", "2", "--no-stream-residency", "--no-pin-params", "-W", "128",
            "--steps", "7", "--cfg-scale", "5", "--sampling-method", "euler", "-s", "-1",
            "--listen-port", "8081", "-l", "0.0.0.0", "--max-steps", "50", "--max-queue-size", "3"]
    s = settings_mod.parse(argv)
    p_cli, _ = cli.parse_args([a for a in argv[:argv.index("--listen-port")]])
    kw = s.context_kwargs()
    assert kw == {**cli._context_kwargs({**p_cli, "n_threads": 3}, False), "free_params_immediately": False}
    assert (kw["vae_decode_only"], kw["free_params_immediately"]) == (False, False)  # sd-server's choice
    assert (s.listen_ip, s.listen_port, s.max_steps, s.max_queue_size) == ("0.0.0.0", 8081, 50, 3)
    d = s.default_request()
    assert (d["width"], d["steps"], d["cfg_scale"], d["seed"]) == (128, 7, 5.0, -1)
    assert d["sampling_method"] == cli.BY_NAME["--sampling-method"].parse("euler")


@pytest.mark.parametrize("argv, message", [
    (["-m", "m", "--frobnicate"], "unknown argument"),
    (["-m", "m", "-o", "out.png"], "unknown argument: -o"),
    (["-m", "m", "--listen-port", "70000"], "listen_port"),
    (["-m", "m", "--listen-port", "x"], "--listen-port"),
    (["-m", "m", "--serve-html-path", "/nonexistent/index.html"], "serve_html_path"),
    (["-p", "x"], "model_path"),
    (["-m", "m", "--max-steps", "0"], "--max-steps"),
    (["-m", "m", "--steps", "0"], "sample_steps"),
    (["-m", "m", "--sampling-method", "nope"], "sample method"),
    (["-m", "m", "--video-frames", "9"], "--video-frames"),
])
def test_bad_command_lines_exit_2_with_one_line(argv, message, capsys):
    from pysdcpp.server import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pysdcpp-server: error:") and message in err[0], err


def test_help_version_and_a_model_that_does_not_load(tmp_path):
    r = subprocess.run([*pysdcpp_server_argv(), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for title in ("Svr Options:", "Context Options:", "Default Generation Options:", "pysdcpp-server Limits:"):
        assert title in r.stdout
    assert "--listen-port" in r.stdout and "--stream-layers" in r.stdout and "--max-body-size" in r.stdout
    r = subprocess.run([*pysdcpp_server_argv(), "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "stable-diffusion.cpp" in r.stdout
    r = subprocess.run([*pysdcpp_server_argv(), "-m", str(tmp_path / "missing.safetensors")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("pysdcpp-server: error:")


def test_flags_sd_server_ignores_are_accepted_with_a_warning(caplog):
    s = settings_mod.parse(["-m", "m", "-i", "init.png", "--upscale-repeats", "2"])
    assert s.init_image_path == "" and s.upscale_repeats == 1
    assert sum("has no effect" in r.getMessage() for r in caplog.records) == 2


# --- the same requests to both servers ----------------------------------------------------------------
@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("server")
    (d / "cwd").mkdir()
    (d / "loras" / "style").mkdir(parents=True)
    (d / "loras" / "style" / "ink.safetensors").write_bytes(b"not a real lora")
    (d / "loras" / "glow.gguf").write_bytes(b"x")
    (d / "upscalers").mkdir()
    (d / "upscalers" / "4x_test.pth").write_bytes(b"x")
    return d


@pytest.fixture(scope="module")
def servers(sd15_path, dirs):
    """(ours, sd-server's) base URLs, started with the same command line."""
    args = ["-m", str(sd15_path), "-t", str(THREADS), "-W", "64", "-H", "64", "--steps", "2",
            "--lora-model-dir", str(dirs / "loras"), "--hires-upscalers-dir", str(dirs / "upscalers")]
    ours = ProcessServer([*pysdcpp_server_argv(), *args], dirs / "pysdcpp-server.log", cwd=dirs / "cwd")
    ref = None
    if sd_server_path() is not None:
        ref = ProcessServer([str(sd_server_path()), *args], dirs / "sd-server.log", cwd=dirs / "cwd")
    try:
        ours.wait()
        if ref is not None:
            ref.wait()
        yield ours, ref
    finally:
        if ref is not None:
            ref.stop()
        code = ours.stop()
        # SIGTERM: a graceful shutdown (uvicorn then exits by the signal, as the convention is)
        assert code in (0, -signal.SIGTERM), ours.output()[-3000:]
        assert "listening on: 127.0.0.1:" in ours.output() and "shutting down: cancelling" in ours.output()


def _native_poll(client: httpx.Client, url: str, job: dict, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(url + job["poll_url"])
        assert r.status_code == 200, r.text
        out = r.json()
        if out["status"] in ("completed", "failed", "cancelled"):
            return out
        time.sleep(0.1)
    raise TimeoutError(job)


def _images(path: str, body: dict) -> list[str]:
    if path.startswith("/v1/"):
        return [d["b64_json"] for d in body["data"]]
    if path.startswith("/sdapi/"):
        return body["images"]
    return [i["b64_json"] for i in body["result"]["images"]]


def _call(client: httpx.Client, url: str, case: dict):
    if "files" in case:
        r = client.post(url + case["path"], data=case["data"], files=case["files"])
    else:
        r = client.post(url + case["path"], json=case["json"])
    body = r.json()
    if case["path"].startswith("/sdcpp/") and r.status_code == 202:
        return r.status_code, body, _native_poll(client, url, body)
    return r.status_code, body, None


INIT = image_b64(64, 64, seed=1)
MASK = image_b64(64, 64, seed=2, mode="L")
PROMPT_EXTRA = ('a cat <sd_cpp_extra_args>{"seed": 7, "negative_prompt": "dull", "sample_params": '
                '{"sample_steps": 1, "sample_method": "euler", "scheduler": "karras", '
                '"guidance": {"txt_cfg": 5.0}}}</sd_cpp_extra_args> in a hat')
CASES = {
    "openai-generations-n2": {"path": "/v1/images/generations",
                              "json": {"prompt": "a lighthouse", "n": 2, "size": "64x64"}},
    "openai-generations-extra-args": {"path": "/v1/images/generations",
                                      "json": {"prompt": PROMPT_EXTRA, "output_format": "png"}},
    "openai-edits-mask": {"path": "/v1/images/edits",
                          "data": {"prompt": "an oil painting", "size": "64x64", "n": "1"},
                          "files": [("image[]", ("init.png", base64.b64decode(INIT), "image/png")),
                                    ("mask", ("mask.png", base64.b64decode(MASK), "image/png"))]},
    "sdapi-txt2img": {"path": "/sdapi/v1/txt2img",
                      "json": {"prompt": "a red cube", "negative_prompt": "blurry", "width": 64, "height": 64,
                               "steps": 2, "cfg_scale": 6.5, "seed": 1234, "sampler_name": "Euler a",
                               "scheduler": "karras", "batch_size": 1, "clip_skip": 1,
                               "restore_faces": False, "n_iter": 1}},
    "sdapi-img2img-inpaint": {"path": "/sdapi/v1/img2img",
                              "json": {"prompt": "a house", "init_images": ["data:image/png;base64," + INIT],
                                       "mask": MASK, "inpainting_mask_invert": 1, "denoising_strength": 0.6,
                                       "seed": 5, "sampler_name": "euler", "steps": 2}},
    "sdapi-txt2img-hires": {"path": "/sdapi/v1/txt2img",
                            "json": {"prompt": "a big tree", "seed": 11, "steps": 1, "width": 64, "height": 64,
                                     "enable_hr": True, "hr_upscaler": "Latent (nearest-exact)",
                                     "hr_resize_x": 96, "hr_resize_y": 96, "hr_steps": 1,
                                     "denoising_strength": 0.5}},
    "native-txt2img": {"path": "/sdcpp/v1/img_gen",
                       "json": {"prompt": "a lighthouse at dusk", "negative_prompt": "fog", "seed": 99,
                                "width": 64, "height": 64, "clip_skip": 2,
                                "sample_params": {"sample_method": "dpm++2m", "scheduler": "exponential",
                                                  "sample_steps": 2, "eta": 0.5,
                                                  "guidance": {"txt_cfg": 4.5, "slg": {"scale": 0.0}}},
                                "vae_tiling_params": {"enabled": False}, "output_format": "png"}},
    "native-img2img": {"path": "/sdcpp/v1/img_gen",
                       "json": {"prompt": "a harbour", "seed": 3, "strength": 0.7, "init_image": INIT,
                                "mask_image": "data:image/png;base64," + MASK, "width": 64, "height": 64,
                                "embed_image_metadata": False, "sample_params": {"sample_steps": 2}}},
}


@needs_sd_server
class TestSameAsSdServer:
    @pytest.mark.slow
    @pytest.mark.parametrize("name", list(CASES))
    def test_generation(self, servers, name):
        ours, ref = servers
        case = CASES[name]
        with httpx.Client(timeout=300) as client:
            a_status, a_body, a_job = _call(client, ref.url, case)
            b_status, b_body, b_job = _call(client, ours.url, case)
        assert (b_status, a_status) == (a_status, a_status) and a_status in (200, 202), (a_body, b_body)
        assert_shape_covers(shape_of(b_body), shape_of(a_body))
        if a_job is not None:
            assert (a_job["status"], b_job["status"]) == ("completed", "completed"), (a_job, b_job)
            assert_shape_covers(shape_of(b_job), shape_of(a_job))
            a_body, b_body = a_job, b_job
        if name.startswith("sdapi"):
            assert b_body["parameters"] == a_body["parameters"] == case["json"] and b_body["info"] == ""
        a_imgs, b_imgs = _images(case["path"], a_body), _images(case["path"], b_body)
        assert len(a_imgs) == len(b_imgs) == (2 if name.endswith("n2") else 1)
        for a, b in zip(a_imgs, b_imgs):
            pa, pb = decode(a), decode(b)
            assert pa.shape == pb.shape
            if "hires" in name:  # sd.cpp rounds the hires target (96x96 asked) to its latent grid
                assert pa.shape[0] > 64 and pa.shape[1] > 64
            else:
                assert pa.shape == (64, 64, 3)
            assert np.array_equal(pa, pb), f"{name}: pixels differ (max {np.abs(pa.astype(int) - pb).max()})"
            assert png_parameters(b) == png_parameters(a), name
        if name == "native-img2img":
            assert png_parameters(b_imgs[0]) == ""  # embed_image_metadata false
        else:
            assert "Version: stable-diffusion.cpp" in png_parameters(b_imgs[0])

    def test_jpeg_output(self, servers):
        ours, ref = servers
        body = {"prompt": "jpeg", "output_format": "JPEG", "output_compression": 80}
        for url in (ref.url, ours.url):
            r = httpx.post(url + "/v1/images/generations", json=body, timeout=300)
            assert r.status_code == 200, r.text
            assert r.json()["output_format"] == "jpeg"
            data = base64.b64decode(r.json()["data"][0]["b64_json"])
            assert data[:3] == b"\xff\xd8\xff"  # encoders differ (stb vs libjpeg): the format and size match
            with Image.open(io.BytesIO(data)) as im:
                assert im.size == (64, 64)

    @pytest.mark.parametrize("path", ["/v1/models", "/sdapi/v1/loras", "/sdapi/v1/upscalers",
                                      "/sdapi/v1/latent-upscale-modes", "/sdapi/v1/samplers",
                                      "/sdapi/v1/schedulers", "/sdapi/v1/sd-models", "/sdapi/v1/options"])
    def test_lists_are_equal(self, servers, path):
        ours, ref = servers
        a, b = httpx.get(ref.url + path, timeout=30), httpx.get(ours.url + path, timeout=30)
        assert a.status_code == b.status_code == 200
        assert b.json() == a.json()
        if path == "/sdapi/v1/loras":
            assert [e["path"] for e in b.json()] == ["glow.gguf", "style/ink.safetensors"]

    def test_capabilities(self, servers):
        ours, ref = servers
        a, b = httpx.get(ref.url + "/sdcpp/v1/capabilities").json(), httpx.get(ours.url + "/sdcpp/v1/capabilities").json()
        assert_shape_covers(shape_of(b), shape_of(a))
        for key in ("model", "current_mode", "supported_modes", "samplers", "schedulers", "loras", "upscalers"):
            assert b[key] == a[key], key
        assert b["defaults"] == a["defaults"]  # the command line's default generation values
        # cancelling a generating job is supported here; the queue limit is the server's setting
        assert b["features"]["cancel_generating"] is True and b["limits"]["max_queue_size"] == 64

    def test_errors_sd_server_also_refuses_are_4xx_json(self, servers):
        ours, ref = servers
        for path, body in (("/v1/images/generations", {"n": 1}), ("/sdapi/v1/txt2img", {"prompt": ""}),
                           ("/sdcpp/v1/img_gen", None)):
            for url in (ref.url, ours.url):
                r = httpx.post(url + path, json=body) if body is not None else httpx.post(url + path)
                assert r.status_code == 400 and "error" in r.json(), (url, path, r.text)
        for url in (ref.url, ours.url):
            r = httpx.get(url + "/sdcpp/v1/jobs/job_nope")
            assert r.status_code == 404 and r.json() == {"error": "job not found"}


# --- the same values through the CLI --------------------------------------------------------------------
@pytest.mark.slow
def test_same_pixels_and_metadata_as_the_cli(servers, sd15_path, tmp_path, capsys):
    ours, _ = servers
    args = ["-p", "a lighthouse at dusk", "-n", "rain", "-W", "64", "-H", "64", "--steps", "2", "-s", "42",
            "--cfg-scale", "6", "--sampling-method", "euler_a", "--scheduler", "discrete"]
    assert cli.main(["-m", str(sd15_path), "-t", str(THREADS), *args, "-o", str(tmp_path / "cli.png")]) == 0, \
        capsys.readouterr()
    body = {"prompt": "a lighthouse at dusk", "negative_prompt": "rain", "seed": 42,
            "sample_params": {"sample_steps": 2, "sample_method": "euler_a", "scheduler": "discrete",
                              "guidance": {"txt_cfg": 6}}}
    with httpx.Client(timeout=300) as client:
        job = client.post(ours.url + "/sdcpp/v1/img_gen", json=body).json()
        done = _native_poll(client, ours.url, job)
    b64 = done["result"]["images"][0]["b64_json"]
    with Image.open(tmp_path / "cli.png") as im:
        assert np.array_equal(decode(b64), np.asarray(im.convert("RGB")))
        assert png_parameters(b64) == im.text["parameters"]
    assert done["result"]["images"][0]["seed"] == 42


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("pysdcpp-server", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None, "pip install did not create the pysdcpp-server script"
