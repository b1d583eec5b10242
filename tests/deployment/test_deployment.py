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

import secrets
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from airflow_provider_finetune import __version__
from airflow_provider_finetune.hooks.finetune import TASK_TAG_KEY
from airflow_provider_finetune.operators.finetune import task_tag
from tests.deployment._deploy import BIN, ProcessSet, RunWatch, airflow_environment, free_port, log_events

pytestmark = pytest.mark.integration

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


class Deployment(ProcessSet):
    """The emulator and Airflow's processes, in an AIRFLOW_HOME of their own under ``root``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.home = root / "airflow-home"
        self.dags = root / "dags"
        for folder in (self.home, self.dags):
            folder.mkdir(parents=True)
        # Only the retraining DAG and its data: the other example DAGs are not this test's business.
        (self.dags / DAG_FILE.name).symlink_to(DAG_FILE)
        (self.dags / "data").symlink_to(EXAMPLE_DAGS / "data", target_is_directory=True)

        self.api_port = free_port()
        self.emulator_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.emulator_url = f"http://127.0.0.1:{self.emulator_port}"
        self.env = self._environment()
        self.api = httpx.Client(base_url=self.api_url + "/api/v2", timeout=30)
        self.emulator = httpx.Client(
            base_url=self.emulator_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
        )

    def _environment(self) -> dict[str, str]:
        env = airflow_environment(
            home=self.home,
            dags=self.dags,
            api_url=self.api_url,
            api_port=self.api_port,
            emulator_url=self.emulator_url,
            api_key=API_KEY,
        )
        env.update(
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "FINETUNE_EXAMPLE_POLL_INTERVAL": "0.5",
            }
        )
        return env

    # -- processes -------------------------------------------------------------------------------------

    def migrate(self) -> None:
        self.run_to_end("db-migrate", str(BIN / "airflow"), "db", "migrate")

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
        parts = self.process_tails(lines)
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
    """The job's step lines: a wait logs each poll's events as one record of many lines."""
    return [line for e in events for line in e.splitlines() if line.startswith(f"[{job_id}] step ")]


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
