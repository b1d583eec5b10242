"""The create-job operator and the job actions at the HTTP layer: one job per task instance, XComs, errors."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import TaskDeferred  # type: ignore[no-redef]

from airflow_provider_finetune.exceptions import (
    FineTuningError,
    FineTuningJobFailed,
    InvalidRequestError,
    UnsafeToRetryError,
)
from airflow_provider_finetune.hooks.finetune import TASK_TAG_KEY
from airflow_provider_finetune.operators.finetune import (
    FineTuningJobCancelOperator,
    FineTuningJobOperator,
    FineTuningJobPauseOperator,
    FineTuningJobResumeOperator,
    task_tag,
)
from airflow_provider_finetune.rules.once import REQUEST_KEY
from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger
from tests.hooks.conftest import SECRET, FakeAPI, checkpoint, event, job, page
from tests.operators.conftest import FakeStateStore, FakeTI

JOBS = "fine_tuning/jobs"


def operator(**kwargs: Any) -> FineTuningJobOperator:
    defaults: dict[str, Any] = {
        "task_id": "fine_tune",
        "model": "gpt-4o-mini",
        "training_file": "file-abc",
        "poll_interval": 0.0,
        "deferrable": False,
    }
    return FineTuningJobOperator(**{**defaults, **kwargs})


def done(job_id: str = "ftjob-1") -> dict[str, Any]:
    return job(
        job_id,
        status="succeeded",
        fine_tuned_model="ft:gpt-4o-mini:org::abc",
        trained_tokens=1234,
        result_files=["file-r"],
    )


def test_tag_is_stable_and_distinct_per_task_instance() -> None:
    first = task_tag({"ti": FakeTI()})  # type: ignore[typeddict-item]
    assert first == task_tag({"ti": FakeTI()})  # type: ignore[typeddict-item]
    assert first != task_tag({"ti": FakeTI(map_index=3)})  # type: ignore[typeddict-item]
    assert first != task_tag({"ti": FakeTI(run_id="manual__1")})  # type: ignore[typeddict-item]
    assert len(first) <= 64


def test_runs_to_success_on_the_worker(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", JOBS, page([]))
    create = api.on("POST", JOBS, job(status="validating_files"))
    api.on("GET", f"{JOBS}/ftjob-1", job(status="running"), done())
    api.on("GET", f"{JOBS}/ftjob-1/events", page([event("ev-1", "Fine-tuning job started")]))
    api.on("GET", f"{JOBS}/ftjob-1/checkpoints", page([checkpoint("c1", 10)]))
    result = operator(suffix="weekly", metadata={"team": "ml"}).execute(context)
    assert result == "ft:gpt-4o-mini:org::abc"
    xcoms = context["ti"].xcoms
    assert xcoms["job_id"] == "ftjob-1"
    assert xcoms["finetune_conn_id"] == "finetune_default"  # its id only: the UI finds the job there
    assert xcoms["status"] == "succeeded"
    assert xcoms["trained_tokens"] == 1234
    assert xcoms["result_files"] == ["file-r"]
    assert xcoms["checkpoints"][0]["fine_tuned_model_checkpoint"].endswith("ckpt-step-10")
    assert xcoms["checkpoints"][0]["metrics"]["valid_loss"] == 0.7
    body = json.loads(create.calls[0].request.content)
    assert body["metadata"] == {
        "team": "ml",
        TASK_TAG_KEY: task_tag(context),
        REQUEST_KEY: body["metadata"][REQUEST_KEY],
    }
    assert body["metadata"][REQUEST_KEY].startswith("rq-")
    assert body["suffix"] == "weekly"
    assert xcoms["job_url"] is None  # this service has no job page


def test_job_url_for_the_openai_dashboard(context: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_OPENAI", json.dumps({"conn_type": "finetune", "password": "sk-x1234"}))
    op = operator(finetune_conn_id="finetune_openai")
    op._push_job(context, __import__("airflow_provider_finetune.models").models.FineTuningJob.model_validate(job()))
    assert context["ti"].xcoms["job_url"] == "https://platform.openai.com/finetune/ftjob-1"


def test_defers_with_an_absolute_deadline(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", JOBS, page([]))
    api.on("POST", JOBS, job(status="queued"))
    with pytest.raises(TaskDeferred) as deferred:
        operator(deferrable=True, timeout=3600, poll_interval=30).execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, FineTuningJobTrigger)
    assert deferred.value.method_name == "execute_complete"
    _, kwargs = trigger.serialize()
    assert kwargs["job_id"] == "ftjob-1"
    assert kwargs["poll_interval"] == 30
    assert kwargs["deadline"] > 1e9
    assert SECRET not in json.dumps(kwargs)
    assert context["ti"].xcoms["job_id"] == "ftjob-1"  # pushed before the wait


def test_execute_complete_success(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", f"{JOBS}/ftjob-1", done())
    api.on("GET", f"{JOBS}/ftjob-1/checkpoints", page([]))
    event_ = {"status": "succeeded", "job_id": "ftjob-1", "message": "", "last_event_id": None}
    assert operator().execute_complete(context, event_) == "ft:gpt-4o-mini:org::abc"


def test_an_end_the_list_reported_but_the_job_s_record_denies_is_waited_on(
    context: dict[str, Any], api: FakeAPI
) -> None:
    """The poller read the end from the service's list; the job's own record still runs: it is not a failure."""
    api.on("GET", f"{JOBS}/ftjob-1", job(status="running"))
    task = operator(deferrable=True)
    budget = {"max_cost": 5.0, "price": 1.0, "tokens_per_epoch": 1000, "epochs": 3, "service_estimate": None}
    event_ = {"status": "succeeded", "job_id": "ftjob-1", "message": "", "last_event_id": None}
    with pytest.raises(TaskDeferred) as again:
        task.execute_complete(context, event_, deadline=2e9, budget=budget)
    trigger = again.value.trigger
    assert isinstance(trigger, FineTuningJobTrigger)
    assert (trigger.job_id, trigger.deadline, trigger.budget) == ("ftjob-1", 2e9, budget)
    assert again.value.kwargs == {"deadline": 2e9, "budget": budget}
    assert context["ti"].xcoms["status"] == "running"


def test_execute_complete_rereads_the_job_and_fails_with_its_error(context: dict[str, Any], api: FakeAPI) -> None:
    api.on(
        "GET",
        f"{JOBS}/ftjob-1",
        job(
            status="failed",
            error={"code": "invalid_training_file", "message": "line 3: not JSON", "param": "training_file"},
        ),
    )
    with pytest.raises(FineTuningJobFailed) as info:
        operator().execute_complete(context, {"status": "failed", "job_id": "ftjob-1"})
    assert (info.value.code, info.value.param) == ("invalid_training_file", "training_file")
    assert "line 3: not JSON" in str(info.value)
    assert context["ti"].xcoms["status"] == "failed"


def test_cancelled_job_fails_the_task(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", f"{JOBS}/ftjob-1", job(status="cancelled"))
    with pytest.raises(FineTuningJobFailed, match="cancelled"):
        operator().execute_complete(context, {"status": "cancelled", "job_id": "ftjob-1"})


def test_timeout_fails_the_task_and_cancels_the_job(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", f"{JOBS}/ftjob-1", job(status="running"))
    cancel = api.on("POST", f"{JOBS}/ftjob-1/cancel", job(status="cancelled"))
    with pytest.raises(FineTuningJobFailed, match="deadline"):
        operator().execute_complete(
            context,
            {"status": "timeout", "job_id": "ftjob-1", "message": "Job ftjob-1 did not finish before the deadline"},
        )
    assert cancel.call_count == 1


def test_a_job_that_succeeds_as_its_wait_times_out_is_a_success(context: dict[str, Any], api: FakeAPI) -> None:
    """Running when read, succeeded when the cancel reached it (the service refuses): its model is the result."""
    api.on("GET", f"{JOBS}/ftjob-1", job(status="running"), done())
    api.on("GET", f"{JOBS}/ftjob-1/checkpoints", page([]))
    refused = {"error": {"message": "Job has already succeeded", "type": "invalid_request_error"}}
    conflict = httpx.Response(409, headers={"x-should-retry": "false"}, json=refused)
    cancel = api.on("POST", f"{JOBS}/ftjob-1/cancel", conflict)
    model = operator().execute_complete(context, {"status": "timeout", "job_id": "ftjob-1", "message": "deadline"})
    assert model == "ft:gpt-4o-mini:org::abc"
    assert context["ti"].xcoms["status"] == "succeeded"
    assert context["ti"].xcoms["fine_tuned_model"] == model
    assert cancel.call_count == 1


def test_a_job_that_failed_as_its_wait_timed_out_fails_with_its_own_error(
    context: dict[str, Any], api: FakeAPI
) -> None:
    api.on("GET", f"{JOBS}/ftjob-1", job(status="failed", error={"code": "oom", "message": "out of memory"}))
    cancel = api.on("POST", f"{JOBS}/ftjob-1/cancel", job(status="cancelled"))
    with pytest.raises(FineTuningJobFailed, match="out of memory") as info:
        operator().execute_complete(context, {"status": "timeout", "job_id": "ftjob-1", "message": "deadline"})
    assert info.value.code == "oom"
    assert cancel.call_count == 0


def test_timeout_can_leave_the_job_running(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", f"{JOBS}/ftjob-1", job(status="running"))
    cancel = api.on("POST", f"{JOBS}/ftjob-1/cancel", job(status="cancelled"))
    with pytest.raises(FineTuningJobFailed):
        operator(cancel_on_timeout=False).execute_complete(context, {"status": "timeout", "job_id": "ftjob-1"})
    assert cancel.call_count == 0


@pytest.mark.parametrize(
    "event_",
    [None, "succeeded", {"status": "succeeded"}, {"job_id": "ftjob-1"}, {"status": "weird", "job_id": "ftjob-1"}],
)
def test_execute_complete_refuses_unexpected_events(context: dict[str, Any], api: FakeAPI, event_: Any) -> None:
    api.on("GET", f"{JOBS}/ftjob-1", job(status="running"))
    with pytest.raises(FineTuningError):
        operator().execute_complete(context, event_)


def test_error_event_fails_the_task(context: dict[str, Any], api: FakeAPI) -> None:
    with pytest.raises(FineTuningError, match="polls of job"):
        operator().execute_complete(
            context, {"status": "error", "job_id": "ftjob-1", "message": "10 polls of job ftjob-1 failed in a row"}
        )
    assert api.requests == []


def ours(context: dict[str, Any], job_: dict[str, Any]) -> dict[str, Any]:
    """A job as the service lists it, carrying this task instance's tag."""
    return {**job_, "metadata": {TASK_TAG_KEY: task_tag(context)}}  # type: ignore[arg-type]


