"""The bad-request catalogue: every class of bad input, on every endpoint and every field,
gets a 4xx JSON error that names what is wrong, and the server keeps serving: the last
test proves it still generates the Python API's image.

Classes: malformed JSON and bodies that are not objects; a wrong JSON type for every field
of every schema (walked from the schemas themselves, nested objects and list items
included, also inside ``<sd_cpp_extra_args>``); sizes, steps and batches past the limits;
unknown samplers, schedulers, cache modes, output formats, upscalers, LoRAs; bad base64
and undecodable or oversized images in every image field; bad multipart bodies; bodies
over the size limit, declared or streamed.
"""
from __future__ import annotations

import base64
import io
import json
import time
import typing

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import THREADS
from server_helpers import ThreadServer, decode, image_b64

LIMIT = 1 << 20  # --max-body-size of this module's server
REFERENCE = {"prompt": "still serving", "seed": 21, "sample_params": {"sample_steps": 2}}


@pytest.fixture(scope="module")
def server(ctx, sd15_path):
    from pysdcpp.server import Settings, create_app

    settings = Settings.for_model(sd15_path, n_threads=THREADS, width=64, height=64, steps=2,
                                  max_body_size=LIMIT, max_width=512, max_height=512, max_steps=50)
    with ThreadServer(create_app(settings, context=ctx)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def assert_4xx(r: httpx.Response, *needles: str, status: int = 400) -> str:
    assert r.status_code == status, f"{r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    error = r.json()["error"]
    assert isinstance(error, str) and error
    for needle in needles:
        assert needle in error, f"{needle!r} not in {error!r}"
    return error


# --- the schemas, walked ---------------------------------------------------------------------------
def _schemas():
    from pysdcpp.server import generation, openai, sdapi

    return {"/sdcpp/v1/img_gen": generation.NativeRequest, "/v1/images/generations": openai.GenerationsRequest,
            "/sdapi/v1/txt2img": sdapi.Txt2ImgRequest, "/sdapi/v1/img2img": sdapi.Img2ImgRequest}


def _kind(annotation):
    """The JSON kind a field takes: int, float, bool, str, list (with the item kind), object, int|bool."""
    from pydantic import BaseModel

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return _kind(args[0])
    if typing.get_origin(annotation) is typing.Union:
        return "int|bool"
    if typing.get_origin(annotation) is typing.Annotated:
        return _kind(args[0])
    if typing.get_origin(annotation) is list:
        return ("list", _kind(args[0]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("object", annotation)
    return {int: "int", float: "float", bool: "bool", str: "str"}[annotation]


WRONG = {"int": ["1", 1.5, True, [], {}], "float": ["1.0", True, [], {}], "bool": [1, "true", [], {}],
         "str": [1, True, [], {}], "int|bool": ["1", 1.5, []]}
WRONG_CONTAINER = {"list": ["x", 1, {}], "object": ["x", 1, []]}


def wrong_values(model, path=()):
    """(dotted path, a body fragment that puts a wrong value there) for every field."""
    for name, info in model.model_fields.items():
        kind = _kind(info.annotation)
        here = (*path, name)
        if isinstance(kind, tuple):
            for bad in WRONG_CONTAINER[kind[0]]:
                yield here, bad
            if kind[0] == "list":
                item = kind[1]
                if isinstance(item, tuple):  # list of objects: a wrong item and a wrong field in one
                    yield (*here, 0), "x"
                    for sub, bad in wrong_values(item[1]):
                        yield (*here, 0, *sub), bad
                else:
                    for bad in WRONG[item][:2]:
                        yield (*here, 0), bad
            else:
                for sub, bad in wrong_values(kind[1]):
                    yield (*here, *sub), bad
        else:
            for bad in WRONG[kind]:
                yield here, bad


def _nest(path, bad):
    """{"a": [{"b": bad}]} for the path (a, 0, b)."""
    value = bad
    for key in reversed(path):
        value = [value] if isinstance(key, int) else {key: value}
    return value


def _body(_endpoint, path, bad):
    fragment = _nest(path, bad)
    base = {"prompt": "x"} if path[0] != "prompt" else {}
    if "lora" in path and len(path) > 2:  # a wrong field in a LoRA entry that is otherwise valid
        fragment = {"lora": [{"path": "x.safetensors", **fragment["lora"][0]}]}
    return {**base, **fragment}


CASES = [(ep, ".".join(map(str, p)), p, bad) for ep, model in _schemas().items() for p, bad in wrong_values(model)]


class TestWrongTypes:
    @pytest.mark.parametrize("endpoint", list(_schemas()))
    def test_every_field_of_every_schema(self, client, endpoint):
        checked = 0
        for ep, dotted, path, bad in CASES:
            if ep != endpoint:
                continue
            assert_4xx(client.post(ep, json=_body(ep, path, bad)), dotted)
            checked += 1
        assert checked > (100 if endpoint == "/sdcpp/v1/img_gen" else 20), checked

    def test_every_native_field_inside_sd_cpp_extra_args(self, client):
        from pysdcpp.server import generation

        checked = 0
        for path, bad in wrong_values(generation.NativeParams):
            extra = json.dumps(_body("", path, bad))
            for ep in ("/v1/images/generations", "/sdapi/v1/txt2img"):
                r = client.post(ep, json={"prompt": f"x <sd_cpp_extra_args>{extra}</sd_cpp_extra_args>"})
                assert_4xx(r, "sd_cpp_extra_args: " + ".".join(map(str, path)))
                checked += 1
        assert checked > 200

    def test_extra_args_that_are_not_json(self, client):
        for text in ("{", "[1]", "nope", '"str"'):
            r = client.post("/v1/images/generations",
                            json={"prompt": f"x <sd_cpp_extra_args>{text}</sd_cpp_extra_args>"})
            assert_4xx(r, "sd_cpp_extra_args")


MALFORMED = [b"", b"   ", b"{", b"[1, 2", b"{'prompt': 'x'}", b'{"prompt": "x",}', b"NaN", b'{"prompt": NaN}',
             b'{"seed": Infinity}', b"\xff\xfe\x00garbage", b"[]", b'"a string"', b"123", b"null", b"true"]


class TestMalformedBodies:
    @pytest.mark.parametrize("endpoint", list(_schemas()))
    @pytest.mark.parametrize("raw", MALFORMED, ids=[repr(m)[:20] for m in MALFORMED])
    def test_malformed(self, client, endpoint, raw):
        r = client.post(endpoint, content=raw, headers={"Content-Type": "application/json"})
        assert_4xx(r)

    def test_prompt_required(self, client):
        for ep in ("/v1/images/generations", "/sdapi/v1/txt2img"):
            assert_4xx(client.post(ep, json={"prompt": ""}), "prompt required")
            assert_4xx(client.post(ep, json={"negative_prompt": "x"}), "prompt required")


class TestLimitsAndNames:
    @pytest.mark.parametrize("body, needle", [
        ({"width": 1024, "height": 64}, "width 1024"),
        ({"width": 64, "height": 520}, "height 520"),
        ({"width": 100, "height": 64}, "multiple of 8"),
        ({"width": 1 << 31, "height": 64}, "width"),
        ({"sample_params": {"sample_steps": 51}}, "steps 51"),
        ({"sample_params": {"sample_steps": 10 ** 6}}, "steps"),
        ({"sample_params": {"sample_steps": 0}}, "sample_steps"),
        ({"sample_params": {"sample_steps": -3}}, "sample_steps"),
        ({"batch_count": 9}, "batch count 9"),
        ({"batch_count": 0}, "batch_count"),
        ({"batch_count": 10 ** 9}, "batch count"),
        ({"seed": 1 << 63}, "seed"),
        ({"strength": 1.5}, "strength"),
        ({"sample_params": {"guidance": {"txt_cfg": -1}}}, "cfg_scale"),
        ({"sample_params": {"shifted_timestep": 5000}}, "shifted_timestep"),
        ({"hires": {"enabled": True, "target_width": 4096, "target_height": 64}}, "hires target"),
        ({"hires": {"enabled": True, "scale": 100.0}}, "hires target"),
        ({"hires": {"enabled": True, "denoising_strength": 0.0}}, "denoising strength"),
        ({"hires": {"enabled": True, "upscaler": "NoSuchUpscaler"}}, "hires upscaler"),
        ({"sample_params": {"sample_method": "nope"}}, "sample_method"),
        ({"sample_params": {"sample_method": "Euler a"}}, "sample_method"),
        ({"sample_params": {"scheduler": "nope"}}, "scheduler"),
        ({"cache_mode": "fastest"}, "cache mode"),
        ({"cache_mode": "easycache", "cache_option": "bogus"}, "cache option"),
        ({"output_format": "gif"}, "output_format"),
        ({"lora": [{"path": "missing.safetensors"}]}, "invalid lora path"),
        ({"lora": [{"path": ""}]}, "invalid lora path"),
        ({"lora": [{"path": "../../etc/passwd"}]}, "invalid lora path"),
        ({"lora": [{"multiplier": 1.0}]}, "lora.0.path"),
    ])
    def test_native(self, client, body, needle):
        assert_4xx(client.post("/sdcpp/v1/img_gen", json={"prompt": "x", **body}), needle)

    @pytest.mark.parametrize("body, needle", [
        ({"width": 0}, "positive"), ({"height": -64}, "positive"), ({"width": 2048}, "width 2048"),
        ({"steps": 1000}, "steps 1000"), ({"steps": 0}, "sample_steps"), ({"batch_size": 100}, "batch count"),
        ({"sampler_name": "DPM++ 3M SDE Karras"}, "sampler_name"), ({"sampler_name": "nope"}, "sampler_name"),
        ({"scheduler": "Polyexponential"}, "scheduler"),
        ({"enable_hr": True, "hr_resize_x": 8192, "hr_resize_y": 64}, "hires target"),
        ({"enable_hr": True, "hr_upscaler": "SwinIR_4x"}, "hires upscaler"),
        ({"lora": [{"path": "nope"}]}, "invalid lora path"),
    ])
    def test_sdapi(self, client, body, needle):
        assert_4xx(client.post("/sdapi/v1/txt2img", json={"prompt": "x", **body}), needle)

    @pytest.mark.parametrize("body, needle", [
        ({"n": 0}, "n must be"), ({"n": 9}, "batch count"), ({"size": "big"}, "size"),
        ({"size": "64x"}, "size"), ({"size": "4096x4096"}, "width 4096"), ({"output_format": "bmp"}, "output_format"),
    ])
    def test_openai(self, client, body, needle):
        assert_4xx(client.post("/v1/images/generations", json={"prompt": "x", **body}), needle)


def _png_header_claiming(width: int, height: int) -> str:
    """A tiny PNG whose header says width x height (a decompression bomb's first bytes)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return base64.b64encode(raw).decode()


def _truncated_png() -> str:
    return base64.b64encode(base64.b64decode(image_b64(64, 64))[:60]).decode()


BAD_IMAGES = {
    "not base64": ("!!!not base64!!!", "base64"),
    "base64 of text": (base64.b64encode(b"hello world, not an image").decode(), "not a readable image"),
    "truncated png": (_truncated_png(), "not a readable image"),
    "data url of garbage": ("data:image/png;base64,AAAA", "not a readable image"),
    "empty": ("", "empty image"),
    "bomb header": (_png_header_claiming(30000, 30000), "larger than this server takes"),
}
IMAGE_FIELDS = [
    ("/sdcpp/v1/img_gen", lambda v: {"init_image": v}, "init_image"),
    ("/sdcpp/v1/img_gen", lambda v: {"init_image": image_b64(64, 64), "mask_image": v}, "mask_image"),
    ("/sdcpp/v1/img_gen", lambda v: {"control_image": v}, "control_image"),
    ("/sdcpp/v1/img_gen", lambda v: {"ref_images": [image_b64(64, 64), v]}, "ref_images[1]"),
    ("/sdapi/v1/img2img", lambda v: {"init_images": [v]}, "init_images[0]"),
    ("/sdapi/v1/img2img", lambda v: {"init_images": [image_b64(64, 64)], "mask": v}, "mask"),
    ("/sdapi/v1/txt2img", lambda v: {"extra_images": [v]}, "extra_images[0]"),
    ("/v1/images/generations", lambda v: {"prompt": "x <sd_cpp_extra_args>%s</sd_cpp_extra_args>"
                                          % json.dumps({"init_image": v})}, "init_image"),
]


class TestBadImages:
    @pytest.mark.parametrize("kind", list(BAD_IMAGES))
    @pytest.mark.parametrize("endpoint, make, field", IMAGE_FIELDS, ids=[f"{e}:{f}" for e, _, f in IMAGE_FIELDS])
    def test_image_fields(self, client, kind, endpoint, make, field):
        value, needle = BAD_IMAGES[kind]
        assert_4xx(client.post(endpoint, json={"prompt": "x", **make(value)}), field, needle)

    def test_img2img_needs_an_image(self, client):
        assert_4xx(client.post("/sdapi/v1/img2img", json={"prompt": "x"}), "init_images")
        assert_4xx(client.post("/sdcpp/v1/img_gen", json={"prompt": "x", "mask_image": image_b64(64, 64, mode="L")}),
                   "mask")


def _png_bytes(w=64, h=64, mode="RGB") -> bytes:
    return base64.b64decode(image_b64(w, h, mode=mode))


class TestEditsMultipart:
    @pytest.mark.parametrize("kw, needle", [
        (dict(json={"prompt": "x"}), "multipart/form-data"),
        (dict(data={"prompt": "x"}, files={"other": ("a.png", b"x", "image/png")}), "image[] required"),
        (dict(data={"size": "64x64"}, files={"image[]": ("a.png", _png_bytes(), "image/png")}), "prompt required"),
        (dict(data={"prompt": "x"}, files={"image[]": ("a.png", b"not an image", "image/png")}), "image[0]"),
        (dict(data={"prompt": "x"}, files={"image": ("a.png", b"", "image/png")}), "image[0]"),
        (dict(data={"prompt": "x", "n": "two"}, files={"image[]": ("a.png", _png_bytes(), "image/png")}), "integers"),
        (dict(data={"prompt": "x", "n": "0"}, files={"image[]": ("a.png", _png_bytes(), "image/png")}), "n must be"),
        (dict(data={"prompt": "x", "size": "huge"}, files={"image[]": ("a.png", _png_bytes(), "image/png")}), "size"),
        (dict(data={"prompt": "x", "output_format": "webp"}, files={"image[]": ("a.png", _png_bytes(), "image/png")}),
         "output_format"),
        (dict(data={"prompt": "x"}, files=[("image[]", ("a.png", _png_bytes(), "image/png")),
                                           ("mask", ("m.png", b"garbage", "image/png"))]), "mask"),
        (dict(data={"prompt": "x", "size": "64x64"}, files=[("image[]", ("a.png", _png_bytes(), "image/png")),
                                                            ("image[]", ("b.png", b"\x89PNG", "image/png"))]),
         "image[1]"),
    ])
    def test_bad_edits(self, client, kw, needle):
        assert_4xx(client.post("/v1/images/edits", **kw), needle)

    def test_broken_multipart_body(self, client):
        r = client.post("/v1/images/edits", content=b"--xyz\r\nContent-Disposition: form-data; name=\"prompt\"\r\n",
                        headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        assert_4xx(r)


class TestBodySize:
    def test_declared_too_large(self, client):
        r = client.post("/sdcpp/v1/img_gen", content=b"{" + b" " * (LIMIT + 10) + b"}",
                        headers={"Content-Type": "application/json"})
        assert_4xx(r, "--max-body-size", status=413)

    def test_streamed_too_large(self, client):
        def chunks():
            yield b'{"prompt": "'
            for _ in range(LIMIT // 65536 + 2):
                yield b"a" * 65536
            yield b'"}'
        for ep in ("/sdcpp/v1/img_gen", "/sdapi/v1/txt2img"):
            r = client.post(ep, content=chunks(), headers={"Content-Type": "application/json"})
            assert_4xx(r, "--max-body-size", status=413)

    def test_large_multipart_upload(self, client):
        big = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, "BMP")
        r = client.post("/v1/images/edits", data={"prompt": "x"}, files={"image[]": ("a.bmp", buf.getvalue())})
        assert_4xx(r, status=413)


def test_methods_and_paths(client):
    assert client.get("/sdcpp/v1/img_gen").status_code == 405
    assert client.get("/nope").status_code == 404
    assert client.get("/static/../app.py").status_code == 404
    assert client.options("/sdcpp/v1/img_gen", headers={"Origin": "http://x", "Access-Control-Request-Method": "POST"}
                          ).status_code == 200


def test_still_serving_the_python_apis_image(client, ctx):
    """After the catalogue: the right image, through each family."""
    expected = np.asarray(ctx.txt2img("still serving", width=64, height=64, steps=2, seed=21)[0].convert("RGB"))
    job = client.post("/sdcpp/v1/img_gen", json=REFERENCE).json()
    while (done := client.get(job["poll_url"]).json())["status"] not in ("completed", "failed", "cancelled"):
        time.sleep(0.05)
    assert done["status"] == "completed", done
    assert np.array_equal(decode(done["result"]["images"][0]["b64_json"]), expected)
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "still serving", "seed": 21, "steps": 2, "width": 64,
                                               "height": 64})
    assert r.status_code == 200 and np.array_equal(decode(r.json()["images"][0]), expected)
