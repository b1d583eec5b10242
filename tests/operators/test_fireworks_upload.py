"""The upload operator on Fireworks: the JSONL is checked for its method, then becomes a READY dataset."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator
from tests.emulator.conftest import API_KEY, jsonl, training_lines
from tests.operators.conftest import FakeTI

CONN_ID = "fireworks_upload"
ACCOUNT = "acme"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, seed=3)) as running:
        conn = {
            "conn_type": "finetune",
            "host": running.url,
            "password": API_KEY,
            "extra": {"service": "fireworks", "account_id": ACCOUNT},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
        yield running


def test_a_checked_file_becomes_a_ready_dataset(server: EmulatorServer, tmp_path: Path) -> None:
    source = tmp_path / "train.jsonl"
    source.write_bytes(jsonl(training_lines(12)))
    ti = FakeTI()
    name = FineTuningFileUploadOperator(task_id="upload", source=source, finetune_conn_id=CONN_ID).execute({"ti": ti})  # type: ignore[arg-type]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert name == f"accounts/{ACCOUNT}/datasets/ds-{digest[:24]}"
    assert ti.xcoms["file_id"] == name
    assert ti.xcoms["examples"] == 12
    record = server.emulator.store.get("fw_dataset", f"{ACCOUNT}/ds-{digest[:24]}")
    assert record["state"] == "READY"
    assert record["exampleCount"] == "12"
    # A retry of the task uploads nothing new: the dataset of this content is READY.
    again = FineTuningFileUploadOperator(task_id="upload", source=source, finetune_conn_id=CONN_ID)
    assert again.execute({"ti": FakeTI(try_number=2)}) == name  # type: ignore[arg-type]
    assert server.emulator.counters.requests["POST /v1/accounts/{account_id}/datasets"] == 1


def test_a_bad_file_is_refused_naming_its_line_before_any_request(server: EmulatorServer, tmp_path: Path) -> None:
    lines = training_lines(12)
    lines[4] = {"messages": [{"role": "user", "content": "no answer"}]}
    source = tmp_path / "train.jsonl"
    source.write_bytes(jsonl(lines))
    operator = FineTuningFileUploadOperator(task_id="upload", source=source, finetune_conn_id=CONN_ID)
    with pytest.raises(InvalidRequestError, match="line 5"):
        operator.execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert not any("/v1/accounts/" in route for route in server.emulator.counters.requests)
