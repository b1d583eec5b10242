"""Pause, resume and cancel on jobs in every state: what is refused before any request, and what a wait waits for."""

from __future__ import annotations

import inspect
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.operators.finetune import (
    FineTuningJobCancelOperator,
    FineTuningJobPauseOperator,
    FineTuningJobResumeOperator,
)
from tests.hooks.conftest import FakeAPI, job, page

JOB = "fine_tuning/jobs/ftjob-1"
ENDED = ("succeeded", "failed", "cancelled")


@pytest.mark.parametrize("status", ENDED)
@pytest.mark.parametrize(
    ("cls", "action"), [(FineTuningJobPauseOperator, "pause"), (FineTuningJobResumeOperator, "resume")]
)
def test_pausing_or_resuming_an_ended_job_fails_in_one_line_before_any_action(
    context: dict[str, Any], api: FakeAPI, cls: type, action: str, status: str
) -> None:
    api.on("GET", JOB, job(status=status))
    sent = api.on("POST", f"{JOB}/{action}", job(status=status))

    with pytest.raises(FineTuningError) as info:
        cls(task_id=action, job_id="ftjob-1", wait_for_completion=True).execute(context)

    text = str(info.value)
    assert text == f"Cannot {action} fine-tuning job ftjob-1: it has already ended ({status})"
    assert "\n" not in text
    assert sent.call_count == 0
    assert api.sent("POST") == []
    assert "status" not in context["ti"].xcoms


@pytest.mark.parametrize(
    ("cls", "action", "first"),
    [(FineTuningJobPauseOperator, "pause", "running"), (FineTuningJobResumeOperator, "resume", "paused")],
)
def test_a_job_that_ends_between_the_read_and_the_action_is_said_to_have_ended(
    context: dict[str, Any], api: FakeAPI, cls: type, action: str, first: str
) -> None:
    api.on("GET", JOB, job(status=first), job(status="succeeded"))
    refused = {"error": {"message": "Job is not in a state to do that", "type": "invalid_request_error"}}
    sent = api.on("POST", f"{JOB}/{action}", httpx.Response(409, headers={"x-should-retry": "false"}, json=refused))

    with pytest.raises(FineTuningError) as info:
        cls(task_id=action, job_id="ftjob-1").execute(context)

    assert str(info.value) == f"Cannot {action} fine-tuning job ftjob-1: it has already ended (succeeded)"
    assert sent.call_count == 1


@pytest.mark.parametrize("status", ENDED)
def test_cancelling_an_ended_job_is_done(context: dict[str, Any], api: FakeAPI, status: str) -> None:
    api.on("GET", JOB, job(status=status))
    cancel = api.on("POST", f"{JOB}/cancel", job(status="cancelled"))

    result = FineTuningJobCancelOperator(task_id="cancel", job_id="ftjob-1", wait_for_completion=True).execute(context)

    assert result == status
    assert cancel.call_count == 0
    assert context["ti"].xcoms["status"] == status


def test_resume_waits_until_the_job_runs_not_while_it_is_queued(context: dict[str, Any], api: FakeAPI) -> None:
    reads = api.on("GET", JOB, job(status="paused"), job(status="queued"), job(status="queued"), job(status="running"))
    resume = api.on("POST", f"{JOB}/resume", job(status="queued"))
    api.on("GET", f"{JOB}/events", page([]))
    op = FineTuningJobResumeOperator(task_id="resume", job_id="ftjob-1", wait_for_completion=True, poll_interval=0.0)

    assert op.execute(context) == "running"
    assert resume.call_count == 1
    assert reads.call_count == 4
    assert context["ti"].xcoms["status"] == "running"


def test_resume_of_a_queued_job_waits_until_it_runs(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", JOB, job(status="queued"), job(status="running"))
    api.on("GET", f"{JOB}/events", page([]))
    op = FineTuningJobResumeOperator(task_id="resume", job_id="ftjob-1", wait_for_completion=True, poll_interval=0.0)

    assert op.execute(context) == "running"
    assert api.sent("POST") == []


def test_resume_wait_ends_when_the_job_succeeds(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", JOB, job(status="paused"), job(status="succeeded"))
    api.on("POST", f"{JOB}/resume", job(status="queued"))
    api.on("GET", f"{JOB}/events", page([]))
    op = FineTuningJobResumeOperator(task_id="resume", job_id="ftjob-1", wait_for_completion=True, poll_interval=0.0)

    assert op.execute(context) == "succeeded"


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_resume_wait_fails_when_the_job_ends_otherwise(context: dict[str, Any], api: FakeAPI, status: str) -> None:
    api.on("GET", JOB, job(status="paused"), job(status=status))
    api.on("POST", f"{JOB}/resume", job(status="queued"))
    api.on("GET", f"{JOB}/events", page([]))
    op = FineTuningJobResumeOperator(task_id="resume", job_id="ftjob-1", wait_for_completion=True, poll_interval=0.0)

    with pytest.raises(FineTuningError, match=f"Job ftjob-1 became {status}, not running or succeeded"):
        op.execute(context)


def test_resume_without_waiting_returns_the_status_the_service_gave(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", JOB, job(status="paused"))
    api.on("POST", f"{JOB}/resume", job(status="queued"))

    assert FineTuningJobResumeOperator(task_id="resume", job_id="ftjob-1").execute(context) == "queued"


@pytest.mark.parametrize("cls", [FineTuningJobCancelOperator, FineTuningJobPauseOperator, FineTuningJobResumeOperator])
def test_job_actions_name_their_connection(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    parameter = inspect.signature(cls.__init__).parameters.get("finetune_conn_id")
    assert parameter is not None
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
    assert parameter.default == "finetune_default"
    assert ":param finetune_conn_id:" in (cls.__doc__ or "")
    assert cls(task_id="act", job_id="ftjob-1", finetune_conn_id="finetune_other").finetune_conn_id == "finetune_other"
