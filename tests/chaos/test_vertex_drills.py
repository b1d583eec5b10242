"""Fault drills on Vertex AI, as for the other services: 5xx, 429 with and without ``retry-after``, dropped
connections, create answers lost after the job was made, a worker killed right after its create.

Each drill runs the real :class:`FineTuningJobOperator` on the worker and deferred (its trigger built from what
the task sent, as a triggerer builds it) against the emulator's Vertex dialect and a Cloud Storage emulator, with
the emulator's fault injection set through ``POST /_emulator/faults``. The proofs, read back through the
emulator's REST API with no fault: every task returns its job's tuned model, the emulator holds exactly one job
per task instance (the one its label names), and no job was cancelled. Each drill prints one line of figures
(``pytest -s``): tasks, tries, requests the provider sent, faults, jobs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.core.client import RetryPolicy, close_shared_async_clients
from airflow_provider_finetune.emulator import EmulatorApp, EmulatorConfig, EmulatorServer
from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.hooks.finetune import TASK_TAG_KEY, FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator, task_tag
from tests.chaos.conftest import FakeTI, TaskDeferred, fresh_trigger, serving, set_connection
from tests.emulator.test_vertex import LOCATION, PROJECT, TOKEN, Storage, sft_rows, storage
from tests.operators.conftest import FakeStateStore

__all__ = ["storage"]  # a fixture, used by name

pytestmark = pytest.mark.integration

CONN_ID = "finetune_vertex_drill"
MODEL = "gemini-2.5-flash"
#: Concurrent task instances of one drill, each with its own run id.
TASKS = 3
#: The emulator's speed: a small Vertex job (8 s pending, 30 s training at speed 1) takes under a second.
SPEED = 50.0
#: The worker's backoff where the service names no wait: short, so that a drill takes seconds.
FAST = RetryPolicy(initial_delay=0.02, max_delay=0.2)
#: How long a task may wait for its job: an absolute deadline, far beyond a drill's few seconds.
TIMEOUT = timedelta(minutes=4)
JOBS = f"/vertex/v1/projects/{PROJECT}/locations/{LOCATION}/tuningJobs"
EVERY = r"^[A-Z]+ /vertex/"
CREATE = r"^POST /vertex/v1/projects/[^/]+/locations/[^/]+/tuningJobs$"
NO_FAULTS: dict[str, Any] = {
    "error_rate": 0.0,
    "rate_limit_rate": 0.0,
    "drop_rate": 0.0,
    "after_processing": False,
    "match": None,
}
SERVER_ERRORS = ("500", "502", "503")
PROVIDER = b"airflow-provider-finetune/"


# ---------------------------------------------------------------------------------------------------------
# The emulator, with a layer that counts the provider's requests
# ---------------------------------------------------------------------------------------------------------


def _operation(method: str, path: str) -> str:
    """``create``, ``list``, ``get`` or ``cancel``, from a Vertex request's method and path."""
    if path.endswith(":cancel"):
        return "cancel"
    if path.rstrip("/").endswith("/tuningJobs"):
        return "create" if method == "POST" else "list"
    return "get" if "/tuningJobs/" in path else f"{method} other"


class VertexWire:
    """An ASGI layer outside the fault injection: counts every Vertex request of the provider that reaches the
    server (faulted or not), and with ``bare_429`` takes ``retry-after``, ``retry-after-ms`` and ``x-ratelimit-*``
    off 429 answers, so that the client's own backoff decides when to send again.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: Counter[str] = Counter()
        self.bare_429 = False
        self.stripped = 0

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/vertex/"):
            await self.app(scope, receive, send)
            return
        agent = dict(scope.get("headers") or []).get(b"user-agent", b"")
        if agent.startswith(PROVIDER):
            self.requests[_operation(scope["method"], scope["path"])] += 1
        if not self.bare_429:
            await self.app(scope, receive, send)
            return

        async def bare(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 429:
                headers = message.get("headers") or []
                kept = [(k, v) for k, v in headers if not k.lower().startswith((b"retry-after", b"x-ratelimit-"))]
                self.stripped += len(kept) < len(headers)
                message = {**message, "headers": kept}
            await send(message)

        await self.app(scope, receive, bare)


@dataclass
class Vertex:
    """A running emulator with its Vertex layer, and the training data's URI."""

    server: EmulatorServer
    wire: VertexWire
    training_file: str

    def faults(self, **settings: Any) -> None:
        """Set the fault injection through the emulator's admin API (the generator restarts from its seed)."""
        answer = httpx.post(
            f"{self.server.url}/_emulator/faults", json=settings, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        answer.raise_for_status()

    def injected(self) -> dict[str, int]:
        """The faults injected so far, by kind."""
        return {kind: count for kind, count in self.server.emulator.counters.faults.items() if count}

    def jobs(self) -> list[dict[str, Any]]:
        """Every tuning job, read through the emulator's REST API with the faults off."""
        self.faults(**NO_FAULTS)
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"pageSize": 100}
        with httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            while True:
                answer = http.get(JOBS, params=params)
                answer.raise_for_status()
                page = answer.json()
                found += page.get("tuningJobs", [])
                if not page.get("nextPageToken"):
                    return found
                params["pageToken"] = page["nextPageToken"]


