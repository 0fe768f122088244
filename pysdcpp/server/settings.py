"""pysdcpp-server's command line: sd-server's, parsed by the CLI's own option table.

sd-server (vendored ``examples/server/main.cpp``) takes three option groups: its own
(``--listen-ip``, ``--listen-port``, ``--serve-html-path``, ``-v``, ``--color``, ``-h``), the
context options and the default generation options of ``examples/common``, which are
the ones sd-cli takes.  pysdcpp's CLI already has that table (:mod:`pysdcpp.cli`), with
sd.cpp's value parsers and defaults; this module takes its context, generation and
pysdcpp groups as they are, un-refuses the sd-server group, and adds the server's
limits.  The result is one values dict in the CLI's shape (``p``), so a request and a
command line with the same values give the same keyword arguments.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

from .. import cli

PROG = "pysdcpp-server"
log = logging.getLogger("pysdcpp.server")

# The server's own limits (pysdcpp-server only; sd-server has fixed ones or none).
LIMITS = {  # dest: (flag, default, help)
    "max_queue_size": ("--max-queue-size", 64, "jobs queued or generating, over all API families, before new "
                       "ones get 429 (default: 64, sd-server's)"),
    "max_body_size": ("--max-body-size", 64 << 20, "largest request body in bytes; larger ones get 413 "
                      "(default: 67108864)"),
    "max_width": ("--max-width", 4096, "largest image width a request may ask for, hires target included "
                  "(default: 4096, the limit sd-server advertises)"),
    "max_height": ("--max-height", 4096, "largest image height a request may ask for (default: 4096)"),
    "max_steps": ("--max-steps", 100, "most sampling steps a request may ask for (default: 100, sd-server's clamp)"),
    "max_batch_count": ("--max-batch-count", 8, "most images one request may ask for (default: 8, sd-server's "
                        "clamp)"),
    "job_ttl": ("--job-ttl", 600, "seconds a finished job's result is kept for polling (default: 600)"),
}

# Default-generation flags that sd-server parses and never reads: accepted for drop-in
# command lines, with a warning that says so.
IGNORED = ("init_image_path", "mask_image_path", "control_image_path", "ref_image_paths", "pm_id_images_dir",
           "esrgan_path", "upscale_repeats", "upscale_tile_size")


def _server_options() -> list[cli.Opt]:
    opts = []
    for o in cli.OPTIONS:
        if o.group == "server":
            opts.append(replace(o, refuse=None))
        elif o.dest in ("verbose", "color", "help"):
            opts.append(replace(o, group="server"))
        elif o.group in ("ctx", "gen", "pysdcpp"):
            opts.append(o)
    for dest, (flag, _default, desc) in LIMITS.items():
        opts.append(cli.Opt("", flag, "int", dest, desc, "limits", parse=cli._int))
    return opts


OPTIONS = _server_options()
BY_NAME = {name: opt for opt in OPTIONS for name in opt.names}
TITLES = {"server": "Svr Options:", "ctx": "Context Options:", "gen": "Default Generation Options:",
          "pysdcpp": "pysdcpp Options:", "limits": "pysdcpp-server Limits:"}
SERVER_DEFAULTS = dict(listen_ip="127.0.0.1", listen_port=1234, serve_html_path="",
                       **{dest: default for dest, (_f, default, _d) in LIMITS.items()})


@dataclass
class Settings:
    """Everything the server is started with.  `values` is the CLI-shaped dict of context
    and default generation values (see :func:`pysdcpp.cli.parse_args`)."""
    values: dict[str, Any] = field(default_factory=lambda: copy.deepcopy({**cli.DEFAULTS, **SERVER_DEFAULTS}))

    def __getattr__(self, name):  # listen_ip, max_steps, ...: read from values
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def model_path(self) -> str:
        """The file sd-server names the model by (``--model``, else ``--diffusion-model``)."""
        return self.values["model_path"] or self.values["diffusion_model_path"]

    def context_kwargs(self) -> dict:
        """pysdcpp.Context's keywords, as the CLI maps them, with sd-server's choices: the
        weights are kept between requests and the VAE encoder is loaded (img2img)."""
        kw = cli._context_kwargs(self.values, vae_decode_only=False)
        kw["free_params_immediately"] = False
        return kw

    def default_request(self) -> dict:
        """A fresh copy of the default generation values, what each request starts from."""
        return copy.deepcopy(self.values)

    @classmethod
    def for_model(cls, model: str, **values) -> "Settings":
        """Settings in Python (tests, Ray): the values are the CLI's destinations
        (``n_threads``, ``steps``, ``cfg_scale``, ``max_queue_size``, ...)."""
        s = cls()
        s.values["model_path"] = os.fspath(model)
        unknown = set(values) - set(s.values)
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        s.values.update(values)
        check(s)
        return s


def usage() -> str:
    return cli.usage(prog=PROG, titles=TITLES, options=OPTIONS)


def parse(argv: list[str]) -> Settings:
    """The command line as sd-server parses and validates it; raises cli.UsageError."""
    p, given = cli.parse_args(argv, BY_NAME)
    for dest, default in SERVER_DEFAULTS.items():
        p.setdefault(dest, default)
    s = Settings(values=p)
    if p["help"]:
        return s
    cli._check_supported(p, given)
    for opt in given:
        if opt.dest in IGNORED:
            log.warning("%s is accepted as sd-server accepts it, and has no effect in a server (sd-server "
                        "ignores it too)", opt.long)
    check(s)
    return s


def check(s: Settings) -> None:
    """sd-server's SDSvrParams/SDContextParams/SDGenerationParams validation of the command
    line, plus the limits'."""
    p = s.values
    if not p["listen_ip"]:
        raise cli.UsageError("the following arguments are required: listen_ip")
    if not 0 <= p["listen_port"] <= 65535:
        raise cli.UsageError("listen_port should be in the range [0, 65535]")
    if p["serve_html_path"] and not os.path.exists(p["serve_html_path"]):
        raise cli.UsageError(f"serve_html_path file does not exist: {p['serve_html_path']}")
    for dest, (flag, _d, _h) in LIMITS.items():
        if p[dest] < 1:
            raise cli.UsageError(f"{flag} must be at least 1, got {p[dest]}")
    for name in IGNORED:
        p[name] = copy.deepcopy(cli.DEFAULTS[name])
    if p["n_threads"] <= 0:  # sd-server's SDContextParams::resolve
        from .. import num_physical_cores

        p["n_threads"] = num_physical_cores()
    # The defaults must themselves be a valid request (sd-server validates them at start-up);
    # a random default seed (< 0) stays random per request.
    trial = copy.deepcopy(p)
    trial["lora_model_dir"] = ""  # servers take LoRAs from the request's `lora` field only
    cli._validate(trial)
