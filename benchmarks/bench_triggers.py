"""Benchmark of the job trigger: N triggers in one asyncio loop against the emulator, beside two baselines.

Not a test (pytest does not collect ``bench_*.py``): run it by hand, or with ``make bench-triggers``.

    .venv/bin/python benchmarks/bench_triggers.py                # the full run (about 9 minutes)
    .venv/bin/python benchmarks/bench_triggers.py --quick        # N=1,000 at 0 ms only, every kind
    .venv/bin/python benchmarks/bench_triggers.py --n 100 1000 5000 --latency 0 0.1 --poll-interval 2

The full run is 14 runs of about 35 s: the provider's trigger at N = 100, 1,000 and 5,000, the baselines at
N = 100 and 1,000 only (``--baseline-n``; at 5,000 the blocking one would not get round to every job within
the run), each at 0 and 100 ms of added latency.

For each (trigger kind, N, added latency) it starts a fresh emulator as a separate process
(``finetune-emulator --speed S --latency L``) and a fresh *worker* process that runs the triggers, so that
neither the emulator's CPU and memory nor an earlier run's leftovers are counted. Then:

1. the benchmark uploads training files of 60 to 240 examples (one epoch, batch size 1: 60 to 240 steps,
   so that at speed 1 a job trains 30 to 120 s; at the default ``--speed 5`` jobs end 7.6 to 25.6 s after
   they are made, spread over the run) and creates N jobs, each on a file drawn at random, with an
   ``httpx.AsyncClient`` of its own, with the added latency switched off while it creates them (and one
   throwaway job first, so that the emulator's own warm-up is not inside a measured create);
2. it computes when each job finishes from the emulator's plan (see *Finish times* below), resets the
   emulator's counters, and hands the jobs to the worker;
3. the worker, which has already imported everything (and sent one request with a throwaway client of each
   kind to the emulator's uncounted health check, so that the HTTP stack's own lazy imports are done) and
   noted its RSS, starts one trigger per job the way
   Airflow's triggerer does (one task each, ``await asyncio.sleep(0)`` between creations), drives each with
   ``async for event in trigger.run()``, and records when each event comes. Beside them run a *stall monitor*
   (a task that sleeps 10 ms in a loop and records how late it wakes) and an RSS sampler (VmRSS every
   100 ms; VmHWM, the kernel's peak, is reset just before the triggers start).

Trigger kinds:

* ``provider``: ``FineTuningJobTrigger(job_id, poll_interval=P)`` with ``AIRFLOW_CONN_FINETUNE_DEFAULT`` in
  the environment: coalesced polls through the shared async client.
* ``sync_in_async``: :class:`SyncInAsyncTrigger`, the design of ``OpenAIBatchTrigger`` in
  apache-airflow-providers-openai: an ``async def run()`` that calls a *synchronous* client (one
  ``httpx.Client`` per trigger, made on its first poll and kept, as ``OpenAIHook.conn`` is) and then
  ``await asyncio.sleep(P)``. Every request blocks the loop for its whole round trip.
* ``session_per_poll``: :class:`SessionPerPollTrigger`: ``async with httpx.AsyncClient() as c: await c.get()``
  on every poll: a new client, connection pool and TCP connection per poll.

The baselines read only the job (one GET per poll); the provider's trigger also reads the job's events to
log progress lines, so it does more per poll than they do.

Figures (all from the worker process, except requests and connections, which the emulator counts):

* loop stall: how late the 10 ms monitor woke; max, p99, and how many wakes were 50 ms or more late. The
  worker also times the garbage collector (``gc.callbacks``): ``max_ms_without_gc`` is the longest stall
  with the collector's pauses inside it taken out, and ``gc.full_max_ms`` the longest full collection (with
  Airflow imported a full collection alone takes about 100 ms; ``--gc-freeze`` calls ``gc.freeze()`` after
  the imports to show what that leaves, a setting of the process, not of the provider);
* notice latency: a trigger's event time minus its job's finish time; p50, p90, p99, max. A trigger that has
  not fired when the run is cut (``--grace`` seconds after the last job's finish) counts with the time it
  had waited so far, a lower bound (``censored`` says how many);
* requests and connections: the emulator's ``total_requests`` and ``connections`` (distinct client
  ``(host, port)`` pairs of ``/v1`` requests) since the reset, per *wall-clock* job-hour (the hours the
  triggers spent waiting, summed over triggers; multiply by ``--speed`` for simulated job-hours, shown too);
  requests per poll interval is ``total_requests / (run seconds / P)`` (the run is from the first trigger's
  start to the last event; the number of waiting triggers falls from N to 0 over it), and requests per
  trigger-interval is ``total_requests / (summed trigger seconds / P)``, what each waiting trigger costs;
* RSS per trigger: (peak RSS during the run - RSS before the first trigger) / N, with the peak both as
  sampled VmRSS and as the kernel's VmHWM. Modules are imported (and for the provider the connection looked
  up once) before the "before" figure; objects the first trigger makes for everyone (the shared client and
  its SSL context, the poller) are in the delta;
* CPU seconds of the worker (user + system, ``resource.getrusage``) from the first trigger to the end;
* for the provider, the poller's rounds (how many, how many requests each served, how long each took),
  timed by wrapping ``JobPoller._round`` (a timing wrapper; the poller does the same work).

The triggers' progress lines are rendered by Airflow's logging as usual and written to ``/dev/null``.

Finish times: the emulator's ``finished_at`` is whole seconds. A job's end is fixed when it is created:
``t0 + (validating + queued + running) / speed``, with the phase times of
:class:`~airflow_provider_finetune.emulator.config.Timings` and the step count of its plan
(:mod:`airflow_provider_finetune.emulator.trainer`, the emulator's own functions). ``t0`` is the emulator's
clock (the same system clock) while it handles the create request, so it lies between the request's send and
its answer: the benchmark takes the midpoint, and reports the half round trip as the uncertainty (a few ms).
After the run it checks every job's ``finished_at`` against the computed time.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import IO, Any

import httpx
import psutil
from bench_emulator import free_port, training_file  # the folder of this script is on sys.path

API_KEY = "sk-bench"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
KINDS = ("provider", "sync_in_async", "session_per_poll")
TERMINAL = ("succeeded", "failed", "cancelled")
#: Training files: this many examples (= training steps with one epoch and batch size 1), inclusive.
MIN_EXAMPLES, MAX_EXAMPLES = 60, 240
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 1}
#: How many requests the benchmark's own client keeps in flight while it creates the jobs.
CREATE_CONCURRENCY = 4
MONITOR_TICK = 0.010
RSS_TICK = 0.100


# ---------------------------------------------------------------------------------------------------------
# The baselines
# ---------------------------------------------------------------------------------------------------------


def _trigger_base() -> Any:
    from airflow.triggers.base import BaseTrigger

    return BaseTrigger


class _BaselineMixin:
    """What both baselines share: the job, where the API is, and the payload of their one event."""

    job_id: str
    base_url: str
    api_key: str
    poll_interval: float

    def _setup(self, job_id: str, *, base_url: str, api_key: str, poll_interval: float) -> None:
        self.job_id = job_id
        self.base_url = base_url
        self.api_key = api_key
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"job_id": self.job_id, "base_url": self.base_url, "poll_interval": self.poll_interval},
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def _event(self, status: str, message: str) -> Any:
        from airflow.triggers.base import TriggerEvent

        return TriggerEvent({"status": status, "job_id": self.job_id, "message": message})


def make_baselines() -> tuple[type, type]:
    """The two baseline trigger classes (made on demand: Airflow is imported in the worker only)."""
    base = _trigger_base()

    class SyncInAsyncTrigger(_BaselineMixin, base):  # type: ignore[misc, valid-type]
        """``OpenAIBatchTrigger``'s design: a synchronous client called inside ``async def run()``.

        One ``httpx.Client`` per trigger, made on the first poll and kept (``OpenAIHook.conn`` is a cached
        ``OpenAI`` client, whose ``httpx.Client`` keeps its connection), one blocking GET per poll, then
        ``await asyncio.sleep(poll_interval)``.
        """

        def __init__(self, job_id: str, *, base_url: str, api_key: str, poll_interval: float) -> None:
            super().__init__()
            self._setup(job_id, base_url=base_url, api_key=api_key, poll_interval=poll_interval)

        async def run(self) -> AsyncIterator[Any]:
            client = httpx.Client(base_url=self.base_url + "/", headers=self._headers(), timeout=60)
            try:
                while True:
                    # The point of this baseline: a blocking call in the event loop.
                    job = client.get(f"fine_tuning/jobs/{self.job_id}").raise_for_status().json()  # noqa: ASYNC212
                    if job["status"] in TERMINAL:
                        yield self._event(job["status"], f"Job {self.job_id} is {job['status']}")
                        return
                    await asyncio.sleep(self.poll_interval)
            except Exception as err:  # as OpenAIBatchTrigger does: any failure is an error event
                yield self._event("error", str(err))
            finally:
                client.close()  # noqa: ASYNC212

    class SessionPerPollTrigger(_BaselineMixin, base):  # type: ignore[misc, valid-type]
        """An async trigger that opens a new client (and so a new connection) for every poll."""

        def __init__(self, job_id: str, *, base_url: str, api_key: str, poll_interval: float) -> None:
            super().__init__()
            self._setup(job_id, base_url=base_url, api_key=api_key, poll_interval=poll_interval)

        async def run(self) -> AsyncIterator[Any]:
            try:
                while True:
                    async with httpx.AsyncClient(
                        base_url=self.base_url + "/", headers=self._headers(), timeout=60
                    ) as client:
                        response = await client.get(f"fine_tuning/jobs/{self.job_id}")
                    job = response.raise_for_status().json()
                    if job["status"] in TERMINAL:
                        yield self._event(job["status"], f"Job {self.job_id} is {job['status']}")
                        return
                    await asyncio.sleep(self.poll_interval)
            except Exception as err:
                yield self._event("error", str(err))

    return SyncInAsyncTrigger, SessionPerPollTrigger


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def vm_kib(key: str) -> int:
    """A ``Vm*`` figure of this process from /proc/self/status, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss() -> bool:
    """Set VmHWM back to the current RSS (Linux 4.0+); False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def _kind(thing: object) -> str:
    """A census name: the type, and for a list or a dict its size (up to 3) and the type of its first item or key."""
    name = type(thing).__qualname__
    if isinstance(thing, list | dict):
        size = str(len(thing)) if len(thing) < 4 else "n"
        first = type(next(iter(thing))).__qualname__ if thing else ""
        name += f"[{size}:{first}]"
    return name


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def job_seconds(examples: int, speed: float) -> float:
    """Wall seconds from a job's creation to its end, by the emulator's own plan and timings."""
    from airflow_provider_finetune.emulator.config import Timings
    from airflow_provider_finetune.emulator.trainer import (
        durations,
        plan_training,
        requested_hyperparameters,
        resolve_hyperparameters,
    )

    resolved = resolve_hyperparameters(requested_hyperparameters("supervised", HYPERPARAMETERS), examples)
    steps = plan_training(resolved, examples, 0, force_failure=False)["steps"]
    spans = durations(Timings(), speed, steps)
    return float(spans["validating"] + spans["queued"] + spans["running"])


def r(value: float, digits: int = 2) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, digits)


# ---------------------------------------------------------------------------------------------------------
# The worker: runs the triggers of one (kind, N) in its own process
# ---------------------------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> int:
    """Run one set of triggers; talk to the parent over the original stdout, send the triggers' logs away."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # Airflow's structlog renders the triggers' progress lines to stdout: rendered, dropped
    try:
        result = asyncio.run(worker_main(args, channel))
    except BaseException:
        channel.write(json.dumps({"error": traceback.format_exc()}) + "\n")
        return 1
    channel.write(json.dumps(result) + "\n")
    return 0