@pytest.fixture(scope="module")
def training_uri(storage: Storage) -> str:
    return storage.put("drills/train.jsonl", sft_rows(12))


@pytest.fixture
def vertex(storage: Storage, training_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Vertex]:
    layers: list[VertexWire] = []

    def counted(app: EmulatorApp) -> None:
        layers.append(VertexWire(app.app))
        app.app = layers[0]

    config = EmulatorConfig(api_key=TOKEN, gcs_endpoint=storage.url, speed=SPEED, seed=7)
    with serving(config, counted) as server:
        set_connection(
            monkeypatch, CONN_ID, f"{server.url}/vertex", TOKEN, service="vertex", project=PROJECT, location=LOCATION
        )
        yield Vertex(server, layers[0], training_uri)


# ---------------------------------------------------------------------------------------------------------
# Tasks, on the worker and deferred
# ---------------------------------------------------------------------------------------------------------


def operator(training_file: str, *, deferrable: bool) -> FineTuningJobOperator:
    op = FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=training_file,
        finetune_conn_id=CONN_ID,
        deferrable=deferrable,
        poll_interval=0.2,
        timeout=TIMEOUT,
    )
    op.__dict__["hook"] = FineTuningHook(CONN_ID, max_retries=8, retry_policy=FAST)
    return op


@dataclass
class Task:
    """One task instance of a drill: its tries' contexts share the task instance's identity and state store."""

    run_id: str
    state: FakeStateStore | None = None
    ti: FakeTI = field(init=False)
    tries: int = 0
    model: str | None = None
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.ti = FakeTI(dag_id="vertex_drill", run_id=self.run_id)

    def context(self, ti: FakeTI | None = None) -> dict[str, Any]:
        """The context of the next try (``ti`` for one that differs from the task's own, e.g. one that dies)."""
        self.tries += 1
        if ti is None:
            self.ti.try_number = self.tries
        context: dict[str, Any] = {"ti": ti or self.ti}
        if self.state is not None:
            context["task_state_store"] = self.state
        return context


def on_worker(task: Task, training_file: str) -> None:
    op = operator(training_file, deferrable=False)
    try:
        task.model = op.execute(task.context())  # type: ignore[arg-type]
    except FineTuningError as err:
        task.error = err
    finally:
        op.hook.close()


def defer(task: Task, training_file: str) -> TaskDeferred | None:
    op = operator(training_file, deferrable=True)
    try:
        op.execute(task.context())  # type: ignore[arg-type]
    except TaskDeferred as deferred:
        return deferred
    except FineTuningError as err:
        task.error = err
    finally:
        op.hook.close()
    task.error = task.error or AssertionError("the task ended without deferring")
    return None


async def fire(triggers: list[Any]) -> list[list[dict[str, Any]]]:
    """Run the triggers in one event loop, as one triggerer runs them (they share its poller)."""

    async def events(trigger: Any) -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    try:
        return list(await asyncio.gather(*(events(trigger) for trigger in triggers)))
    finally:
        await close_shared_async_clients()