def test_wait_on_worker_times_out(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", JOBS, page([ours(context, job(status="running"))]))
    api.on("GET", f"{JOBS}/ftjob-1", job(status="running"))
    api.on("GET", f"{JOBS}/ftjob-1/events", page([]))
    cancel = api.on("POST", f"{JOBS}/ftjob-1/cancel", job(status="cancelled"))
    with pytest.raises(FineTuningJobFailed, match="deadline"):
        operator(timeout=0.2, poll_interval=0.05).execute(context)
    assert cancel.call_count == 1


def test_reattaches_instead_of_creating(context: dict[str, Any], api: FakeAPI) -> None:
    lookup = api.on("GET", JOBS, page([ours(context, job(status="running"))]))
    create = api.on("POST", JOBS, job("ftjob-2"))
    api.on("GET", f"{JOBS}/ftjob-1", done())
    api.on("GET", f"{JOBS}/ftjob-1/events", page([]))
    api.on("GET", f"{JOBS}/ftjob-1/checkpoints", page([]))
    assert operator().execute(context) == "ft:gpt-4o-mini:org::abc"
    assert create.call_count == 0
    query = parse_qs(urlsplit(str(lookup.calls[0].request.url)).query)
    assert query[f"metadata[{TASK_TAG_KEY}]"] == [task_tag(context)]


def test_succeeded_job_is_returned_without_waiting(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", JOBS, page([ours(context, done())]))
    api.on("GET", f"{JOBS}/ftjob-1/checkpoints", page([]))
    assert operator(deferrable=True).execute(context) == "ft:gpt-4o-mini:org::abc"
    assert api.sent("POST") == []


def test_task_state_store_is_used_first(context: dict[str, Any], api: FakeAPI) -> None:
    context["task_state_store"] = FakeStateStore({"job_id": "ftjob-7"})
    api.on("GET", f"{JOBS}/ftjob-7", job("ftjob-7", status="running"))
    with pytest.raises(TaskDeferred):
        operator(deferrable=True).execute(context)
    assert [r.url.path for r in api.requests] == ["/v1/fine_tuning/jobs/ftjob-7"]


def test_task_state_store_keeps_the_new_job(context: dict[str, Any], api: FakeAPI) -> None:
    store = FakeStateStore()
    context["task_state_store"] = store
    api.on("GET", JOBS, page([]))
    api.on("POST", JOBS, job("ftjob-9"))
    with pytest.raises(TaskDeferred):
        operator(deferrable=True).execute(context)
    assert store.values["job_id"] == "ftjob-9"
    assert store.values["intent"]["fingerprint"].startswith("rq-")


def test_ambiguous_create_never_makes_a_second_job(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", JOBS, page([]), page([ours(context, job("ftjob-made", status="queued"))]))
    create = api.on("POST", JOBS, httpx.Response(502), job("ftjob-second"))
    with pytest.raises(TaskDeferred):
        operator(deferrable=True).execute(context)
    assert create.call_count == 1
    assert context["ti"].xcoms["job_id"] == "ftjob-made"


def test_create_failing_ambiguously_every_time_fails_the_try_without_a_second_job(
    context: dict[str, Any], api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("airflow_provider_finetune.core.flows.time.sleep", lambda seconds: None)
    lookup = api.on("GET", JOBS, page([]))
    create = api.on("POST", JOBS, httpx.Response(500))
    with pytest.raises(UnsafeToRetryError):
        operator(deferrable=True).execute(context)
    # Each create after the first only after a lookup proved the one before made nothing, as often as the
    # connection's max_retries (3) allow.
    assert create.call_count == 4
    assert lookup.call_count == 5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"suffix": "x" * 65}, "suffix"),
        ({"seed": -1}, "seed"),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 51}}}}, "method"),
        ({"method": {"type": "reinforcement"}}, "method"),
        ({"training_file": ""}, "training_file"),
        ({"model": "gpt 4o"}, "model"),
    ],
)
def test_bad_arguments_fail_before_any_request(
    context: dict[str, Any], api: FakeAPI, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        operator(**kwargs).execute(context)
    assert info.value.field is not None
    assert info.value.field.startswith(field)
    assert api.requests == []


def test_templated_numbers_are_numbers(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", JOBS, page([]))
    create = api.on("POST", JOBS, done())
    api.on("GET", f"{JOBS}/ftjob-1/checkpoints", page([]))
    operator(
        seed="42",
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": "3", "beta": "0.1", "batch_size": "auto"}}},
    ).execute(context)
    body = json.loads(create.calls[0].request.content)
    assert body["seed"] == 42
    assert body["method"]["dpo"]["hyperparameters"] == {"n_epochs": 3, "beta": 0.1, "batch_size": "auto"}


def test_no_wait_returns_after_create(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", JOBS, page([]))
    api.on("POST", JOBS, job(status="queued"))
    assert operator(wait_for_completion=False).execute(context) is None
    assert context["ti"].xcoms["job_id"] == "ftjob-1"


def test_on_kill_cancels_the_running_job(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", f"{JOBS}/ftjob-1", job(status="running"))
    cancel = api.on("POST", f"{JOBS}/ftjob-1/cancel", job(status="cancelled"))
    op = operator()
    op.job_id = "ftjob-1"
    op.on_kill()
    assert cancel.call_count == 1
    quiet = operator(cancel_on_kill=False)
    quiet.job_id = "ftjob-1"
    quiet.on_kill()
    assert cancel.call_count == 1


@pytest.mark.parametrize(
    ("cls", "status", "path", "calls"),
    [
        (FineTuningJobPauseOperator, "running", "pause", 1),
        (FineTuningJobPauseOperator, "paused", "pause", 0),
        (FineTuningJobResumeOperator, "paused", "resume", 1),
        (FineTuningJobResumeOperator, "running", "resume", 0),
        (FineTuningJobCancelOperator, "running", "cancel", 1),
        (FineTuningJobCancelOperator, "succeeded", "cancel", 0),
    ],
)
def test_job_actions_are_idempotent(
    context: dict[str, Any], api: FakeAPI, cls: type, status: str, path: str, calls: int
) -> None:
    after = {"pause": "paused", "resume": "running", "cancel": "cancelled"}[path]
    api.on("GET", f"{JOBS}/ftjob-1", job(status=status))
    action = api.on("POST", f"{JOBS}/ftjob-1/{path}", job(status=after))
    result = cls(task_id="act", job_id="ftjob-1").execute(context)
    assert action.call_count == calls
    assert result == (after if calls else status)
    assert context["ti"].xcoms["job_id"] == "ftjob-1"


def test_pause_waits_for_paused(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", f"{JOBS}/ftjob-1", job(status="running"), job(status="pausing"), job(status="paused"))
    api.on("POST", f"{JOBS}/ftjob-1/pause", job(status="pausing"))
    api.on("GET", f"{JOBS}/ftjob-1/events", page([]))
    op = FineTuningJobPauseOperator(task_id="pause", job_id="ftjob-1", wait_for_completion=True, poll_interval=0.0)
    assert op.execute(context) == "paused"


def test_pause_fails_when_the_job_ends_instead(context: dict[str, Any], api: FakeAPI) -> None:
    api.on("GET", f"{JOBS}/ftjob-1", job(status="running"), job(status="failed"))
    api.on("POST", f"{JOBS}/ftjob-1/pause", job(status="pausing"))
    api.on("GET", f"{JOBS}/ftjob-1/events", page([]))
    op = FineTuningJobPauseOperator(task_id="pause", job_id="ftjob-1", wait_for_completion=True, poll_interval=0.0)
    with pytest.raises(FineTuningError, match="became failed"):
        op.execute(context)


def test_reinforcement_grader_placeholders_survive_templating(context: dict[str, Any]) -> None:
    grader = {
        "type": "string_check",
        "name": "exact",
        "input": "{{ sample.output_text }}",
        "reference": "{{item.label}}",
        "operation": "eq",
    }
    op = operator(
        suffix="rft-{{ ds_nodash }}",
        method={"type": "reinforcement", "reinforcement": {"grader": grader}},
    )
    op.render_template_fields({**context, "ds_nodash": "20261116"})  # type: ignore[arg-type]
    assert op.suffix == "rft-20261116"
    assert op.method["reinforcement"]["grader"] == grader
