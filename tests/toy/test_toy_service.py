"""A seventh service plugs in as one backend file and one emulator dialect file, with nothing else changed.

The service is made up here (``toy_backend.py``, ``toy_dialect.py``): its own paths, words and shapes. The
provider's own operators run against it end to end over real HTTP: the upload operator, then the job operator
with a deferred wait in the shared poller, its XComs, and a once-only create.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator
from tests.operators.conftest import FakeStateStore, FakeTI

KEY = "sk-toy-5ecret-key"
CONN_ID = "finetune_toy"
MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="module")
def toy_modules() -> Iterator[tuple[Any, Any]]:
    """The service's two files, imported here (each registers itself), and taken out of both registries after."""
    from airflow_provider_finetune.backends import SERVICES
    from airflow_provider_finetune.emulator.app import DIALECTS
    from tests.toy import toy_backend, toy_dialect

    yield toy_backend, toy_dialect
    SERVICES.pop("toy", None)
    DIALECTS.pop("toy", None)


@pytest.fixture(scope="module")
def server(toy_modules: tuple[Any, Any]) -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=KEY, speed=40, seed=3)) as running:
        yield running


@pytest.fixture
def toy(server: EmulatorServer, toy_modules: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    conn = {
        "conn_type": "finetune",
        "host": server.url + toy_modules[1].PREFIX,
        "password": KEY,
        "extra": {"service": "toy"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    return server


def _chat(n: int = 12) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}?"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(n)
    ]
    return ("\n".join(json.dumps(row) for row in rows) + "\n").encode()


def _requests(server: EmulatorServer) -> dict[str, int]:
    return dict(server.emulator.counters.requests)


async def _fire(trigger: Any) -> dict[str, Any]:
    (event,) = [event.payload async for event in trigger.run()]
    return dict(event)


def test_the_operators_run_a_whole_job_on_a_seventh_service(
    toy: EmulatorServer, toy_modules: tuple[Any, Any], tmp_path: Path
) -> None:
    from airflow.exceptions import TaskDeferred

    assert isinstance(FineTuningHook(CONN_ID).backend, toy_modules[0].ToyBackend)
    source = tmp_path / "train.jsonl"
    source.write_bytes(_chat())
    upload_ti = FakeTI(task_id="upload")
    blob = FineTuningFileUploadOperator(task_id="upload", source=str(source), finetune_conn_id=CONN_ID).execute(
        {"ti": upload_ti, "task_state_store": FakeStateStore()}  # type: ignore[arg-type]
    )
    assert toy.emulator.files.content(blob) == _chat()

    ti = FakeTI()
    context: dict[str, Any] = {"ti": ti, "task_state_store": FakeStateStore()}
    operator = FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=blob,
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=0.2,
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)  # type: ignore[arg-type]
    job_id = ti.xcoms["job_id"]  # pushed before the wait
    event = asyncio.run(_fire(deferred.value.trigger))
    assert event["status"] == "succeeded"
    model = getattr(operator, deferred.value.method_name)(context, event, **(deferred.value.kwargs or {}))

    assert model == ti.xcoms["fine_tuned_model"]
    assert model.startswith(f"ft:{MODEL}:")
    assert ti.xcoms["status"] == "succeeded"
    training = toy.emulator.jobs.retrieve(job_id)
    assert training["fine_tuned_model"] == model
    # The once-only tag rode on the training's labels, in Toy's words.
    assert training["metadata"]
    assert any(key.startswith("airflow") for key in training["metadata"])
    requests = _requests(toy)
    assert requests["POST /toy/api/trainings"] == 1
    assert requests["POST /toy/api/blobs"] == 1
    assert requests["GET /toy/api/trainings"] >= 1  # the shared poller's one list per round
    assert not any(route.startswith(("POST /v1", "GET /v1")) for route in requests)


def test_a_retry_of_the_task_adopts_its_training_on_the_seventh_service(toy: EmulatorServer) -> None:
    blob = FineTuningHook(CONN_ID).upload_file(_chat(), filename="train.jsonl").id
    first, retry = FakeTI(run_id="toy-retry", try_number=1), FakeTI(run_id="toy-retry", try_number=2)
    made = []
    for ti in (first, retry):
        operator = FineTuningJobOperator(
            task_id="fine_tune", model=MODEL, training_file=blob, finetune_conn_id=CONN_ID, wait_for_completion=False
        )
        operator.execute({"ti": ti, "task_state_store": FakeStateStore()})  # type: ignore[arg-type]
        made.append(ti.xcoms["job_id"])
    assert made[0] == made[1]


def test_what_toy_has_no_word_for_is_refused_before_any_request(toy: EmulatorServer) -> None:
    before = sum(_requests(toy).values())
    operator = FineTuningJobOperator(
        task_id="fine_tune", model=MODEL, training_file="file-x", suffix="mine", finetune_conn_id=CONN_ID
    )
    with pytest.raises(InvalidRequestError, match="suffix"):
        operator.execute({"ti": FakeTI(), "task_state_store": FakeStateStore()})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="Toy does not support pausing jobs"):
        FineTuningHook(CONN_ID).pause_job("anything")
    assert sum(_requests(toy).values()) == before
