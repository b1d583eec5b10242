"""The Vertex AI example DAG runs to success against the emulator's Vertex dialect and a Cloud Storage emulator.

The support set of ``example_dags/data`` is written to the bucket the DAG's params name, in Vertex's Gemini format,
as the data team's export would leave it; the DAG tunes, records the checkpoints, evaluates the tuned model's
endpoint through ``generateContent`` and publishes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from tests.emulator.test_vertex import LOCATION, PROJECT, Storage, storage
from tests.example_dags.conftest import EXAMPLE_DAGS
from tests.example_dags.test_example_dags import asset_events, run, task_states, xcoms
from tests.integration.conftest import API_KEY

__all__ = ["storage"]  # a fixture, used by name

pytestmark = pytest.mark.integration

DAG_ID = "example_vertex"
CONN_ID = "finetune_vertex"
DATA = EXAMPLE_DAGS / "data"
ASSET_NAME = "vertex_support_assistant"


def to_gemini(record: dict[str, Any]) -> dict[str, Any]:
    """A chat-format record in Vertex's Gemini format: the system message as the instruction, turns as contents."""
    system = [m["content"] for m in record["messages"] if m["role"] == "system"]
    turns = [
        {"role": "model" if m["role"] == "assistant" else "user", "parts": [{"text": m["content"]}]}
        for m in record["messages"]
        if m["role"] != "system"
    ]
    row: dict[str, Any] = {"contents": turns}
    if system:
        row["systemInstruction"] = {"parts": [{"text": text} for text in system]}
    return row


def put_gemini(storage: Storage, uri: str, source: str) -> int:
    """Write ``data/<source>`` in Gemini format to ``uri`` (its bucket made if missing); the number of examples."""
    found = re.fullmatch(r"gs://([^/]+)/(.+)", uri)
    assert found is not None, uri
    bucket, name = found.groups()
    made = httpx.post(f"{storage.url}/storage/v1/b", json={"name": bucket})
    assert made.status_code in (200, 409), made.text  # 409: made for the other file
    rows = [to_gemini(json.loads(line)) for line in (DATA / source).read_text().splitlines() if line]
    answer = httpx.post(
        f"{storage.url}/upload/storage/v1/b/{bucket}/o",
        params={"uploadType": "media", "name": name},
        content="".join(json.dumps(row) + "\n" for row in rows).encode(),
        headers={"content-type": "application/octet-stream"},
    )
    answer.raise_for_status()
    return len(rows)


@pytest.fixture(scope="module")
def vertex_server(storage: Storage) -> Iterator[EmulatorServer]:
    """The emulator at speed 50, reading training data from ``storage``; only this module's jobs are on it."""
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, gcs_endpoint=storage.url, speed=50.0, seed=5)) as server:
        yield server


def tuning_jobs(server: EmulatorServer) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{server.url}/vertex/v1/projects/{PROJECT}/locations/{LOCATION}/tuningJobs",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    answer.raise_for_status()
    return list(answer.json().get("tuningJobs", []))


def test_the_vertex_example_tunes_evaluates_and_publishes(
    serialized_example_dags: Any, storage: Storage, vertex_server: EmulatorServer
) -> None:
    dag = serialized_example_dags.dags[DAG_ID]
    assert dag.get_task("fine_tune").deferrable is True
    training_uri, validation_uri = dag.params["training_file"], dag.params["validation_file"]
    assert put_gemini(storage, training_uri, "support_train.jsonl") == 40
    assert put_gemini(storage, validation_uri, "support_valid.jsonl") == 12
    conn = {
        "conn_type": "finetune",
        "host": f"{vertex_server.url}/vertex",
        "password": API_KEY,
        "extra": {"service": "vertex", "project": PROJECT, "location": LOCATION},
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
        dag_run = run(serialized_example_dags, DAG_ID)
    run_id = dag_run.run_id
    assert task_states(run_id, DAG_ID) == dict.fromkeys(dag.task_ids, "success")

    (job,) = tuning_jobs(vertex_server)
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert job["baseModel"] == "gemini-2.5-flash"
    spec = job["supervisedTuningSpec"]
    assert spec["trainingDatasetUri"] == training_uri
    assert spec["validationDatasetUri"] == validation_uri
    assert spec["hyperParameters"]["adapterSize"] == "ADAPTER_SIZE_FOUR"
    assert str(spec["hyperParameters"]["epochCount"]) == "3"
    assert re.fullmatch(r"support-assistant-\d{8}", job["tunedModelDisplayName"])
    assert job["labels"]["pipeline"] == "support-assistant"

    fine_tune = xcoms(run_id, DAG_ID, "fine_tune")
    tuned = job["tunedModel"]
    assert fine_tune["job_id"] == job["name"]
    assert fine_tune["return_value"] == tuned["model"]
    assert fine_tune["return_value"].startswith(f"projects/{PROJECT}/locations/{LOCATION}/models/")
    assert fine_tune["tuned_model_endpoint"] == tuned["endpoint"]
    assert fine_tune["tuned_model_endpoint"].startswith(f"projects/{PROJECT}/locations/{LOCATION}/endpoints/")
    # One checkpoint an epoch, each with an endpoint; the last one's serves the tuned model.
    steps = sorted(c["step_number"] for c in fine_tune["checkpoints"])
    assert len(steps) == 3
    assert {c["fine_tuned_model_checkpoint"] for c in fine_tune["checkpoints"]} == {
        c["endpoint"] for c in tuned["checkpoints"]
    }

    recorded = xcoms(run_id, DAG_ID, "record_checkpoints")["return_value"]
    assert [c["step"] for c in recorded] == steps[::-1]
    assert recorded[0]["endpoint"] == tuned["endpoint"]

    evaluation = xcoms(run_id, DAG_ID, "evaluation_gate")
    result = evaluation["return_value"]
    assert result["model"] == tuned["endpoint"]
    assert result["baseline"] == "gemini-2.5-flash"
    assert result["passed"] is True
    assert result["score"] == evaluation["score"]
    assert result["score"] >= dag.params["min_score"]
    # The tuned model answers the reworded prompts from its training examples; the question whose answer only the
    # validation set holds is missed: 5 of 6. The base model answers none.
    assert result["score"] == pytest.approx(5 / 6)
    assert result["baseline_score"] == 0.0

    published = xcoms(run_id, DAG_ID, "publish")["return_value"]
    assert published == {
        "tuned_model": tuned["model"],
        "endpoint": tuned["endpoint"],
        "job_id": job["name"],
        "base_model": "gemini-2.5-flash",
        "checkpoints": recorded,
        "score": result["score"],
        "baseline_score": result["baseline_score"],
    }
    assert [event["extra"] for event in asset_events(ASSET_NAME, run_id)] == [published]
    print(f"\n[{DAG_ID}] job {job['name']}, endpoint {tuned['endpoint']}, score {result['score']:.2f}")
