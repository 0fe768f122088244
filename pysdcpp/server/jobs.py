"""The job queue in front of the context(s): bounded, one generation at a time per context,
progress, cancellation, results kept for a while.

Every API family goes through it: the native API returns the job to poll, OpenAI and sdapi
wait for it.  Jobs run on a *backend*: :class:`LocalBackend` holds one
:class:`pysdcpp.Context` in this process (``concurrency`` 1); the Ray deployment's backend
sends them to replicas that each hold one.  Cancelling a job cancels the asyncio task that
awaits it; the backend turns that into :meth:`pysdcpp.Context.cancel` (locally, or in the
replica), and waits for sd.cpp to return before the next job starts, so the context is
never used by two jobs at once and stays usable.

Job states and the JSON shape are sd-server's (vendored ``examples/server/async_jobs.cpp``),
with one addition: ``progress`` (step, steps, elapsed seconds) while a job generates.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import CancelledError as SDCancelledError, SDError
from .generation import RequestError

log = logging.getLogger("pysdcpp.server")

QUEUED, GENERATING, COMPLETED, FAILED, CANCELLED = "queued", "generating", "completed", "failed", "cancelled"
PENDING = (QUEUED, GENERATING)


class QueueFull(RequestError):
    def __init__(self, size: int):
        super().__init__(f"job queue is full ({size} jobs queued or generating); retry later", 429)


class JobGone(RequestError):
    pass


@dataclass(eq=False)
class Job:
    id: str
    kind: str
    spec: Any
    created: int = field(default_factory=lambda: int(time.time()))
    status: str = QUEUED
    started: int | None = None
    completed: int | None = None
    result: Any = None
    error: dict | None = None
    keep: bool = True
    info: dict = field(default_factory=dict)  # what the kind's result shape needs besides the result
    step: int = 0
    steps: int = 0
    t0: float | None = None     # monotonic start, for elapsed
    t1: float | None = None
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def elapsed(self) -> float:
        if self.t0 is None:
            return 0.0
        return (self.t1 if self.t1 is not None else time.monotonic()) - self.t0


class LocalBackend:
    """Runs jobs on one Context in this process, one at a time, on one worker thread."""
    concurrency = 1

    def __init__(self, context, execute: Callable):
        self.context = context
        self.execute = execute
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pysdcpp-gen")

    async def run(self, spec, on_progress: Callable[[int, int], None]):
        loop = asyncio.get_running_loop()

        def progress(step, steps, _seconds):
            try:
                loop.call_soon_threadsafe(on_progress, step, steps)
            except RuntimeError:  # the loop is closing: the job is abandoned anyway
                pass

        fut = loop.run_in_executor(self._thread, self.execute, self.context, spec, progress)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # Stop sd.cpp at its next step, then wait for it: the context must be idle before
            # the next job, and a cancelled generation leaves it usable (pysdcpp's contract).
            self.context.cancel()
            while not fut.done():
                try:
                    await asyncio.shield(fut)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
            raise

    def close(self) -> None:
        self._thread.shutdown(wait=True)


class JobQueue:
    """sd-server's AsyncJobManager on asyncio: `max_pending` jobs queued or generating at most,
    finished ones kept `ttl` seconds (then 410 Gone for another `ttl`, at least 60 s)."""

    def __init__(self, backend, max_pending: int = 64, ttl: int = 600):
        self.backend = backend
        self.max_pending = max_pending
        self.ttl = ttl
        self.jobs: dict[str, Job] = {}
        self.expired: dict[str, float] = {}
        self.queue: collections.deque[Job] = collections.deque()
        self._ids = itertools.count()
        self.counts: collections.Counter = collections.Counter()  # finished jobs by status
        self._wake: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._loop = None

    # -- submitting and looking up ------------------------------------------------------------
    def submit(self, kind: str, spec, keep: bool = True, info: dict | None = None) -> Job:
        """Queue a job; `keep`: hold its result for polling (native API) rather than only for
        the request that waits for it (OpenAI, sdapi)."""
        self._start()
        self.purge()
        pending = sum(1 for j in self.jobs.values() if j.status in PENDING)
        if pending >= self.max_pending:
            raise QueueFull(self.max_pending)
        job = Job(id=f"job_{int(time.time()):x}_{next(self._ids):08x}", kind=kind, spec=spec, keep=keep,
                  info=info or {})
        self.jobs[job.id] = job
        self.queue.append(job)
        self._wake.set()
        return job

    def get(self, job_id: str) -> Job:
        self.purge()
        job = self.jobs.get(job_id)
        if job is None:
            if job_id in self.expired:
                raise JobGone("job expired", 410)
            raise JobGone("job not found", 404)
        return job

    def cancel(self, job: Job) -> Job:
        """Queued: dropped now.  Generating: its task is cancelled and sd.cpp stops at its next
        step; the job is 'cancelled' once it has (await job.done)."""
        if job.status == QUEUED:
            try:
                self.queue.remove(job)
            except ValueError:
                pass
            self._finish(job, CANCELLED, error={"code": "cancelled", "message": "job cancelled by client"})
        elif job.status == GENERATING and job.task is not None:
            job.task.cancel()
        return job

    async def wait(self, job: Job) -> Job:
        await job.done.wait()
        return job

    def position(self, job: Job) -> int:
        if job.status != QUEUED:
            return 0
        for i, queued in enumerate(self.queue, 1):
            if queued is job:
                return i
        return 0

    @property
    def pending(self) -> int:
        return sum(1 for j in self.jobs.values() if j.status in PENDING)

    def purge(self) -> None:
        now = time.time()
        self.expired = {k: v for k, v in self.expired.items() if v > now}
        for job in list(self.jobs.values()):
            if job.completed is not None and now - job.completed >= self.ttl:
                self.expired[job.id] = now + max(self.ttl, 60)
                del self.jobs[job.id]

    # -- running ----------------------------------------------------------------------------
    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._workers = [loop.create_task(self._worker(), name=f"pysdcpp-jobs-{i}")
                         for i in range(self.backend.concurrency)]

    async def _worker(self) -> None:
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            job = self.queue.popleft()
            job.status, job.started, job.t0 = GENERATING, int(time.time()), time.monotonic()
            job.task = asyncio.get_running_loop().create_task(self._run(job))
            try:
                await asyncio.wait({job.task})
            except asyncio.CancelledError:  # this worker is being stopped (close())
                job.task.cancel()
                raise
            if not job.done.is_set():  # cancelled before _run started
                self._finish(job, CANCELLED, error={"code": "cancelled", "message": "job cancelled by client"})

    async def _run(self, job: Job) -> None:
        def on_progress(step, steps):
            job.step, job.steps = step, steps
        try:
            result = await self.backend.run(job.spec, on_progress)
        except (asyncio.CancelledError, SDCancelledError):
            self._finish(job, CANCELLED, error={"code": "cancelled", "message": "job cancelled by client"})
        except (SDError, ValueError, TypeError, RequestError) as exc:
            log.error("job %s failed: %s", job.id, exc)
            self._finish(job, FAILED, error={"code": "generation_failed", "message": str(exc).strip()})
        except Exception as exc:  # never let one job stop the queue
            log.exception("job %s failed", job.id)
            self._finish(job, FAILED, error={"code": "server_error", "message": f"{type(exc).__name__}: {exc}"})
        else:
            self._finish(job, COMPLETED, result=result)

    def _finish(self, job: Job, status: str, result=None, error=None) -> None:
        job.status, job.result, job.error = status, result, error
        self.counts[status] += 1
        job.completed, job.t1 = int(time.time()), time.monotonic()
        job.spec = None  # input images are not kept with the result
        if not job.keep:
            self.jobs.pop(job.id, None)
        job.done.set()
        self.purge()

    async def close(self) -> None:
        for job in list(self.queue):
            self.cancel(job)
        running = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for t in running:
            t.cancel()
        for t in running + self._workers:
            t.cancel()
        await asyncio.gather(*running, *self._workers, return_exceptions=True)
        self._workers = []
        self._loop = None
