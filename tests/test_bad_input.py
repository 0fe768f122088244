"""The bad-input catalogue (tests/bad_inputs.py) in-process: each case raises its clear
exception (or succeeds as documented) and the session context stays usable.
tests/test_reliability.py runs the same cases in child processes to count aborts."""
from __future__ import annotations

import pytest

import bad_inputs
from bad_inputs import CASES, GEN


@pytest.fixture(scope="module")
def env(ctx, sd15_path, tmp_path_factory):
    e = bad_inputs.Env(model=sd15_path, tmp=tmp_path_factory.mktemp("bad-inputs"), shared=ctx)
    yield e
    if e._closed is not None:
        e._closed.close()


def test_catalogue_is_large_enough():
    assert len(CASES) >= 30
    assert sum(c.raises is None for c in CASES) >= 2, "some documented successes"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, env):
    status, detail = bad_inputs.run_case(case, env)
    if status == "skip":
        pytest.skip(detail)
    assert status == "pass", detail


def test_context_generates_after_the_catalogue(ctx):
    """After every bad input above, the same context still generates an image."""
    images = ctx.generate("after the catalogue", **GEN)
    assert len(images) == 1 and images[0].size == (64, 64)
