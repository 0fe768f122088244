"""The `pysdcpp` command against sd-cli built from the same patched tree.

Every flag sd-cli's --help lists must parse; unsupported modes are refused with one
line and status 2; and on the random-weight SD 1.5 both programs, given the same
arguments, must write the same files with byte-identical pixels and metadata text.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_same_outputs, help_flags, run_pysdcpp, run_sd_cli, sd_cli_path
from pysdcpp import cli

needs_sd_cli = pytest.mark.skipif(sd_cli_path() is None, reason="sd-cli was not built with this pysdcpp")


# --- the flag table -----------------------------------------------------------------------
def _sd_cli_help_flags() -> list[tuple[list[str], str]]:
    """(names, value hint) of every option line of `sd-cli --help`."""
    return help_flags(sd_cli_path())


@needs_sd_cli
def test_every_sd_cli_flag_is_accepted():
    flags = _sd_cli_help_flags()
    assert len(flags) > 100, "could not parse sd-cli --help"
    missing, wrong_type = [], []
    for names, hint in flags:
        for name in names:
            opt = cli.BY_NAME.get(name)
            if opt is None:
                missing.append(name)
            elif hint and opt.kind != hint:
                wrong_type.append(f"{name}: sd-cli <{hint}>, pysdcpp {opt.kind}")
            elif not hint and opt.kind in ("string", "int", "float"):
                wrong_type.append(f"{name}: sd-cli takes no typed value, pysdcpp {opt.kind}")
        if len(names) == 2:  # the short and the long name are one option
            assert cli.BY_NAME[names[0]] is cli.BY_NAME[names[1]], names
    assert not missing, f"pysdcpp does not accept: {missing}"
    assert not wrong_type, wrong_type


def test_streaming_flags_are_mapped_or_refused(monkeypatch):
    from pysdcpp._params import CTX

    fields = ("stream_layers", "stream_prefetch_depth", "stream_residency", "pin_offloaded_params")
    argv = ["-m", "x.safetensors", "--offload-to-cpu", "--max-vram", "-1.5", "--stream-layers",
            "--stream-prefetch-depth", "3", "--no-stream-residency", "--no-pin-params"]
    p, given = cli.parse_args(argv)
    if all(f in CTX.leaves for f in fields):
        cli._check_supported(p, given)
        kw = cli._context_kwargs(p, True)
        assert kw["offload_params_to_cpu"] is True and kw["max_vram"] == -1.5
        assert [kw[f] for f in fields] == [True, 3, False, False]
        # not given: sd-cli's defaults, which are sd_ctx_params_init's
        kw = cli._context_kwargs(cli.parse_args(["-m", "x"])[0], True)
        assert [kw[f] for f in fields] == [CTX.defaults()[f] for f in fields] == [False, 1, True, True]
    # a build without the streaming patch refuses them with one clear line
    monkeypatch.setattr(CTX, "leaves", {k: v for k, v in CTX.leaves.items() if k not in fields})
    for flag in cli.STREAM_FIELDS:
        p, given = cli.parse_args(["-m", "x", flag] + (["2"] if cli.BY_NAME[flag].takes_value else []))
        with pytest.raises(cli.UsageError, match="no weight streaming"):
            cli._check_supported(p, given)


@pytest.mark.parametrize("argv, message", [
    (["-M", "vid_gen", "-m", "m"], "video generation"),
    (["-M", "convert", "-m", "m"], "conversion"),
    (["-M", "metadata", "--image", "x.png"], "metadata"),
    (["-m", "m", "--video-frames", "8"], "--video-frames"),
    (["-m", "m", "--end-img", "e.png"], "--end-img"),
    (["-m", "m", "--control-video", "dir"], "--control-video"),
    (["-m", "m", "--high-noise-steps", "4"], "--high-noise-steps"),
    (["-m", "m", "--moe-boundary", "0.9"], "--moe-boundary"),
    (["-m", "m", "--listen-port", "8080"], "sd-server"),
    (["-m", "m", "--steps", "x"], "--steps"),
    (["-m", "m", "--steps"], "--steps"),
    (["-m", "m", "--sampling-method", "nope"], "sample method"),
    (["-m", "m", "--frobnicate"], "unknown argument"),
    (["-p", "x"], "model_path"),
    (["-m", "m", "--strength", "1.5"], "strength"),
    (["-M", "upscale", "-i", "x.png"], "--upscale-model"),
])
def test_bad_or_unsupported_arguments_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pysdcpp: error:") and message in err[0], err


def test_python_dash_m_help_version_and_missing_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pysdcpp", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--sampling-method" in r.stdout and "--stream-layers" in r.stdout
    r = subprocess.run([sys.executable, "-m", "pysdcpp", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "stable-diffusion.cpp" in r.stdout
    r = run_pysdcpp(["-m", str(tmp_path / "missing.safetensors"), "-p", "x"], tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("pysdcpp: error:") and "missing.safetensors" in r.stderr


def test_output_names_follow_sd_cli():
    o = cli.output_paths
    assert o("output.png", 1) == ["output.png"]
    assert o("output.png", 3) == ["output_0.png", "output_1.png", "output_2.png"]
    assert o("out.png", 2, 4) == ["out_4.png", "out_5.png"]
    assert o("frames/img_%03d.png", 2) == ["frames/img_000.png", "frames/img_001.png"]
    assert o("img_%d", 2, 7) == ["img_7.png", "img_8.png"]
    assert o("100%%_%d.jpg", 1) == ["100%_0.jpg"]
    assert o("noext", 1) == ["noext.png"]
    assert o("pic.bmp", 1) == ["pic.bmp.png"]
    assert o("a.JPG", 2) == ["a_0.JPG", "a_1.JPG"]


# --- equivalence on the random SD 1.5 ---------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "init.png")
    mask = np.zeros((64, 64, 3), dtype=np.uint8)
    mask[16:48, 8:40] = (255, 240, 250)
    mask[40:60, 30:60] = (200, 100, 50)  # coloured: exercises stb_image's RGB -> luma
    Image.fromarray(mask).save(d / "mask.png")
    (d / "loras").mkdir()
    return d


S = ["-W", "64", "-H", "64"]
MATRIX = {
    "defaults-euler_a": ["-p", "a red cube", "--steps", "1", *S],
    "euler-karras-seed": ["-p", "a lighthouse", "--sampling-method", "euler", "--scheduler", "karras",
                          "--steps", "2", "-s", "7", *S],
    "dpm++2m-exponential-negative-cfg": ["-p", "a cat", "-n", "blurry, low quality", "--cfg-scale", "5.5",
                                         "--sampling-method", "dpm++2m", "--scheduler", "exponential",
                                         "--steps", "2", *S],
    "lcm-sgm_uniform-128x64": ["-p", "wide", "--sampling-method", "lcm", "--scheduler", "sgm_uniform",
                               "--steps", "1", "-W", "128", "-H", "64"],
    "img2img-strength-size-from-image": ["-p", "a house", "-i", "{inputs}/init.png", "--strength", "0.6",
                                         "--steps", "2", "-s", "3"],
    "inpaint-mask": ["-p", "a dog", "-i", "{inputs}/init.png", "--mask", "{inputs}/mask.png", "--strength",
                     "0.9", "--steps", "2", *S],
    "batch-count": ["-p", "batch", "-b", "2", "-s", "100", "--steps", "1", *S],
    "pattern-begin-idx-no-metadata": ["-p", "x", "-o", "{out}/img_%02d.png", "--output-begin-idx", "3",
                                      "--disable-image-metadata", "--steps", "1", *S],
    "cfg1-guidance-img-cfg": ["-p", "guided", "--cfg-scale", "1.0", "--guidance", "2.0", "--img-cfg-scale", "3",
                              "--steps", "1", *S],
    "clip-skip-int64-seed": ["-p", "skip", "--clip-skip", "2", "-s", "1234567890123", "--steps", "1", *S],
    "vae-tiling": ["-p", "tiles", "--vae-tiling", "--vae-tile-size", "4x4", "--vae-tile-overlap", "0.25",
                   "--steps", "1", *S],
    "streaming-flags": ["-p", "streamed", "--offload-to-cpu", "--max-vram", "0.25", "--stream-layers",
                        "--stream-prefetch-depth", "2", "--no-pin-offloaded-params", "--steps", "1", *S],
    "sigmas-rng-eta-lora-tag": ["-p", "a cat <lora:not_there:0.5>", "--lora-model-dir", "{inputs}/loras",
                                "--sigmas", "14.6,2.5,0.0", "--rng", "cpu", "--sampler-rng", "std_default",
                                "--eta", "0.5", "--timestep-shift", "0", *S],
}


@needs_sd_cli
@pytest.mark.slow
@pytest.mark.parametrize("name", list(MATRIX))
def test_same_images_and_metadata_as_sd_cli(name, sd15_path, inputs, tmp_path, capsys):
    a_dir, b_dir = tmp_path / "sd-cli", tmp_path / "pysdcpp"
    a_dir.mkdir()
    b_dir.mkdir()

    def argv(out: Path) -> list[str]:
        args = [a.format(inputs=inputs, out=out) for a in MATRIX[name]]
        if "-o" not in args:
            args += ["-o", str(out / "out.png")]
        return ["-m", str(sd15_path), "-t", "2", *args]

    r = run_sd_cli(argv(a_dir), a_dir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    if name == "defaults-euler_a":  # once through the real console entry point
        r = run_pysdcpp(argv(b_dir), b_dir)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "\r" not in r.stderr, "no progress bar when stderr is not a terminal"
    else:
        assert cli.main(argv(b_dir)) == 0, capsys.readouterr()
    assert assert_same_outputs(a_dir, b_dir) == (2 if name == "batch-count" else 1)


# --- equivalence in upscale mode on a tiny random ESRGAN --------------------------------------
UPSCALE = {
    "x4-32x32": ("in32.png", []),
    "repeats-2-non-square": ("in12x16.png", ["--upscale-repeats", "2"]),
    "tiled": ("in32.png", ["--upscale-tile-size", "16"]),
}


@pytest.fixture(scope="module")
def esrgan_inputs(tmp_path_factory):
    from pysdcpp import testing

    d = tmp_path_factory.mktemp("esrgan")
    testing.write_esrgan(d / "esrgan-x4-1block.safetensors", seed=0, dtype="f32", num_block=1)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "in32.png")
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(d / "in12x16.png")
    return d


@needs_sd_cli
@pytest.mark.parametrize("name", list(UPSCALE))
def test_upscale_same_images_and_metadata_as_sd_cli(name, esrgan_inputs, tmp_path):
    image, extra = UPSCALE[name]
    model = esrgan_inputs / "esrgan-x4-1block.safetensors"
    outs = {}
    for prog, run in (("sd-cli", run_sd_cli), ("pysdcpp", run_pysdcpp)):
        out = tmp_path / prog
        out.mkdir()
        r = run(["-M", "upscale", "--upscale-model", str(model), "-i", str(esrgan_inputs / image),
                 "-o", str(out / "out.png"), "-t", "2", *extra], out)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        log = r.stdout + r.stderr
        assert "unknown tensor" not in log and "not in model file" not in log, log[-2000:]
        outs[prog] = out
    assert assert_same_outputs(outs["sd-cli"], outs["pysdcpp"]) == 1
    with Image.open(esrgan_inputs / image) as src, Image.open(outs["pysdcpp"] / "out.png") as up:
        factor = 4 ** (2 if "--upscale-repeats" in extra else 1)
        assert up.size == (src.size[0] * factor, src.size[1] * factor)
        assert np.asarray(up).std() > 0, "constant image"
