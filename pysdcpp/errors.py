"""The exceptions pysdcpp raises.  Every one derives from :class:`SDError`."""
from __future__ import annotations


class SDError(Exception):
    """Base class of every pysdcpp error."""


class InvalidArgumentError(SDError, ValueError):
    """An argument was rejected before any C code ran."""


class ModelLoadError(SDError):
    """sd.cpp could not create a context from the given model files."""


class ModelFileNotFoundError(ModelLoadError, FileNotFoundError):
    """A model file given to the context does not exist."""


class GenerationError(SDError):
    """sd.cpp returned no result for a generation."""


class ContextClosedError(SDError):
    """The context was used after :meth:`pysdcpp.Context.close`."""


class ReentrantCallError(SDError, RuntimeError):
    """A progress/preview callback called back into pysdcpp (generate, close) on its own thread."""


class CancelledError(SDError):
    """The generation was cancelled (``Context.cancel()`` or KeyboardInterrupt)."""


def with_log(message: str, log_lines: list[str]) -> str:
    """Append sd.cpp's own error lines of the failed call, which say why it failed."""
    if not log_lines:
        return message
    return message + "\nsd.cpp said:\n  " + "\n  ".join(log_lines[-8:])
