"""Child process of the crash harness (tests/test_reliability.py).

Reads one JSON command per line on stdin, answers one JSON line on the protocol fd
(the original stdout; fd 1 itself is pointed at stderr so that nothing the C library
might print can corrupt the protocol).  Commands:

  {"op": "case", "name": N}                 run catalogue case N -> {"status", "detail"}
  {"op": "load", "path": P, "kwargs": {...}}  Context(P) -> {"status": "loaded" | "error", "type", "detail"}
  {"op": "final"}                           one real generation on the shared context
  {"op": "rss_cycles", "cycles": N}         RSS over N open/generate/close cycles
  {"op": "quit"}

If the process dies (abort, segfault) the parent sees a negative return code and knows
which command was running: the one it sent last.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    model = Path(sys.argv[1])

    import bad_inputs
    import pysdcpp

    if os.environ.get("PYSDCPP_HARNESS_RAW_C"):
        # diagnosis only: hand files to sd.cpp unchecked, to find where sd.cpp itself aborts
        import pysdcpp.context

        pysdcpp.context.check_model_file = lambda name, path: None

    tmp = Path(tempfile.mkdtemp(prefix="pysdcpp-harness-"))
    env = bad_inputs.Env(model=model, tmp=tmp)

    def reply(**kw):
        proto.write(json.dumps(kw) + "\n")

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "quit":
                reply(status="bye")
                break
            if op == "case":
                status, detail = bad_inputs.run_case(bad_inputs.CASE_BY_NAME[cmd["name"]], env)
                reply(status=status, detail=detail)
            elif op == "load":
                try:
                    with pysdcpp.Context(cmd["path"], **cmd.get("kwargs", {})):
                        pass
                except Exception as exc:  # noqa: BLE001 - reported to the parent
                    reply(status="error", type=type(exc).__name__,
                          sderror=isinstance(exc, pysdcpp.SDError), detail=str(exc)[:300])
                else:
                    reply(status="loaded")
            elif op == "rss_cycles":
                reply(status="pass", **rss_cycles(model, cmd["cycles"]))
            elif op == "final":
                images = env.ctx.generate("a final check", **bad_inputs.GEN)
                reply(status="pass", detail=f"{len(images)} image(s) {images[0].size}")
            else:
                reply(status="fail", detail=f"unknown op {op!r}")
        except Exception:  # noqa: BLE001
            reply(status="fail", detail=traceback.format_exc()[-2000:])
    if env.shared is not None:
        env.shared.close()
    return 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_cycles(model: Path, cycles: int) -> dict:
    """open/generate/close `cycles` times after one warm-up cycle; RSS after each."""
    import gc

    import bad_inputs
    import pysdcpp

    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim  # glibc: give freed heap pages back
    except (OSError, AttributeError):
        trim = None

    def cycle():
        with pysdcpp.Context(model, n_threads=bad_inputs.THREADS) as c:
            c.generate("x", **bad_inputs.GEN)
        gc.collect()
        if trim is not None:  # RSS then counts live memory, not the allocator's free lists
            trim(0)

    cycle()  # warm-up: allocator arenas, ggml's CPU backend, Python caches
    base = rss_bytes()
    samples = []
    for _ in range(cycles):
        cycle()
        samples.append(rss_bytes())
    return {"base": base, "samples": samples}


if __name__ == "__main__":
    sys.exit(main())
