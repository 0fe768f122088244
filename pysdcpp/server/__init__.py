"""``pysdcpp-server``: a drop-in for sd.cpp's ``sd-server`` on :class:`pysdcpp.Context`.

The same command line (context and default generation flags, ``--listen-ip``,
``--listen-port``, ``--serve-html-path``; pysdcpp's streaming flags; limits), the same
three API families (OpenAI ``/v1``, WebUI ``/sdapi/v1``, native ``/sdcpp/v1``), a web
page at ``/``.  Needs the ``server`` extra: ``pip install 'pysdcpp[server]'``.

>>> from pysdcpp.server import create_app, Settings
>>> app = create_app(Settings.for_model("sd15.safetensors", steps=20))   # any ASGI server hosts it

Modules, one concern each: :mod:`.settings` (command line), :mod:`.generation` (a request
into the CLI's values, Context call, encoding), :mod:`.jobs` (the queue), :mod:`.openai`,
:mod:`.sdapi`, :mod:`.sdcpp` (the API families), :mod:`.page` (the web page), :mod:`.app`
(assembly), :mod:`.rayserve` (Ray Serve scale-out).
"""
from __future__ import annotations

import logging
import sys

EXTRA = "pysdcpp-server needs the server extra: pip install 'pysdcpp[server]' (FastAPI, uvicorn)"


def __getattr__(name):
    if name == "create_app":
        from .app import create_app
        return create_app
    if name == "Settings":
        from .settings import Settings
        return Settings
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pysdcpp-server``: 0 after a clean shutdown, 1 when the model does not
    load or the server cannot start, 2 on a bad command line."""
    from .. import cli
    from . import settings as settings_mod

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        from .. import __version__

        print(f"pysdcpp-server {__version__}, {cli._version_string()}")
        return 0
    try:
        settings = settings_mod.parse(argv)
    except cli.UsageError as exc:
        print(f"{settings_mod.PROG}: error: {exc} (see {settings_mod.PROG} --help)", file=sys.stderr)
        return 2
    if settings.help:
        print(settings_mod.usage())
        return 0
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        print(f"{settings_mod.PROG}: error: {EXTRA} ({exc})", file=sys.stderr)
        return 1
    restore = cli._setup_logging(settings.verbose, settings.color)
    log = logging.getLogger("pysdcpp.server")
    try:
        import pysdcpp

        try:
            context = pysdcpp.Context(**settings.context_kwargs())
        except (pysdcpp.SDError, OSError, ValueError, TypeError) as exc:
            print(f"{settings_mod.PROG}: error: {cli._one_line(exc)}", file=sys.stderr)
            return 1
        app = create_app(settings, context=context)
        log.info("listening on: %s:%d", settings.listen_ip, settings.listen_port)
        config = uvicorn.Config(app, host=settings.listen_ip, port=settings.listen_port,
                                log_level="info" if settings.verbose else "warning",
                                access_log=settings.verbose, timeout_graceful_shutdown=30)
        server = uvicorn.Server(config)
        server.run()
        context.close()
        return 0 if server.started else 1
    finally:
        restore()