async def worker_main(args: argparse.Namespace, channel: IO[str]) -> dict[str, Any]:
    kind = args.worker
    # Everything any kind imports, before the "before" RSS: imports are a one-off, not a cost per trigger.
    from airflow.triggers.base import BaseTrigger, TriggerEvent  # noqa: F401

    if kind == "provider":
        import airflow_provider_finetune.models  # noqa: F401
        from airflow_provider_finetune.hooks.finetune import FineTuningHook
        from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger

        await FineTuningHook().asettings()  # the connection lookup's own imports; each trigger looks it up again
    else:
        sync_cls, session_cls = make_baselines()
        baseline = sync_cls if kind == "sync_in_async" else session_cls
    # One request with each kind of client (to the health check, which is not counted), throwaway clients:
    # the HTTP stack imports its transport modules on the first request.
    root = args.base_url.removesuffix("/v1")
    with httpx.Client() as client:
        client.get(root + "/_emulator/health").raise_for_status()  # noqa: ASYNC212 (nothing else runs yet)
    async with httpx.AsyncClient() as aclient:
        (await aclient.get(root + "/_emulator/health")).raise_for_status()

    # Diagnostics for the provider: how many coalesced rounds, how big, how long (a timing wrapper only).
    rounds: list[tuple[float, int]] = []
    if kind == "provider":
        from airflow_provider_finetune.triggers import poller as poller_module

        original_round = poller_module.JobPoller._round

        async def timed_round(self: Any, batch: list[Any], *args: Any) -> None:
            begun = time.perf_counter()
            try:
                await original_round(self, batch, *args)
            finally:
                rounds.append((time.perf_counter() - begun, len(batch)))

        poller_module.JobPoller._round = timed_round  # type: ignore[method-assign]

    def make(job_id: str) -> Any:
        if kind == "provider":
            return FineTuningJobTrigger(job_id, poll_interval=args.poll_interval)
        return baseline(job_id, base_url=args.base_url, api_key=API_KEY, poll_interval=args.poll_interval)

    gc.collect()
    channel.write("ready\n")
    spec = json.loads(sys.stdin.readline())
    jobs: list[tuple[str, float]] = [(job_id, finish) for job_id, finish in spec["jobs"]]
    cut_at: float = spec["cut_at"]

    gc.collect()
    if args.gc_freeze:
        gc.freeze()
    rss_before = vm_kib("VmRSS")
    hwm_reset = reset_peak_rss()
    fired: dict[str, tuple[float, str]] = {}
    ticks: list[tuple[float, float]] = []  # (woke at, how late)
    pauses: list[tuple[float, float, int]] = []  # garbage collections: (started, seconds, generation)
    gc_started = 0.0
    rss_peak = rss_before
    stop = asyncio.Event()

    # --gc-census: the types young collections moved into the oldest generation, between two full collections
    # (each one counts towards the next full collection, however soon it dies).
    census: list[dict[str, Any]] = []
    promoted: Counter[str] = Counter()
    oldest_before = 0

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        nonlocal gc_started, oldest_before, promoted
        if args.gc_census and info["generation"] == 1:
            if phase == "start":
                oldest_before = len(gc.get_objects(generation=2))
            else:
                promoted.update(_kind(o) for o in gc.get_objects(generation=2)[oldest_before:])
        if phase == "start":
            if args.gc_census and info["generation"] == 2:
                census.append({"promoted": sum(promoted.values()), "top": dict(promoted.most_common(15))})
                promoted = Counter()
            gc_started = time.perf_counter()
        else:
            pauses.append((gc_started, time.perf_counter() - gc_started, info["generation"]))

    async def monitor() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(MONITOR_TICK)
            woke = time.perf_counter()
            ticks.append((woke, woke - started - MONITOR_TICK))

    async def sampler() -> None:
        nonlocal rss_peak
        while not stop.is_set():
            rss_peak = max(rss_peak, vm_kib("VmRSS"))
            await asyncio.sleep(RSS_TICK)

    finished = 0
    all_done = asyncio.Event()

    async def drive(trigger: Any, job_id: str) -> None:
        nonlocal finished
        try:
            async for event in trigger.run():
                if job_id not in fired:
                    fired[job_id] = (time.time(), str(event.payload.get("status")))
        finally:
            finished += 1
            if finished == len(jobs):
                all_done.set()

    cpu_before, process_before = cpu_seconds(), time.process_time()
    started, begun_perf = time.time(), time.perf_counter()
    gc.callbacks.append(on_gc)
    helpers = [asyncio.create_task(monitor()), asyncio.create_task(sampler())]
    tasks: list[asyncio.Task[None]] = []

    async def create_all() -> None:
        for job_id, _ in jobs:
            await asyncio.sleep(0)  # as the triggerer's create_triggers does between two triggers
            tasks.append(asyncio.create_task(drive(make(job_id), job_id), name=job_id))

    creator = asyncio.create_task(create_all())
    # Until every trigger is done, or the cut (which a blocked loop can only notice late).
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(all_done.wait(), timeout=max(cut_at - time.time(), 0.1))
    cut = time.time()
    creator.cancel()
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(creator, *pending, return_exceptions=True)
    errors = [repr(t.exception()) for t in tasks if not t.cancelled() and t.exception() is not None]
    stop.set()
    await asyncio.gather(*helpers)
    gc.callbacks.remove(on_gc)
    cpu = cpu_seconds() - cpu_before
    process_cpu = time.process_time() - process_before
    rss_peak = max(rss_peak, vm_kib("VmRSS"))
    hwm = vm_kib("VmHWM")
    ended = max((t for t, _ in fired.values()), default=cut) if not pending else cut

    latencies, waited = [], 0.0
    for job_id, finish in jobs:
        if job_id in fired:  # (a trigger never created before the cut counts as waiting since the start)
            latencies.append(fired[job_id][0] - finish)
            waited += fired[job_id][0] - started
        else:
            latencies.append(cut - finish)  # censored: at least this late
            waited += cut - started
    stalls = [late for _, late in ticks]
    # How late each tick would have been without the garbage collector's pauses inside it.
    pauses.sort()
    gc_starts = [start for start, _, _ in pauses]
    without_gc = []
    for woke, late in ticks:
        begun = woke - late - MONITOR_TICK
        inside = sum(
            min(start + length, woke) - max(start, begun)
            for start, length, _ in pauses[
                max(0, bisect.bisect_left(gc_starts, begun) - 1) : bisect.bisect_right(gc_starts, woke)
            ]
            if start + length > begun
        )
        without_gc.append(late - inside)
    full = [length for _, length, generation in pauses if generation == 2]
    return {
        "started": started,
        "ended": ended,
        "fired": len(fired),
        "censored": len(jobs) - len(fired),
        "statuses": dict(Counter(status for _, status in fired.values())),
        "task_errors": errors[:5],
        "latencies": latencies,
        "trigger_seconds": waited,
        "stalls": {
            "max_ms": max(stalls) * 1000,
            "p99_ms": percentile(stalls, 0.99) * 1000,
            "p50_ms": percentile(stalls, 0.50) * 1000,
            "over_50ms": sum(1 for s in stalls if s >= 0.050),
            "samples": len(stalls),
            "max_ms_without_gc": max(without_gc) * 1000,
            # When it came, seconds from the first trigger's start (creating N triggers comes first).
            "max_without_gc_at_s": ticks[without_gc.index(max(without_gc))][0] - begun_perf,
            "p99_ms_without_gc": percentile(without_gc, 0.99) * 1000,
        },
        "gc": {
            "collections": len(pauses),
            "full_collections": len(full),
            "full_max_ms": max(full, default=0.0) * 1000,
            "max_ms": max((length for _, length, _ in pauses), default=0.0) * 1000,
            "total_ms": sum(length for _, length, _ in pauses) * 1000,
            # When each full collection came, seconds from the first trigger's start (creating N triggers first).
            "full_at_s": [round(start - begun_perf, 1) for start, _, generation in pauses if generation == 2],
            "frozen": args.gc_freeze,
            "census": census,
        },
        "poller_rounds": {
            "rounds": len(rounds),
            "batch_p50": percentile([b for _, b in rounds], 0.5),
            "batch_max": max((b for _, b in rounds), default=0),
            "seconds_p50": percentile([t for t, _ in rounds], 0.5),
            "seconds_max": max((t for t, _ in rounds), default=0.0),
        }
        if rounds
        else None,
        "rss_before_kib": rss_before,
        "rss_peak_sampled_kib": rss_peak,
        "rss_hwm_kib": hwm if hwm_reset else None,
        "cpu_seconds": cpu,
        "process_time": process_cpu,
    }


