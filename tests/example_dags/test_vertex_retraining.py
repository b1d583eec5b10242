"""The retraining example's fine-tuning task runs on Vertex AI with only its connection, its data references and
(on Vertex) ``service_options`` changed: against the emulator's Vertex dialect and a Cloud Storage emulator, on
the worker and deferred, to a tuned model, its endpoint and its checkpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from tests.emulator.test_vertex import BUCKET, LOCATION, PROJECT, TOKEN, Storage, sft_rows, storage

__all__ = ["storage"]  # a fixture, used by name

CONN_ID = "finetune_vertex"
MODEL = "gemini-2.5-flash"


@pytest.fixture
def vertex_server(storage: Storage) -> Iterator[EmulatorServer]:
    """The emulator at speed 50 (a small job takes about a second), reading training data from ``storage``."""
    server = EmulatorServer(EmulatorConfig(api_key=TOKEN, gcs_endpoint=storage.url, speed=50.0, seed=3)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def vertex_connection(vertex_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """``finetune_vertex`` at the emulator: its token as the password, the project and location as extras."""
    conn = {
        "conn_type": "finetune",
        "host": f"{vertex_server.url}/vertex",
        "password": TOKEN,
        "extra": {"service": "vertex", "project": PROJECT, "location": LOCATION},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    return vertex_server


def _fine_tune(**overrides: Any) -> Any:
    """The retraining example's fine-tuning task as its DAG writes it, on the Vertex connection."""
    from datetime import timedelta

    from airflow_provider_finetune.operators.finetune import FineTuningJobOperator

    options: dict[str, Any] = {
        "task_id": "fine_tune",
        "model": MODEL,
        "training_file": f"gs://{BUCKET}/retrain/train.jsonl",
        "validation_file": f"gs://{BUCKET}/retrain/valid.jsonl",
        "finetune_conn_id": CONN_ID,
        "deferrable": False,
        "poll_interval": 0.05,
        "timeout": timedelta(hours=12),
        "hyperparameters": {"n_epochs": 2},
        "service_options": {"adapter_size": "ADAPTER_SIZE_FOUR", "tuned_model_display_name": "support-bot"},
    }
    options.update(overrides)
    return FineTuningJobOperator(**options)


def _jobs(server: EmulatorServer) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{server.url}/vertex/v1/projects/{PROJECT}/locations/{LOCATION}/tuningJobs",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    answer.raise_for_status()
    return list(answer.json().get("tuningJobs", []))


@pytest.fixture
def data(storage: Storage) -> None:
    storage.put("retrain/train.jsonl", sft_rows(16))
    storage.put("retrain/valid.jsonl", sft_rows(4, start=100))


@pytest.mark.integration
def test_the_retraining_task_runs_on_vertex_on_the_worker(vertex_connection: EmulatorServer, data: None) -> None:
    from tests.operators.conftest import FakeStateStore, FakeTI

    ti = FakeTI()
    model = _fine_tune().execute({"ti": ti, "task_state_store": FakeStateStore()})
    (job,) = _jobs(vertex_connection)
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert ti.xcoms["job_id"] == job["name"]
    assert model == ti.xcoms["fine_tuned_model"] == job["tunedModel"]["model"]
    assert ti.xcoms["tuned_model_endpoint"] == job["tunedModel"]["endpoint"]
    assert ti.xcoms["status"] == "succeeded"
    # One checkpoint an epoch, each served by an endpoint of its own.
    assert len(ti.xcoms["checkpoints"]) == 2
    spec = job["supervisedTuningSpec"]
    assert spec["hyperParameters"]["adapterSize"] == "ADAPTER_SIZE_FOUR"
    assert str(spec["hyperParameters"]["epochCount"]) == "2"
    assert spec["validationDatasetUri"] == f"gs://{BUCKET}/retrain/valid.jsonl"
    assert job["tunedModelDisplayName"] == "support-bot"


@pytest.mark.integration
def test_the_retraining_task_waits_deferred_and_a_retry_adopts_its_job(
    vertex_connection: EmulatorServer, data: None
) -> None:
    try:
        from airflow.sdk.exceptions import TaskDeferred
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import TaskDeferred  # type: ignore[no-redef]

    from tests.chaos.conftest import run_trigger
    from tests.operators.conftest import FakeStateStore, FakeTI

    ti, store = FakeTI(), FakeStateStore()
    operator = _fine_tune(deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({"ti": ti, "task_state_store": store})
    created = ti.xcoms["job_id"]
    # A retry of the same task instance (the worker lost after the create) finds the job by its label, no second.
    with pytest.raises(TaskDeferred):
        _fine_tune(deferrable=True).execute({"ti": FakeTI(), "task_state_store": FakeStateStore()})
    assert [job["name"] for job in _jobs(vertex_connection)] == [created]

    (event,) = run_trigger(deferred.value.trigger)
    assert event["status"] == "succeeded"
    context = {"ti": ti, "task_state_store": store}
    model = getattr(operator, deferred.value.method_name)(context, event, **(deferred.value.kwargs or {}))
    (job,) = _jobs(vertex_connection)
    assert model == job["tunedModel"]["model"]
    assert ti.xcoms["tuned_model_endpoint"] == job["tunedModel"]["endpoint"]
