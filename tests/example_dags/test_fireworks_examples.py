"""The Fireworks example DAG runs to success against the emulator's Fireworks dialect."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_finetune.emulator import EmulatorServer
from tests.example_dags.conftest import Emulator
from tests.example_dags.test_example_dags import run, xcoms
from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.integration

ACCOUNT = "brightwave"


def fireworks_connection(server: EmulatorServer) -> dict[str, Any]:
    root = server.base_url.removesuffix("/v1")
    return {
        "conn_type": "finetune",
        "host": root,
        "password": API_KEY,
        "extra": {"service": "fireworks", "account_id": ACCOUNT},
    }


def test_the_fireworks_example_trains_with_fireworks_options(
    serialized_example_dags: Any, emulator_server: EmulatorServer, emulator: Emulator
) -> None:
    def jobs_of_account() -> dict[str, Any]:
        records = emulator_server.emulator.store.records("fw_job")
        return {key: r for key, r in records.items() if r["account"] == ACCOUNT}

    before = set(jobs_of_account())  # the server is shared: other tests' jobs may be there
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(fireworks_connection(emulator_server)))
        dag_run = run(serialized_example_dags, "example_fireworks_finetune")
    fine_tune = xcoms(dag_run.run_id, "example_fireworks_finetune", "fine_tune")
    assert fine_tune["return_value"].startswith(f"accounts/{ACCOUNT}/models/support-")
    assert fine_tune["job_id"].startswith(f"accounts/{ACCOUNT}/supervisedFineTuningJobs/ft-")
    assert xcoms(dag_run.run_id, "example_fireworks_finetune", "upload_train")["return_value"].startswith(
        f"accounts/{ACCOUNT}/datasets/ds-"
    )
    jobs = [r for key, r in jobs_of_account().items() if key not in before]
    assert len(jobs) == 1
    body = jobs[0]["body"]
    assert body["learningRate"] == 1e-4
    assert body["loraRank"] == 16
    assert body["earlyStop"] is True
    assert body["evaluationDataset"].startswith(f"accounts/{ACCOUNT}/datasets/ds-")
