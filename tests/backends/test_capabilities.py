"""Asking a service for what it lacks: every operator and sensor refuses in one line, before any request."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import respx

from airflow_provider_finetune.exceptions import UnsupportedCapabilityError
from airflow_provider_finetune.operators.finetune import (
    FineTuningCheckpointPermissionOperator,
    FineTuningCheckpointPermissionRevokeOperator,
    FineTuningFileUploadOperator,
    FineTuningGraderRunOperator,
    FineTuningGraderValidateOperator,
    FineTuningJobPauseOperator,
    FineTuningJobResumeOperator,
)
from airflow_provider_finetune.sensors.finetune import FineTuningCheckpointSensor
from tests.operators.conftest import FakeTI

ENDPOINT = "https://res.example.test"
GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "x",
    "operation": "eq",
}

CONNECTIONS = {
    "azure-2024-10-21": {"service": "azure", "api_version": "2024-10-21"},
    "azure-v1": {"service": "azure"},
    "litellm": {"service": "openai-compatible", "preset": "litellm"},
    "bedrock-mantle": {"service": "openai-compatible", "preset": "bedrock-mantle"},
    "fireworks": {"service": "fireworks", "account_id": "acme"},
    "together": {"service": "together"},
}


def _upload(tmp_path: Path) -> Any:
    path = tmp_path / "train.jsonl"
    line = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path.write_text((json.dumps(line) + "\n") * 12)
    op = FineTuningFileUploadOperator(task_id="upload", source=str(path))
    op.hook.upload_threshold = 100  # this file goes up in parts, through the Uploads API
    return op


CASES: list[tuple[str, str, str, Callable[[Path], Any]]] = [
    ("azure-2024-10-21", "pause", "pause", lambda _: FineTuningJobPauseOperator(task_id="p", job_id="ftjob-1")),
    (
        "azure-2024-10-21",
        "resume",
        "resume",
        lambda _: FineTuningJobResumeOperator(task_id="r", job_id="ftjob-1"),
    ),
    ("litellm", "pause", "pause", lambda _: FineTuningJobPauseOperator(task_id="p", job_id="ftjob-1")),
    (
        "azure-v1",
        "checkpoint_permissions",
        "grant",
        lambda _: FineTuningCheckpointPermissionOperator(task_id="g", checkpoint="ft:x:ckpt", project_ids=["proj-1"]),
    ),
    (
        "azure-v1",
        "checkpoint_permissions",
        "revoke",
        lambda _: FineTuningCheckpointPermissionRevokeOperator(task_id="v", checkpoint="ft:x:ckpt", project_ids=["p"]),
    ),
    ("azure-2024-10-21", "graders", "validate", lambda _: FineTuningGraderValidateOperator(task_id="v", grader=GRADER)),
    (
        "bedrock-mantle",
        "graders",
        "run",
        lambda _: FineTuningGraderRunOperator(task_id="r", grader=GRADER, samples=[{"model_sample": "x", "item": {}}]),
    ),
    ("litellm", "checkpoints", "sensor", lambda _: FineTuningCheckpointSensor(task_id="c", job_id="ftjob-1")),
    (
        "litellm",
        "checkpoints",
        "deferred-sensor",
        lambda _: FineTuningCheckpointSensor(task_id="c", job_id="ftjob-1", deferrable=True),
    ),
    ("azure-v1", "uploads", "large-upload", _upload),
    ("fireworks", "pause", "pause", lambda _: FineTuningJobPauseOperator(task_id="p", job_id="ft-1")),
    ("together", "pause", "pause", lambda _: FineTuningJobPauseOperator(task_id="p", job_id="ft-1")),
    ("together", "resume", "resume", lambda _: FineTuningJobResumeOperator(task_id="r", job_id="ft-1")),
]


@pytest.fixture
def no_requests() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True) as router:
        yield router
    assert router.calls.call_count == 0


@pytest.mark.parametrize(("service", "capability", "what", "make"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_refused_in_one_line_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
    no_requests: respx.MockRouter,
    tmp_path: Path,
    service: str,
    capability: str,
    what: str,
    make: Callable[[Path], Any],
) -> None:
    conn = {
        "conn_type": "finetune",
        "host": ENDPOINT,
        "password": "sk-capabilities-1234",
        "extra": CONNECTIONS[service],
    }
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    task = make(tmp_path)
    with pytest.raises(UnsupportedCapabilityError) as info:
        task.execute({"ti": FakeTI()})
    err = info.value
    assert err.capability == capability
    text = str(err)
    assert "\n" not in text
    assert "does not support" in text
    assert task.hook.backend.label in text
    assert no_requests.calls.call_count == 0


# Fireworks and Together choose the job id or keep an intent, whatever their metadata: tested with their backends.
@pytest.mark.parametrize(
    "service", [*(name for name in CONNECTIONS if name not in ("fireworks", "together")), "openai", "azure-preview"]
)
def test_how_a_create_is_made_once_only_agrees_with_the_capabilities(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook

    extra = {"openai": {}, "azure-preview": {"service": "azure", "api_version": "2025-04-01-preview"}}.get(
        service, CONNECTIONS.get(service)
    )
    conn = {"conn_type": "finetune", "host": ENDPOINT, "password": "sk-capabilities-1234", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    backend = FineTuningHook().backend
    assert backend.once_only == ("metadata" if backend.capabilities.job_metadata else "intent")


def test_pause_and_resume_are_separate_capabilities() -> None:
    from airflow_provider_finetune.backends.base import CAPABILITY_NAMES, Capabilities
    from airflow_provider_finetune.backends.fireworks import FireworksBackend
    from airflow_provider_finetune.rules import job_actions

    assert job_actions.PAUSE.capability == "pause"
    assert job_actions.RESUME.capability == "resume"
    assert Capabilities().names() == []  # nothing until a backend declares it
    everything = Capabilities(**dict.fromkeys(CAPABILITY_NAMES, True))
    assert {"pause", "resume"} <= set(everything.names()) <= set(CAPABILITY_NAMES)
    assert "pause_resume" not in CAPABILITY_NAMES
    fireworks = FireworksBackend.capabilities
    assert (fireworks.pause, fireworks.resume) == (False, True)
