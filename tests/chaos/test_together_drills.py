"""Fault drills on Together, as for OpenAI: 5xx, 429 with retry-after, dropped connections, lost create answers,
a worker killed after the create. One job per task instance, and no task failed by a transient fault.

The jobs of the drill run against the emulator's Together dialect over loopback HTTP with its fault injector;
each task instance asks for its own job (its own suffix: a retraining run's data differs from the last one's).
The figures are printed (``pytest -s``) and asserted.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.emulator.config import FaultConfig
from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator
from tests.emulator.conftest import jsonl, training_lines
from tests.operators.conftest import FakeStateStore, FakeTI

pytestmark = pytest.mark.integration

KEY = "together-drill-5ecret"
CONN_ID = "together_drill"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
OPTIONS = {"lora_r": 8, "lora_alpha": 16}
TASKS = 16
CREATE = r"^POST /together/v1/fine-tunes$"
REFUSED = FaultConfig(seed=2026, error_rate=0.10, rate_limit_rate=0.05, retry_after=0.05, drop_rate=0.03)
LOST = FaultConfig(seed=2027, error_rate=0.25, drop_rate=0.15, match=CREATE, after_processing=True)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    server = EmulatorServer(EmulatorConfig(api_key=KEY, speed=50.0, seed=5)).start()
    conn = {
        "conn_type": "finetune",
        "host": server.url + "/together/v1",
        "password": KEY,
        "extra": {"service": "together", "max_retries": 8},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    yield server
    server.stop()


def job_operator(training_file: str, index: int) -> FineTuningJobOperator:
    return FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=training_file,
        suffix=f"run-{index:02d}",
        service_options=OPTIONS,
        finetune_conn_id=CONN_ID,
        deferrable=False,
        poll_interval=0.2,
    )


def upload(tmp_path: Any) -> str:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(training_lines(12)))
    op = FineTuningFileUploadOperator(task_id="upload", source=str(path), finetune_conn_id=CONN_ID)
    return str(op.execute({"ti": FakeTI(task_id="upload"), "task_state_store": FakeStateStore()}))


def run_tasks(
    training_file: str, *, state_store: bool, first: int = 0
) -> list[tuple[FakeTI, str | None, BaseException | None]]:
    def one(index: int) -> tuple[FakeTI, str | None, BaseException | None]:
        ti = FakeTI(dag_id="together_drill", run_id=f"drill__{index:02d}")
        context: dict[str, Any] = {"ti": ti}
        if state_store:
            context["task_state_store"] = FakeStateStore()
        try:
            return ti, job_operator(training_file, index).execute(context), None  # type: ignore[arg-type]
        except FineTuningError as err:
            return ti, None, err

    with concurrent.futures.ThreadPoolExecutor(max_workers=TASKS) as pool:
        return list(pool.map(one, range(first, first + TASKS)))


def jobs_by_suffix(server: EmulatorServer) -> Counter[str]:
    """How many jobs the service holds for each request (suffix), read over HTTP without faults."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        return Counter(str(job.get("suffix")) for job in http.get("/together/v1/fine-tunes").json()["data"])


@pytest.mark.parametrize("state_store", [True, False], ids=["airflow-3.3-intent-record", "no-state-store"])
def test_transient_faults_fail_no_task_and_make_one_job_each(
    server: EmulatorServer, tmp_path: Any, state_store: bool
) -> None:
    assert server.emulator.faults is not None
    server.emulator.faults.configure(REFUSED)
    training_file = upload(tmp_path)  # through the same faults: the redirect, the PUT, the check
    outcomes = run_tasks(training_file, state_store=state_store)
    refused = dict(server.emulator.counters.faults)
    server.emulator.faults.configure(LOST)  # now the answers of creates are lost after the job is made
    lost_outcomes = run_tasks(training_file, state_store=state_store, first=TASKS)
    lost = {kind: count - refused.get(kind, 0) for kind, count in server.emulator.counters.faults.items()}
    lost = {kind: count for kind, count in lost.items() if count}
    server.emulator.faults.configure(FaultConfig())

    failed = [(ti.run_id, err) for ti, _, err in outcomes + lost_outcomes if err is not None]
    per_task = jobs_by_suffix(server)
    figures = (
        f"Together drill ({'intent record' if state_store else 'no state store'}): {2 * TASKS} tasks, "
        f"{sum(per_task.values())} jobs, most jobs for one request {max(per_task.values())}, failed {len(failed)}; "
        f"faults refused {refused}; with lost create answers {lost}; "
        f"requests answered {sum(server.emulator.counters.statuses.values())}"
    )
    print(figures)
    assert failed == [], figures
    assert all(model and model.startswith("emulator/") for _, model, _ in outcomes), figures
    assert all(model and model.startswith("emulator/") for _, model, _ in lost_outcomes), figures
    assert len(per_task) == 2 * TASKS, figures
    assert set(per_task.values()) == {1}, figures  # one job for each task instance, whatever was lost
    assert sum(refused.get(kind, 0) for kind in ("500", "502", "503", "429", "drop")) > 0, figures
    assert sum(lost.values()) > 0, figures  # create answers really were lost


def test_a_worker_killed_after_the_create_leaves_one_job(server: EmulatorServer, tmp_path: Any) -> None:
    training_file = upload(tmp_path)

    class KilledAfterCreate(FakeStateStore):
        """The worker dies once the service has made the job, before the task recorded its id."""

        def set(self, key: str, value: Any) -> None:
            if key == "job_id" and "killed" not in self.values:
                self.values["killed"] = True
                raise SystemExit("worker killed")
            super().set(key, value)

    state = KilledAfterCreate()
    ti = FakeTI(dag_id="together_drill", run_id="killed")
    with pytest.raises(SystemExit):
        job_operator(training_file, 0).execute({"ti": ti, "task_state_store": state})  # type: ignore[arg-type]
    assert "intent" in state.values
    assert "job_id" not in state.values
    model = job_operator(training_file, 0).execute({"ti": FakeTI(run_id="killed"), "task_state_store": state})  # type: ignore[arg-type]
    assert model is not None
    assert jobs_by_suffix(server) == Counter({"run-00": 1})