# ---------------------------------------------------------------------------------------------------------
# The parent: emulator, jobs, one worker per run, figures
# ---------------------------------------------------------------------------------------------------------


def emulator_command(port: int, speed: float, latency: float) -> list[str]:
    cli = shutil.which("finetune-emulator", path=os.path.dirname(sys.executable))
    head = [cli] if cli else [sys.executable, "-m", "airflow_provider_finetune.emulator"]
    return [*head, "--port", str(port), "--speed", str(speed), "--api-key", API_KEY, "--latency", str(latency)]


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the emulator exited with status {process.returncode}")
        try:
            if httpx.get(url + "/_emulator/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the emulator did not start")


async def upload_files(client: httpx.AsyncClient) -> dict[int, str]:
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def upload(examples: int) -> tuple[int, str]:
        async with gate:
            response = await client.post(
                "files",
                files={"file": (f"train-{examples}.jsonl", training_file(examples))},
                data={"purpose": "fine-tune"},
            )
        return examples, str(response.raise_for_status().json()["id"])

    return dict(await asyncio.gather(*(upload(e) for e in range(MIN_EXAMPLES, MAX_EXAMPLES + 1))))


async def create_jobs(
    client: httpx.AsyncClient, files: dict[int, str], count: int, speed: float, seed: int
) -> tuple[list[tuple[str, float]], list[float], float]:
    """Create the jobs; return (id, computed finish) pairs, the t0 uncertainties, and the time it took."""
    rng = random.Random(seed)
    sizes = [rng.randint(MIN_EXAMPLES, MAX_EXAMPLES) for _ in range(count)]
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def create(index: int) -> tuple[str, float, float]:
        body = {
            "model": "gpt-4o-mini",
            "training_file": files[sizes[index]],
            "suffix": "bench",
            "method": {"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},
            "metadata": {"n": str(index)},
        }
        async with gate:
            sent = time.time()
            response = await client.post("fine_tuning/jobs", json=body)
            answered = time.time()
        job = response.raise_for_status().json()
        t0 = (sent + answered) / 2
        return str(job["id"]), t0 + job_seconds(sizes[index], speed), (answered - sent) / 2

    begun = time.perf_counter()
    made = await asyncio.gather(*(create(i) for i in range(count)))
    return [(j, f) for j, f, _ in made], [u for _, _, u in made], time.perf_counter() - begun


async def finished_at(client: httpx.AsyncClient) -> dict[str, int | None]:
    seen: dict[str, int | None] = {}
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = (await client.get("fine_tuning/jobs", params=params)).raise_for_status().json()
        seen.update((job["id"], job["finished_at"]) for job in page["data"])
        if not page["has_more"]:
            return seen
        params["after"] = page["data"][-1]["id"]


#: The connection of the provider's triggers per ``--service``: the jobs are the same (the emulator keeps one
#: store behind every dialect), read through OpenAI's API or one of Azure's.
SERVICES = {
    "openai": {},
    "azure": {"service": "azure", "api_version": "2024-10-21"},
    "azure-v1": {"service": "azure"},
}


def connection(service: str, root: str, api: str) -> dict[str, Any]:
    """The triggers' connection to the emulator for ``service``."""
    if service == "openai":
        return {"conn_type": "finetune", "host": api, "password": API_KEY}
    return {"conn_type": "finetune", "host": root, "password": API_KEY, "extra": SERVICES[service]}


def run_one(args: argparse.Namespace, kind: str, count: int, latency: float) -> dict[str, Any]:
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    api = root + "/v1"
    emulator = subprocess.Popen(
        emulator_command(port, args.speed, latency), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    worker_process: subprocess.Popen[str] | None = None
    with tempfile.TemporaryFile(mode="w+") as errors:
        try:
            wait_ready(root, emulator)
            server = psutil.Process(emulator.pid)
            env = dict(os.environ)
            env["AIRFLOW_CONN_FINETUNE_DEFAULT"] = json.dumps(connection(args.service, root, api))
            command = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--base-url", api]
            command += ["--poll-interval", str(args.poll_interval)] + (["--gc-freeze"] if args.gc_freeze else [])
            command += ["--gc-census"] if args.gc_census else []
            worker_process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, env=env, text=True
            )

            async def prepare() -> tuple[list[tuple[str, float]], list[float], float]:
                async with httpx.AsyncClient(base_url=api + "/", headers=HEADERS, timeout=60) as client:
                    files = await upload_files(client)
                    await client.post(root + "/_emulator/faults", json={"latency": 0.0})  # exact t0 while creating
                    # One job first, so that the emulator's own first-request work is not inside a measured create;
                    # a second later, so that it is older (whole seconds) than every measured job.
                    await create_jobs(client, files, 1, args.speed, args.seed)
                    await asyncio.sleep(1.1)
                    made = await create_jobs(client, files, count, args.speed, args.seed)
                    await client.post(root + "/_emulator/faults", json={"latency": latency})
                    return made

            assert worker_process.stdin is not None
            assert worker_process.stdout is not None
            ready = worker_process.stdout.readline()
            if ready.strip() != "ready":
                raise RuntimeError(f"the {kind} worker did not start: {ready[:2000]}")
            jobs, uncertainty, create_seconds = asyncio.run(prepare())
            httpx.post(root + "/_emulator/reset", headers=HEADERS).raise_for_status()
            cut_at = max(f for _, f in jobs) + args.grace
            server_cpu_before = sum(server.cpu_times()[:2])
            worker_process.stdin.write(json.dumps({"jobs": jobs, "cut_at": cut_at}) + "\n")
            worker_process.stdin.flush()
            line = worker_process.stdout.readline()
            server_cpu = sum(server.cpu_times()[:2]) - server_cpu_before
            worker_process.wait(timeout=60)
            if not line:
                errors.seek(0)
                raise RuntimeError(f"the {kind} worker died: {errors.read()[-4000:]}")
            figures = json.loads(line)
            if "error" in figures:
                raise RuntimeError(f"the {kind} worker failed:\n{figures['error']}")
            counters = httpx.get(root + "/_emulator/counters", headers=HEADERS).json()

            async def check() -> dict[str, int | None]:
                async with httpx.AsyncClient(base_url=api + "/", headers=HEADERS, timeout=60) as client:
                    return await finished_at(client)

            reported = asyncio.run(check())
        finally:
            if worker_process is not None and worker_process.poll() is None:
                worker_process.kill()
                worker_process.wait()
            emulator.send_signal(signal.SIGINT)
            try:
                emulator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                emulator.kill()
    return summarise(
        args, kind, count, latency, jobs, uncertainty, create_seconds, figures, counters, reported, server_cpu
    )


def summarise(
    args: argparse.Namespace,
    kind: str,
    count: int,
    latency: float,
    jobs: list[tuple[str, float]],
    uncertainty: list[float],
    create_seconds: float,
    figures: dict[str, Any],
    counters: dict[str, Any],
    reported: dict[str, int | None],
    server_cpu: float,
) -> dict[str, Any]:
    poll = args.poll_interval
    run_seconds = figures["ended"] - figures["started"]
    job_hours = figures["trigger_seconds"] / 3600
    requests, connections = counters["total_requests"], counters["connections"]
    latencies = figures["latencies"]
    rss_before = figures["rss_before_kib"]
    hwm = figures["rss_hwm_kib"]
    # The computed finish against the emulator's whole-second finished_at (within the t0 uncertainty).
    slack = max(uncertainty) + 1e-3
    consistent = 0
    for job_id, finish in jobs:
        seen = reported.get(job_id)
        if seen is not None and math.floor(finish - slack) <= seen <= math.floor(finish + slack):
            consistent += 1
    return {
        "kind": kind,
        "n": count,
        "latency_s": latency,
        "poll_interval_s": poll,
        "speed": args.speed,
        "create_seconds": r(create_seconds),
        "run_seconds": r(run_seconds, 1),
        "fired": figures["fired"],
        "censored": figures["censored"],
        "statuses": figures["statuses"],
        "task_errors": figures["task_errors"],
        "loop_stall_ms": {k: (r(v, 1) if isinstance(v, float) else v) for k, v in figures["stalls"].items()},
        "gc": {k: (r(v, 1) if isinstance(v, float) else v) for k, v in figures["gc"].items()},
        "poller_rounds": figures["poller_rounds"]
        and {k: (r(v, 3) if isinstance(v, float) else v) for k, v in figures["poller_rounds"].items()},
        "notice_latency_s": {
            "p50": r(percentile(latencies, 0.50), 3),
            "p90": r(percentile(latencies, 0.90), 3),
            "p99": r(percentile(latencies, 0.99), 3),
            "max": r(max(latencies), 3),
            "min": r(min(latencies), 3),
            "censored": figures["censored"],
        },
        "requests": requests,
        "requests_by_route": counters["requests"],
        "answers_by_status": counters["statuses"],
        "connections": connections,
        "job_hours_wall": r(job_hours, 3),
        "requests_per_job_hour_wall": r(requests / job_hours, 0),
        "requests_per_job_hour_simulated": r(requests / (job_hours * args.speed), 0),
        "connections_per_job_hour_wall": r(connections / job_hours, 1),
        "connections_per_job_hour_simulated": r(connections / (job_hours * args.speed), 1),
        "connections_per_100_triggers": r(100 * connections / count, 2),
        "requests_per_poll_interval": r(requests / (run_seconds / poll), 1),
        "requests_per_trigger_interval": r(requests / (figures["trigger_seconds"] / poll), 3),
        "rss": {
            "before_mib": r(rss_before / 1024, 1),
            "peak_sampled_mib": r(figures["rss_peak_sampled_kib"] / 1024, 1),
            "peak_hwm_mib": r(hwm / 1024, 1) if hwm else None,
            "per_trigger_kib_sampled": r((figures["rss_peak_sampled_kib"] - rss_before) / count, 2),
            "per_trigger_kib_hwm": r((hwm - rss_before) / count, 2) if hwm else None,
        },
        "cpu_seconds": r(figures["cpu_seconds"], 2),
        "cpu_ms_per_trigger": r(1000 * figures["cpu_seconds"] / count, 2),
        "emulator_cpu_seconds": r(server_cpu, 2),
        "finish_check": {
            "t0_uncertainty_ms_max": r(max(uncertainty) * 1000, 1),
            "t0_uncertainty_ms_p50": r(percentile(uncertainty, 0.5) * 1000, 2),
            "finished_at_consistent": f"{consistent}/{count}",
        },
    }


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'kind':<17} {'N':>5} {'lat':>4} | {'stall max':>9} {'p99':>6} {'no-GC max':>9} {'GC2 max':>7} | "
        f"{'notice p50':>10} {'p99':>7} "
        f"{'cens':>5} | {'req/int':>8} {'req/trig-int':>12} {'req/job-h':>9} | {'conns':>6} {'conn/job-h':>10} | "
        f"{'KiB/trig pk':>11} {'hwm':>7} | {'CPU s':>6} {'emu CPU':>7} | {'run s':>5}"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        rss = res["rss"]
        lines.append(
            f"{res['kind']:<17} {res['n']:>5} {int(res['latency_s'] * 1000):>4} | "
            f"{res['loop_stall_ms']['max_ms']:>9.1f} {res['loop_stall_ms']['p99_ms']:>6.1f} "
            f"{res['loop_stall_ms']['max_ms_without_gc']:>9.1f} {res['gc']['full_max_ms']:>7.1f} | "
            f"{res['notice_latency_s']['p50']:>10.3f} {res['notice_latency_s']['p99']:>7.3f} {res['censored']:>5} | "
            f"{res['requests_per_poll_interval']:>8.1f} {res['requests_per_trigger_interval']:>12.3f} "
            f"{res['requests_per_job_hour_wall']:>9.0f} | {res['connections']:>6} "
            f"{res['connections_per_job_hour_wall']:>10.1f} | {rss['per_trigger_kib_sampled']:>11.2f} "
            f"{(rss['per_trigger_kib_hwm'] if rss['per_trigger_kib_hwm'] is not None else math.nan):>7.2f} | "
            f"{res['cpu_seconds']:>6.2f} {res['emulator_cpu_seconds']:>7.2f} | {res['run_seconds']:>5.1f}"
        )
    return "\n".join(lines)


