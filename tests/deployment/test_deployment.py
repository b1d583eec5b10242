"""A real deployment: the installed provider in Airflow 3, started as a user would start it.

The test starts the fine-tuning emulator and Airflow's own processes (``airflow db migrate``, then
``api-server``, ``scheduler`` with the LocalExecutor, ``dag-processor`` and ``triggerer``) in an AIRFLOW_HOME
of its own, and drives them only through the REST API, the emulator's admin endpoints and the files the
processes write. It runs the example weekly retraining DAG twice:

1. a run that must succeed, with the create task deferred to the triggerer (a process of its own) and
   resumed from it, the fine-tuned model handed downstream through XCom, and the model published as an
   Asset event;
2. a run whose triggerer is restarted (SIGTERM, then a new ``airflow triggerer``) while the create task
   waits: it must still succeed, with exactly one job created and no cancel request.

Every process is stopped in the end, whatever happens; a failure prints the tails of their logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import pytest

from airflow_provider_finetune import __version__
from airflow_provider_finetune.hooks.finetune import TASK_TAG_KEY
from airflow_provider_finetune.operators.finetune import task_tag

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"
DAG_FILE = EXAMPLE_DAGS / "example_finetune_retraining.py"
DAG_ID = "example_finetune_retraining"
CREATE_TASK = "fine_tune"
EVALUATE_TASK = "evaluate"
PUBLISH_TASK = "publish"
ASSET_NAME = "finetune_support_assistant"

API_KEY = "sk-deployment-" + secrets.token_hex(8)
# Simulated seconds per second. The example's job (40 examples, 3 epochs: 120 steps) then takes about 23 s
# of wall clock: long enough to see the task deferred and to restart the triggerer in the middle of it.
EMULATOR_SPEED = 3.0
# The emulator's routes, as its counters name them.
CREATE_ROUTE = "POST /v1/fine_tuning/jobs"
CANCEL_ROUTE = "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel"

STARTUP_TIMEOUT = 120.0
RUN_TIMEOUT = 150.0
STOP_GRACE = 30.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int) -> str:
    """The last lines of a process's log, less the API server's access log (the test's own polling)."""
    if not path.exists():
        return f"(no {path.name})"
    text = [line for line in path.read_text(errors="replace").splitlines() if "[http.access]" not in line]
    return "\n".join(text[-lines:])


def log_events(path: Path) -> list[str]:
    """The messages of a task or trigger log file (JSON lines; a plain line is its own message)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            events.append(line)
            continue
        events.append(str(record.get("event", "")) if isinstance(record, dict) else line)
    return events


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class RunWatch:
    """What the test saw of a DAG run while it polled it: every state each task went through, in order."""

    run_id: str
    states: dict[str, list[str]] = field(default_factory=dict)
    state: str | None = None

    def saw(self, task_id: str, state: str | None) -> None:
        seen = self.states.setdefault(task_id, [])
        if state and (not seen or seen[-1] != state):
            seen.append(state)


class Deployment:
    """The emulator and Airflow's processes, in an AIRFLOW_HOME of their own under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "airflow-home"
        self.process_logs = root / "process-logs"
        self.dags = root / "dags"
        for folder in (self.home, self.process_logs, self.dags):
            folder.mkdir(parents=True)
        # Only the retraining DAG and its data: the other example DAGs are not this test's business.
        (self.dags / DAG_FILE.name).symlink_to(DAG_FILE)
        (self.dags / "data").symlink_to(EXAMPLE_DAGS / "data", target_is_directory=True)

        self.api_port = free_port()
        self.emulator_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.emulator_url = f"http://127.0.0.1:{self.emulator_port}"
        self.env = self._environment()
        self.processes: dict[str, Process] = {}
        self.started: list[str] = []
        self.api = httpx.Client(base_url=self.api_url + "/api/v2", timeout=30)
        self.emulator = httpx.Client(
            base_url=self.emulator_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
        )

    def _environment(self) -> dict[str, str]:
        # Nothing of the test session's own Airflow settings (its AIRFLOW_HOME, DAGs folder, connections).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FINETUNE_"))}
        connection = {
            "conn_type": "finetune",
            "host": f"{self.emulator_url}/v1",
            "password": API_KEY,
        }
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                # Log servers of the scheduler's workers and the triggerer, off their fixed default ports.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
                # Runs come from the test only: unpausing a weekly DAG would otherwise start the latest
                # scheduled run at once, whose job would blur the emulator's counters.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW_CONN_FINETUNE_DEFAULT": json.dumps(connection),
                "FINETUNE_EXAMPLE_POLL_INTERVAL": "0.5",
            }
        )
        return env

    # -- processes -------------------------------------------------------------------------------------

    def start(self, name: str, *argv: str) -> Process:
        log = self.process_logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,  # its own process group: its children are stopped with it
            )
        process = Process(name, popen, log)
        self.processes[name] = process
        self.started.append(name)
        return process

    def start_airflow(self, name: str, *args: str) -> Process:
        return self.start(name, str(BIN / "airflow"), *args)

    def stop(self, name: str) -> int | None:
        """SIGTERM, a grace period, then SIGKILL to the process and whatever it left in its group."""
        process = self.processes.pop(name)
        popen = process.popen
        code: int | None = popen.poll()
        if code is None:
            popen.send_signal(signal.SIGTERM)
            try:
                code = popen.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                code = None
        # The group of a process started with start_new_session has the process's id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10)
        return code

    def stop_all(self) -> None:
        # The scheduler first (no new task), the emulator last (tasks may still talk to it).
        order = ["scheduler", *[n for n in reversed(self.started) if n not in ("scheduler", "emulator")], "emulator"]
        for name in order:
            if name in self.processes:
                self.stop(name)

    def migrate(self) -> None:
        log = self.process_logs / "db-migrate.log"
        with log.open("wb") as out:
            result = subprocess.run(
                [str(BIN / "airflow"), "db", "migrate"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                timeout=180,
                check=False,
            )
        assert result.returncode == 0, f"airflow db migrate failed:\n{tail(log, 40)}"

    def up(self) -> None:
        self.start(
            "emulator",
            str(BIN / "finetune-emulator"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.emulator_port),
            "--speed",
            str(EMULATOR_SPEED),
            "--seed",
            "7",
            "--api-key",
            API_KEY,
        )
        self.migrate()
        self.start_airflow("api-server", "api-server", "--port", str(self.api_port))
        self.start_airflow("scheduler", "scheduler")
        self.start_airflow("dag-processor", "dag-processor")
        self.start_airflow("triggerer-1", "triggerer")
        self.wait_until("the emulator to answer", self._emulator_healthy, STARTUP_TIMEOUT)
        self.wait_until("the API server and every component to be healthy", self._airflow_healthy, STARTUP_TIMEOUT)
        token = self.api.get(self.api_url + "/auth/token")
        token.raise_for_status()
        self.api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        self.wait_until(f"{DAG_ID} to be parsed", self._dag_parsed, STARTUP_TIMEOUT)

    def _emulator_healthy(self) -> bool:
        try:
            return self.emulator.get("/_emulator/health").status_code == 200
        except httpx.TransportError:
            return False

    def _airflow_healthy(self) -> bool:
        try:
            response = self.api.get("/monitor/health")
        except httpx.TransportError:
            return False
        if response.status_code != 200:
            return False
        health = response.json()
        return all(
            (health.get(component) or {}).get("status") == "healthy"
            for component in ("metadatabase", "scheduler", "triggerer", "dag_processor")
        )

    def _dag_parsed(self) -> bool:
        errors = self.api.get("/importErrors").json().get("import_errors", [])
        mine = [e for e in errors if Path(e.get("filename", "")).name == DAG_FILE.name]
        assert not mine, f"{DAG_FILE.name} does not import:\n{mine[0].get('stack_trace')}"
        return self.api.get(f"/dags/{DAG_ID}").status_code == 200

    def check_alive(self) -> None:
        for process in self.processes.values():
            code = process.popen.poll()
            assert code is None, f"{process.name} exited with {code}:\n{tail(process.log, 40)}"

    def wait_until(self, what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    # -- Airflow's REST API ------------------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Any:
        response = self.api.get(path, params=params)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def unpause(self) -> None:
        response = self.api.patch(f"/dags/{DAG_ID}", json={"is_paused": False})
        assert response.status_code == 200, response.text

    def trigger(self, run_id: str) -> RunWatch:
        body = {"dag_run_id": run_id, "logical_date": datetime.now(timezone.utc).isoformat()}
        response = self.api.post(f"/dags/{DAG_ID}/dagRuns", json=body)
        assert response.status_code == 200, f"trigger {run_id}: {response.status_code} {response.text}"
        return RunWatch(run_id)

    def poll(self, watch: RunWatch) -> None:
        response = self.api.get(f"/dags/{DAG_ID}/dagRuns/{watch.run_id}")
        if response.status_code == 404:
            return  # a busy SQLite database may show a just-triggered run a moment later
        assert response.status_code == 200, f"GET run {watch.run_id}: {response.status_code} {response.text}"
        watch.state = response.json()["state"]
        for ti in self.get(f"/dags/{DAG_ID}/dagRuns/{watch.run_id}/taskInstances")["task_instances"]:
            watch.saw(ti["task_id"], ti["state"])

    def wait_for_task_state(self, watch: RunWatch, task_id: str, state: str, timeout: float = RUN_TIMEOUT) -> None:
        def reached() -> bool:
            self.poll(watch)
            assert watch.state not in ("success", "failed"), (
                f"run {watch.run_id} ended {watch.state} before {task_id} was {state}: {watch.states}"
            )
            return (watch.states.get(task_id) or [None])[-1] == state

        self.wait_until(f"{task_id} of {watch.run_id} to be {state} (seen: {watch.states})", reached, timeout)

    def wait_for_run(self, watch: RunWatch, timeout: float = RUN_TIMEOUT) -> str:
        def ended() -> str | None:
            self.poll(watch)
            return watch.state if watch.state in ("success", "failed") else None

        try:
            return self.wait_until(f"run {watch.run_id} to end", ended, timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}; task states seen: {watch.states}") from err

    def xcom(self, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.get(path, deserialize="true", stringify="false")["value"]

    def task_instance(self, run_id: str, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")
        return result

    def triggerer_jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.get("/jobs", job_type="TriggererJob", limit=100)["jobs"]
        return jobs

    def running_triggerer_id(self, other_than: int | None = None) -> int | None:
        alive = [j["id"] for j in self.triggerer_jobs() if j["state"] == "running" and j["id"] != other_than]
        return alive[0] if len(alive) == 1 else None

    # -- the emulator ------------------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        response = self.emulator.get("/_emulator/counters")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.emulator.get(f"/v1/fine_tuning/jobs/{job_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def jobs_tagged(self, run_id: str) -> list[dict[str, Any]]:
        ti = SimpleNamespace(dag_id=DAG_ID, task_id=CREATE_TASK, run_id=run_id, map_index=-1)
        params = {f"metadata[{TASK_TAG_KEY}]": task_tag({"ti": ti}), "limit": 100}
        response = self.emulator.get("/v1/fine_tuning/jobs", params=params)
        response.raise_for_status()
        jobs: list[dict[str, Any]] = response.json()["data"]
        return jobs

    # -- files -----------------------------------------------------------------------------------------

    def task_log_dir(self, run_id: str, task_id: str) -> Path:
        return self.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"

    def trigger_logs(self, run_id: str) -> dict[int, Path]:
        """The create task's trigger log files of a run, by the id of the triggerer job that wrote them."""
        folder = self.task_log_dir(run_id, CREATE_TASK)
        found = {}
        for path in folder.glob("attempt=1.log.trigger.*.log"):
            found[int(path.name.removesuffix(".log").rsplit(".", 1)[-1])] = path
        return found

    def files_holding(self, text: str) -> list[Path]:
        """The log files (processes' and tasks') in which ``text`` appears."""
        paths = [*self.process_logs.glob("*.log"), *(self.home / "logs").rglob("*.log")]
        return [path for path in paths if text in path.read_text(errors="replace")]

    def tails(self, lines: int = 40) -> str:
        parts = []
        for path in sorted(self.process_logs.glob("*.log")):
            parts.append(f"----- {path.name} (last {lines} lines) -----\n{tail(path, lines)}")
        for path in sorted((self.home / "logs" / f"dag_id={DAG_ID}").glob("run_id=*/task_id=*/attempt=*")):
            events = "\n".join(log_events(path)[-15:])
            parts.append(f"----- {path.relative_to(self.home / 'logs')} (last 15 messages) -----\n{events}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    started = time.monotonic()
    deployment = Deployment(tmp_path_factory.mktemp("deployment"))
    try:
        try:
            deployment.up()
            deployment.unpause()
        except Exception as err:
            raise AssertionError(f"The deployment did not start: {err}\n{deployment.tails()}") from err
        print(f"\ndeployment up in {time.monotonic() - started:.1f} s ({deployment.root})")
        yield deployment
    finally:
        deployment.stop_all()
        deployment.api.close()
        deployment.emulator.close()


def progress_lines(events: list[str], job_id: str) -> list[str]:
    return [e for e in events if e.startswith(f"[{job_id}] step ")]


def test_weekly_run_defers_to_the_triggerer_and_publishes_the_model(deployment: Deployment) -> None:
    started = time.monotonic()
    before = deployment.counters()
    triggerer_id = deployment.wait_until("one running triggerer job", deployment.running_triggerer_id, 30)
    # The deployment runs the installed provider.
    providers = {p["package_name"]: p["version"] for p in deployment.get("/providers", limit=1000)["providers"]}
    assert providers.get("airflow-provider-finetune") == __version__, providers

    watch = deployment.trigger("deployment_run_1")
    state = deployment.wait_for_run(watch)
    assert state == "success", f"run ended {state}; task states seen: {watch.states}"

    # The create task was deferred, then resumed and succeeded in the same try: no retry did the work.
    assert "deferred" in watch.states[CREATE_TASK], watch.states
    assert watch.states[CREATE_TASK][-1] == "success"
    assert deployment.task_instance(watch.run_id, CREATE_TASK)["try_number"] == 1

    # The wait ran in the triggerer: its trigger log, named after the triggerer's job, has the progress
    # lines and the event; the worker's log of the task and the scheduler's output have none.
    job_id = deployment.xcom(watch.run_id, CREATE_TASK, "job_id")
    trigger_logs = deployment.trigger_logs(watch.run_id)
    assert list(trigger_logs) == [triggerer_id], trigger_logs
    trigger_events = log_events(trigger_logs[triggerer_id])
    assert progress_lines(trigger_events, job_id), trigger_events
    assert any("fired" in e.lower() for e in trigger_events), trigger_events
    worker_events = log_events(deployment.task_log_dir(watch.run_id, CREATE_TASK) / "attempt=1.log")
    assert not progress_lines(worker_events, job_id), "the worker waited for the job"
    assert f"[{job_id}] step " not in deployment.processes["scheduler"].log.read_text(errors="replace")

    # The model: the job's, returned by the create task and received by the downstream tasks.
    job = deployment.job(job_id)
    model = deployment.xcom(watch.run_id, CREATE_TASK)
    assert job["status"] == "succeeded"
    assert model == job["fine_tuned_model"]
    assert model.startswith("ft:gpt-4o-mini-2024-07-18:")
    assert deployment.xcom(watch.run_id, EVALUATE_TASK)["model"] == model
    assert deployment.xcom(watch.run_id, PUBLISH_TASK)["fine_tuned_model"] == model

    # The Asset event, recorded by the publishing task, names the model and the job.
    events = deployment.get("/assets/events", source_dag_id=DAG_ID, source_run_id=watch.run_id)["asset_events"]
    assert len(events) == 1, events
    event = events[0]
    assert event["source_task_id"] == PUBLISH_TASK
    assert event["name"] == ASSET_NAME
    assert event["extra"]["fine_tuned_model"] == model
    assert event["extra"]["job_id"] == job_id

    # One job, tagged with its task instance; nothing cancelled.
    after = deployment.counters()
    assert after["jobs_created"] - before["jobs_created"] == 1
    assert [j["id"] for j in deployment.jobs_tagged(watch.run_id)] == [job_id]
    assert after["requests"].get(CANCEL_ROUTE, 0) == before["requests"].get(CANCEL_ROUTE, 0)
    assert deployment.files_holding(API_KEY) == [], "the API key was logged"
    print(f"run 1 succeeded in {time.monotonic() - started:.1f} s: {model} (states {watch.states[CREATE_TASK]})")


def test_triggerer_restart_in_the_middle_of_a_wait_keeps_one_job(deployment: Deployment) -> None:
    started = time.monotonic()
    before = deployment.counters()
    old_triggerer = deployment.wait_until("one running triggerer job", deployment.running_triggerer_id, 30)

    watch = deployment.trigger("deployment_run_2")
    deployment.wait_for_task_state(watch, CREATE_TASK, "deferred")
    job_id = deployment.xcom(watch.run_id, CREATE_TASK, "job_id")

    # Wait until the triggerer is in the middle of the wait: it has logged the job's progress.
    def waiting_in_triggerer() -> bool:
        path = deployment.trigger_logs(watch.run_id).get(old_triggerer)
        return path is not None and bool(progress_lines(log_events(path), job_id))

    deployment.wait_until(f"triggerer {old_triggerer} to log progress of {job_id}", waiting_in_triggerer, 60, 0.2)
    status = deployment.job(job_id)["status"]
    assert status not in ("succeeded", "failed", "cancelled"), (
        f"{job_id} ended ({status}) before the triggerer could be restarted: lower EMULATOR_SPEED"
    )

    # Restart: SIGTERM to the triggerer, then a new one.
    stopped_at = time.monotonic()
    code = deployment.stop("triggerer-1")
    assert code is not None, "the triggerer did not stop on SIGTERM; it had to be killed"
    deployment.start_airflow("triggerer-2", "triggerer")
    new_triggerer = deployment.wait_until(
        "the new triggerer's job", lambda: deployment.running_triggerer_id(other_than=old_triggerer), 90
    )
    assert new_triggerer != old_triggerer
    # The old triggerer's job ended (Airflow 3.1 lists running jobs only; 3.3 shows the ended one too).
    old_job = next((j for j in deployment.triggerer_jobs() if j["id"] == old_triggerer), None)
    if old_job is not None:
        assert old_job["state"] != "running", old_job
        assert old_job["end_date"], old_job
    down_for = time.monotonic() - stopped_at
    status_at_restart = deployment.job(job_id)["status"]

    state = deployment.wait_for_run(watch)
    assert state == "success", f"run ended {state}; task states seen: {watch.states}"
    ti = deployment.task_instance(watch.run_id, CREATE_TASK)
    assert ti["state"] == "success"
    assert ti["try_number"] == 1, "the task was retried instead of resumed by the new triggerer"

    # Both triggerers worked on this wait; the new one fired the event.
    trigger_logs = deployment.trigger_logs(watch.run_id)
    assert set(trigger_logs) == {old_triggerer, new_triggerer}, trigger_logs
    new_events = log_events(trigger_logs[new_triggerer])
    assert any(e.startswith(f"[{job_id}]") for e in new_events), new_events
    assert any("fired" in e.lower() for e in new_events), new_events

    # Exactly one job for the run, reused across the restart, never cancelled.
    after = deployment.counters()
    assert after["jobs_created"] - before["jobs_created"] == 1
    assert after["requests"].get(CREATE_ROUTE, 0) - before["requests"].get(CREATE_ROUTE, 0) == 1
    assert [j["id"] for j in deployment.jobs_tagged(watch.run_id)] == [job_id]
    assert after["requests"].get(CANCEL_ROUTE, 0) == before["requests"].get(CANCEL_ROUTE, 0), after["requests"]
    job = deployment.job(job_id)
    assert job["status"] == "succeeded"
    assert deployment.xcom(watch.run_id, CREATE_TASK) == job["fine_tuned_model"]
    events = deployment.get("/assets/events", source_dag_id=DAG_ID, source_run_id=watch.run_id)["asset_events"]
    assert [e["extra"]["fine_tuned_model"] for e in events] == [job["fine_tuned_model"]]

    # Every run of the DAG is one the test triggered (so the counters above are theirs).
    runs = deployment.get(f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
    assert sorted(r["dag_run_id"] for r in runs) == ["deployment_run_1", "deployment_run_2"]
    assert deployment.files_holding(API_KEY) == [], "the API key was logged"
    print(
        f"run 2 succeeded in {time.monotonic() - started:.1f} s; triggerer {old_triggerer} -> {new_triggerer}, "
        f"down {down_for:.1f} s (exit {code}); job {status_at_restart} when the new one came up"
    )
