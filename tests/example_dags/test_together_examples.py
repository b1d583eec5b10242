"""The Together example DAG runs to success against the emulator's Together dialect."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_finetune.emulator import EmulatorServer
from tests.example_dags.test_example_dags import run, xcoms
from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.integration

DAG_ID = "example_together_finetune"


def together_connection(server: EmulatorServer) -> dict[str, Any]:
    """The connection to the emulator's Together dialect: its base URL and the service."""
    return {
        "conn_type": "finetune",
        "host": server.url + "/together/v1",
        "password": API_KEY,
        "extra": {"service": "together"},
    }


def test_the_together_example_trains_with_together_options(
    serialized_example_dags: Any, emulator_server: EmulatorServer
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(together_connection(emulator_server)))
        dag_run = run(serialized_example_dags, DAG_ID)
    fine_tune = xcoms(dag_run.run_id, DAG_ID, "fine_tune")
    continued = xcoms(dag_run.run_id, DAG_ID, "continue_full")
    assert fine_tune["return_value"].startswith("emulator/Meta-Llama-3.1-8B-Instruct-Reference-support-")
    assert fine_tune["price_estimate"]["allowed_to_proceed"] is True
    assert fine_tune["total_price"] >= 0
    assert set(fine_tune["early_stopping"]) >= {"early_stopped"}
    jobs = {r["id"]: r for r in emulator_server.emulator.store.records("together_job").values()}
    first, second = jobs[fine_tune["job_id"]]["request"], jobs[continued["job_id"]]["request"]
    assert first["learning_rate"] == 0.0001
    assert first["training_type"] == {"type": "Lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
    assert first["early_stopping_enabled"] is True
    assert first["validation_file"] == xcoms(dag_run.run_id, DAG_ID, "upload_valid")["return_value"]
    assert second["training_type"] == {"type": "Full"}
    assert second["from_checkpoint"] == fine_tune["checkpoints"][0]["fine_tuned_model_checkpoint"]
    summary = xcoms(dag_run.run_id, DAG_ID, "report")["return_value"]
    assert summary["model"] == continued["return_value"]