def stalls(results: list[dict[str, Any]]) -> str:
    """The provider's longest loop stall at each N and latency, with and without the collector's pauses."""
    lines = [
        "\nLongest loop stall, provider's trigger (target < 50 ms; full collections sweep the whole heap):",
        f"  {'N':>5} {'lat ms':>6} | {'stall max':>9} {'without GC':>10} | {'full GCs':>8} {'longest':>7} "
        f"{'at s':<18} | {'frozen':>6} | load before/after",
    ]
    for res in results:
        if res["kind"] != "provider":
            continue
        gc_figures, stall = res["gc"], res["loop_stall_ms"]
        at = ",".join(f"{t:g}" for t in gc_figures.get("full_at_s", []))[:18]
        lines.append(
            f"  {res['n']:>5} {int(res['latency_s'] * 1000):>6} | {stall['max_ms']:>9.1f} "
            f"{stall['max_ms_without_gc']:>10.1f} | {gc_figures['full_collections']:>8} "
            f"{gc_figures['full_max_ms']:>7.1f} {at:<18} | {gc_figures['frozen']!s:>6} | "
            f"{res['load_1min'][0]:.2f}/{res['load_1min'][1]:.2f}"
        )
    return "\n".join(lines)


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Baseline / provider, for each (N, latency) that has both."""
    provider = {(x["n"], x["latency_s"]): x for x in results if x["kind"] == "provider"}
    rows = []
    for res in results:
        mine = provider.get((res["n"], res["latency_s"]))
        if res["kind"] == "provider" or mine is None:
            continue

        def ratio(a: float | None, b: float | None) -> float | None:
            return None if a is None or not b else r(a / b, 1)

        rows.append(
            {
                "baseline": res["kind"],
                "n": res["n"],
                "latency_s": res["latency_s"],
                "stall_max": ratio(res["loop_stall_ms"]["max_ms"], mine["loop_stall_ms"]["max_ms"]),
                "stall_p99": ratio(res["loop_stall_ms"]["p99_ms"], mine["loop_stall_ms"]["p99_ms"]),
                "requests_per_job_hour": ratio(res["requests_per_job_hour_wall"], mine["requests_per_job_hour_wall"]),
                "connections": ratio(res["connections"], mine["connections"]),
                "cpu_seconds": ratio(res["cpu_seconds"], mine["cpu_seconds"]),
                "cpu_per_job_hour": ratio(
                    res["cpu_seconds"] / res["job_hours_wall"], mine["cpu_seconds"] / mine["job_hours_wall"]
                ),
                "rss_per_trigger": ratio(res["rss"]["per_trigger_kib_sampled"], mine["rss"]["per_trigger_kib_sampled"]),
                "notice_p99": ratio(res["notice_latency_s"]["p99"], mine["notice_latency_s"]["p99"]),
                # Triggers that had not fired at the cut (baseline, provider): a baseline that never got round
                # to polling makes few requests, so its request and CPU ratios flatter it.
                "censored": f"{res['censored']}/{mine['censored']}",
            }
        )
    return rows


def targets(results: list[dict[str, Any]], poll: float) -> list[tuple[str, str, str, bool]]:
    """The issue's targets at N = 1,000, for the provider's trigger, at each latency run."""
    checks = []
    for res in results:
        if res["kind"] != "provider" or res["n"] != 1000:
            continue
        at = f"N=1000, {int(res['latency_s'] * 1000)} ms"
        n = res["n"]
        rss = res["rss"]
        per_trigger = max(v for v in (rss["per_trigger_kib_sampled"], rss["per_trigger_kib_hwm"]) if v is not None)
        checks += [
            (
                at,
                "longest loop stall < 50 ms",
                f"{res['loop_stall_ms']['max_ms']:.1f} ms",
                res["loop_stall_ms"]["max_ms"] < 50,
            ),
            (
                at,
                "<= 1 TCP connection per 100 triggers",
                f"{res['connections']} connections ({res['connections_per_100_triggers']:.2f} per 100)",
                res["connections"] <= n / 100,
            ),
            (at, "<= 20 KiB RSS per trigger (peak)", f"{per_trigger:.2f} KiB", per_trigger <= 20),
            (
                at,
                f"requests per poll interval <= N/20 = {n / 20:g}",
                f"{res['requests_per_poll_interval']:.1f} ({res['requests_per_trigger_interval']:.3f} per trigger)",
                res["requests_per_poll_interval"] <= n / 20,
            ),
            (
                at,
                f"p99 notice latency <= poll interval ({poll:g} s)",
                f"{res['notice_latency_s']['p99']:.3f} s",
                res["notice_latency_s"]["p99"] <= poll and res["censored"] == 0,
            ),
        ]
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n", type=int, nargs="+", default=[100, 1000, 5000], help="trigger counts (default: %(default)s)"
    )
    parser.add_argument(
        "--latency", type=float, nargs="+", default=[0.0, 0.1], help="emulator latency, seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=2.0, help="trigger poll interval P (default: %(default)s)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=5.0,
        help="emulator speed: jobs end 7.6 s to 25.6 s after creation at 5 (default: %(default)s)",
    )
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="trigger kinds (default: all)")
    parser.add_argument(
        "--baseline-n",
        type=int,
        nargs="+",
        default=[100, 1000],
        help="N at which the baselines run (default: %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=8.0,
        help="seconds after the last job's finish at which a run is cut (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the training-file sizes (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="only N=1000 at latency 0 (every kind)")
    parser.add_argument(
        "--service",
        choices=list(SERVICES),
        default="openai",
        help="the dialect the provider's triggers poll through (baselines: always OpenAI's; default: %(default)s)",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() in the worker after its imports (Airflow's triggerer does not; its dag processor does)",
    )
    parser.add_argument(
        "--gc-census",
        action="store_true",
        help="diagnosis only (it stalls the loop, and lists objects from the collector's callback, which can catch "
        "a tuple being resized and fail): the types that reached the oldest generation before each full collection",
    )
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.n, args.latency, args.baseline_n = [1000], [0.0], [1000]

    begun = time.perf_counter()
    results = []
    for latency in args.latency:
        for count in args.n:
            for kind in args.kinds:
                if kind != "provider" and count not in args.baseline_n:
                    continue
                load_before = os.getloadavg()[0]
                result = run_one(args, kind, count, latency)
                # The machine's 1-minute load around the run: figures taken on a busy machine are only indicative.
                result["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
                results.append(result)
                print(json.dumps(result), flush=True)

    print()
    print(table(results))
    rows = ratios(results)
    if rows:
        print("\nBaseline / provider ratios (same N and latency; > 1 means the baseline costs more):")
        for row in rows:
            print("  " + json.dumps(row))
    print(stalls(results))
    checks = targets(results, args.poll_interval)
    if checks:
        print("\nTargets at N = 1,000 (provider's trigger):")
        for at, name, figure, ok in checks:
            print(f"  {'PASS' if ok else 'FAIL'}  {at:<14} {name:<42} {figure}")
    print(f"\nservice: {args.service}")
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"cpus: {os.cpu_count()}, wall time: {time.perf_counter() - begun:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