def resume(task: Task, training_file: str, deferred: TaskDeferred, payloads: list[dict[str, Any]]) -> None:
    """What the worker that resumes the task does: the deferred method on a fresh operator, with the event."""
    if len(payloads) != 1:
        task.error = AssertionError(f"the trigger fired {len(payloads)} events: {payloads}")
        return
    op = operator(training_file, deferrable=True)
    method = getattr(op, deferred.method_name)
    try:
        task.model = method({"ti": task.ti}, payloads[0], **(deferred.kwargs or {}))
    except FineTuningError as err:
        task.error = err
    finally:
        op.hook.close()


def run(tasks: list[Task], training_file: str, mode: str) -> None:
    """Run the tasks at once, to their end: each on a worker thread, or deferred and then resumed."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        if mode == "worker":
            list(pool.map(lambda task: on_worker(task, training_file), tasks))
            return
        deferrals = list(pool.map(lambda task: defer(task, training_file), tasks))
        waiting = [(task, d) for task, d in zip(tasks, deferrals, strict=True) if d is not None]
        fired = asyncio.run(fire([fresh_trigger(d) for _, d in waiting]))
        resumed = [
            pool.submit(resume, task, training_file, d, payloads)
            for (task, d), payloads in zip(waiting, fired, strict=True)
        ]
        for future in resumed:
            future.result()


# ---------------------------------------------------------------------------------------------------------
# Figures and proofs
# ---------------------------------------------------------------------------------------------------------


def figures(name: str, mode: str, vertex: Vertex, tasks: list[Task], jobs: list[dict[str, Any]], started: float) -> str:
    line = (
        f"[vertex fault drill] {name} ({mode}): tasks {len(tasks)}, tries {sum(t.tries for t in tasks)}, "
        f"requests {vertex.wire.total} {dict(sorted(vertex.wire.requests.items()))}, "
        f"faults {vertex.injected()}, jobs {len(jobs)}, failed {sum(t.error is not None for t in tasks)}, "
        f"{time.monotonic() - started:.1f} s"
    )
    print(line)
    return line


def assert_one_job_each_with_its_model(tasks: list[Task], jobs: list[dict[str, Any]], line: str) -> None:
    """No task failed; each holds exactly one job, the one its label names, succeeded with the model it returned."""
    assert [(t.run_id, repr(t.error)) for t in tasks if t.error is not None] == [], line
    tags = Counter((job.get("labels") or {}).get(TASK_TAG_KEY) for job in jobs)
    assert tags == Counter({task_tag({"ti": t.ti}): 1 for t in tasks}), line  # type: ignore[typeddict-item]
    by_name = {job["name"]: job for job in jobs}
    for t in tasks:
        job = by_name[t.ti.xcoms["job_id"]]
        assert job["labels"][TASK_TAG_KEY] == task_tag({"ti": t.ti}), line  # type: ignore[typeddict-item]
        assert job["state"] == "JOB_STATE_SUCCEEDED", (job["state"], line)
        assert t.model == job["tunedModel"]["model"] == t.ti.xcoms["fine_tuned_model"], line
        assert t.ti.xcoms["tuned_model_endpoint"] == job["tunedModel"]["endpoint"], line
        assert t.ti.xcoms["status"] == "succeeded", line


def assert_none_cancelled(vertex: Vertex, jobs: list[dict[str, Any]], line: str) -> None:
    assert vertex.wire.requests["cancel"] == 0, line
    assert [job["name"] for job in jobs if job["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")] == [], line


# ---------------------------------------------------------------------------------------------------------
# The drills
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drill:
    """One kind of fault, where it strikes, and the kinds of fault that must have struck.

    :param lost_creates: the fault loses every create's answer after the job was made: each task sends one create.
    """

    name: str
    faults: dict[str, Any]
    struck: tuple[str, ...]
    bare_429: bool = False
    lost_creates: bool = False


DRILLS = [
    Drill("5xx", {"seed": 11, "error_rate": 0.3, "match": EVERY}, SERVER_ERRORS),
    Drill("429 with retry-after", {"seed": 12, "rate_limit_rate": 0.3, "retry_after": 0.05, "match": EVERY}, ("429",)),
    Drill(
        "429 without retry-after",
        {"seed": 13, "rate_limit_rate": 0.3, "retry_after": 0.05, "match": EVERY},
        ("429",),
        bare_429=True,
    ),
    Drill("dropped connections", {"seed": 14, "drop_rate": 0.2, "match": EVERY}, ("drop",)),
    Drill(
        "lost create answer (5xx)",
        {"seed": 15, "error_rate": 1.0, "after_processing": True, "match": CREATE},
        SERVER_ERRORS,
        lost_creates=True,
    ),
    Drill(
        "lost create answer (dropped)",
        {"seed": 16, "drop_rate": 1.0, "after_processing": True, "match": CREATE},
        ("drop",),
        lost_creates=True,
    ),
]
MODES = ["worker", "deferred"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("drill", DRILLS, ids=[d.name for d in DRILLS])
def test_tasks_under_faults_end_with_their_model_and_one_job_each(vertex: Vertex, drill: Drill, mode: str) -> None:
    started = time.monotonic()
    vertex.wire.bare_429 = drill.bare_429
    vertex.faults(**drill.faults)
    tasks = [Task(f"drill__{drill.faults['seed']}_{mode}_{index}") for index in range(TASKS)]
    run(tasks, vertex.training_file, mode)
    injected = vertex.injected()
    jobs = vertex.jobs()
    line = figures(drill.name, mode, vertex, tasks, jobs, started)

    assert_one_job_each_with_its_model(tasks, jobs, line)
    assert_none_cancelled(vertex, jobs, line)
    assert vertex.server.emulator.counters.jobs_created == TASKS, line
    assert sum(injected.get(kind, 0) for kind in drill.struck) > 0, line
    if drill.bare_429:
        assert vertex.wire.stripped == injected["429"], line  # every 429 went without retry-after
    if drill.lost_creates:
        # Every create's answer was lost, and each task found the job it made instead of sending another.
        assert vertex.wire.requests["create"] == TASKS, line
        assert sum(injected.get(kind, 0) for kind in drill.struck) == TASKS, line


class KilledAtJobId(FakeStateStore):
    """A task state store whose worker dies as the job id is recorded: the service has made the job."""

    def set(self, key: str, value: Any) -> None:
        if key == "job_id" and value and "killed" not in self.values:
            self.values["killed"] = True
            raise SystemExit("worker killed")
        super().set(key, value)


class DiesAtFirstPush(FakeTI):
    """A task instance whose worker dies at its first XCom push (the job id, right after the create)."""

    def xcom_push(self, key: str, value: Any) -> None:
        raise SystemExit("worker killed")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("state_store", [True, False], ids=["intent-record", "no-state-store"])
def test_a_worker_killed_right_after_its_create_is_retried_onto_the_same_job(
    vertex: Vertex, state_store: bool, mode: str
) -> None:
    started = time.monotonic()
    vertex.faults(seed=17, error_rate=0.2, match=EVERY)
    task = Task(f"drill__killed_{mode}_{state_store}", state=KilledAtJobId() if state_store else None)
    first = operator(vertex.training_file, deferrable=mode == "deferred")
    dying = None if state_store else DiesAtFirstPush(dag_id=task.ti.dag_id, run_id=task.run_id)
    with pytest.raises(SystemExit):
        first.execute(task.context(dying))  # type: ignore[arg-type]
    first.hook.close()
    made_by_first_try = vertex.server.emulator.counters.jobs_created
    if task.state is not None:
        assert "intent" in task.state.values
        assert not task.state.values.get("job_id")
    assert "job_id" not in task.ti.xcoms

    # The retry: the same task instance (and state store), its next try.
    if mode == "worker":
        on_worker(task, vertex.training_file)
    else:
        deferred = defer(task, vertex.training_file)
        assert deferred is not None, task.error
        (payloads,) = asyncio.run(fire([fresh_trigger(deferred)]))
        resume(task, vertex.training_file, deferred, payloads)
    jobs = vertex.jobs()
    name = f"worker killed after create ({'intent record' if state_store else 'no state store'})"
    line = figures(name, mode, vertex, [task], jobs, started)

    assert made_by_first_try == 1, line
    assert vertex.server.emulator.counters.jobs_created == 1, line  # the retry made none
    assert task.tries == 2, line
    assert_one_job_each_with_its_model([task], jobs, line)
    assert_none_cancelled(vertex, jobs, line)
