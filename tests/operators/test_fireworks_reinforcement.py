"""Reinforcement fine-tuning on Fireworks through the job operator: graded by an evaluator, never a grader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator
from tests.emulator.conftest import API_KEY, jsonl, training_lines
from tests.operators.conftest import FakeTI

CONN_ID = "fireworks_rft"
ACCOUNT = "acme"
EVALUATOR = f"accounts/{ACCOUNT}/evaluators/exact-match"
GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "x",
    "operation": "eq",
}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, seed=5)) as running:
        conn = {
            "conn_type": "finetune",
            "host": running.url,
            "password": API_KEY,
            "extra": {"service": "fireworks", "account_id": ACCOUNT},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
        yield running


def _operator(dataset: str, **kwargs: Any) -> FineTuningJobOperator:
    return FineTuningJobOperator(
        task_id="rft",
        model="accounts/fireworks/models/llama-v3p1-8b-instruct",
        training_file=dataset,
        finetune_conn_id=CONN_ID,
        wait_for_completion=False,
        **kwargs,
    )


def _dataset(tmp_path: Any) -> str:
    source = tmp_path / "train.jsonl"
    source.write_bytes(jsonl(training_lines(12)))
    return str(
        FineTuningFileUploadOperator(task_id="up", source=source, finetune_conn_id=CONN_ID).execute({"ti": FakeTI()})
    )  # type: ignore[arg-type]


def _jobs(server: EmulatorServer) -> list[dict[str, Any]]:
    return list(server.emulator.store.records("fw_job").values())


def test_a_reinforcement_job_is_created_with_the_evaluator_of_service_options(
    server: EmulatorServer, tmp_path: Any
) -> None:
    ti = FakeTI()
    operator = _operator(_dataset(tmp_path), method={"type": "reinforcement"}, service_options={"evaluator": EVALUATOR})
    operator.execute({"ti": ti})  # type: ignore[arg-type]
    assert ti.xcoms["job_id"].startswith(f"accounts/{ACCOUNT}/reinforcementFineTuningJobs/")
    [job] = _jobs(server)
    assert job["body"]["evaluator"] == EVALUATOR


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        # A grader is OpenAI's; Fireworks grades with an evaluator: refused by name, not translated.
        (
            {
                "method": {"type": "reinforcement", "reinforcement": {"grader": GRADER}},
                "service_options": {"evaluator": EVALUATOR},
            },
            "method.reinforcement.grader",
        ),
        ({"method": {"type": "reinforcement"}}, "service_options.evaluator"),
    ],
    ids=["grader", "no-evaluator"],
)
def test_a_grader_or_a_missing_evaluator_is_refused_before_any_create(
    server: EmulatorServer, tmp_path: Any, kwargs: dict[str, Any], field: str
) -> None:
    operator = _operator(_dataset(tmp_path), **kwargs)
    with pytest.raises(InvalidRequestError) as info:
        operator.execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert info.value.field == field
    assert "\n" not in str(info.value)
    assert _jobs(server) == []
