"""The plugin's pieces without a browser: the shared action rules, connection discovery, the job directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.operators.finetune import (
    FineTuningJobCancelOperator,
    FineTuningJobPauseOperator,
    FineTuningJobResumeOperator,
)
from airflow_provider_finetune.plugins import FineTuningPlugin
from airflow_provider_finetune.plugins.jobs import Directory, environment_connections
from airflow_provider_finetune.rules import job_actions

KEY = "sk-plugin-test-key"


@pytest.mark.parametrize(
    ("operator", "rule"),
    [
        (FineTuningJobCancelOperator, job_actions.CANCEL),
        (FineTuningJobPauseOperator, job_actions.PAUSE),
        (FineTuningJobResumeOperator, job_actions.RESUME),
    ],
)
def test_the_operators_and_the_page_share_one_rule(operator: type, rule: job_actions.ActionRule) -> None:
    assert operator.rule is rule
    assert (operator.action, operator.capability, operator.refused_statuses) == (
        rule.method,
        rule.capability,
        rule.refused,
    )


@pytest.mark.parametrize(
    ("rule", "status", "expected"),
    [
        (job_actions.PAUSE, "succeeded", "Cannot pause fine-tuning job j: it has already ended (succeeded)"),
        (job_actions.RESUME, "cancelling", "Cannot resume fine-tuning job j: it is being cancelled (cancelling)"),
        (job_actions.PAUSE, "running", None),
        (job_actions.CANCEL, "succeeded", None),  # nothing to cancel, but nothing refused either
    ],
)
def test_refusal(rule: job_actions.ActionRule, status: str, expected: str | None) -> None:
    assert job_actions.refusal(rule, "j", status) == expected


def test_which_actions_apply() -> None:
    assert [v for v, r in job_actions.ACTIONS.items() if r.applies("running")] == ["pause", "cancel"]
    assert [v for v, r in job_actions.ACTIONS.items() if r.applies("paused")] == ["resume", "cancel"]
    assert [v for v, r in job_actions.ACTIONS.items() if r.applies("failed")] == []


def test_environment_connections_of_type_finetune_only() -> None:
    environ = {
        "AIRFLOW_CONN_FAST": json.dumps({"conn_type": "finetune", "host": "http://x"}),
        "AIRFLOW_CONN_URI": "finetune://:key@host/v1",
        "AIRFLOW_CONN_OTHER": json.dumps({"conn_type": "http"}),
        "AIRFLOW_CONN_BROKEN": "{not json",
        "PATH": "/bin",
    }
    assert environment_connections(environ) == ["fast", "uri"]


def test_the_plugin_declares_the_page_and_the_task_tab() -> None:
    from fastapi import FastAPI

    entry = FineTuningPlugin.fastapi_apps[0]
    assert entry["url_prefix"] == "/finetune"
    assert isinstance(entry.get("app"), FastAPI)
    assert {v["destination"] for v in FineTuningPlugin.external_views} == {"nav", "task_instance"}


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=KEY, speed=1, seed=3)) as server:
        conn = {"conn_type": "finetune", "host": server.base_url, "password": KEY}
        monkeypatch.setenv("AIRFLOW_CONN_UI_FAST", json.dumps(conn))
        monkeypatch.setenv("AIRFLOW_CONN_UI_EMPTY", json.dumps({**conn, "password": "sk-wrong"}))
        yield server


@pytest.mark.integration
def test_the_directory_places_many_jobs_with_one_list_call_per_page(emulator: EmulatorServer) -> None:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook

    hook = FineTuningHook("ui_fast")
    lines = "\n".join(
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]})
        for i in range(10)
    )
    file_id = hook.upload_file(lines.encode(), filename="t.jsonl").id
    ids = [hook.create_job({"model": "gpt-4o-mini-2024-07-18", "training_file": file_id}).id for _ in range(5)]
    now = [0.0]
    directory = Directory(clock=lambda: now[0])

    # A connection that cannot answer (wrong key) is skipped, not fatal.
    directory.locate(ids, ["ui_empty", "ui_fast"], live=ids)
    assert [directory.connection_of(j) for j in ids] == ["ui_fast"] * 5
    assert directory.list_calls == 1
    directory.locate(ids, ["ui_empty", "ui_fast"], live=ids)
    assert directory.list_calls == 1  # fresh enough: no request at all
    now[0] += 60
    directory.locate(ids, ["ui_empty", "ui_fast"], live=ids)
    assert directory.list_calls == 2  # stale: one list call where the jobs live, not one per job


def test_the_directory_pages_with_the_service_s_own_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fireworks and Bedrock page with a token, not the last job's id: the next page is asked with the token."""
    from airflow_provider_finetune.models import FineTuningJob, Page

    def jobs(*ids: str) -> list[FineTuningJob]:
        return [FineTuningJob.model_validate({"id": i, "status": "running", "model": "m"}) for i in ids]

    class Paged:
        def __init__(self) -> None:
            self.afters: list[str | None] = []

        def list_jobs(self, *, after: str | None = None, limit: int | None = None) -> Page[FineTuningJob]:
            self.afters.append(after)
            if after is None:
                return Page[FineTuningJob](data=jobs("accounts/a/jobs/1"), has_more=True, last_id="token-2")
            assert after == "token-2", after
            return Page[FineTuningJob](data=jobs("accounts/a/jobs/2"), has_more=False)

    paged = Paged()
    directory = Directory()
    monkeypatch.setattr(directory, "hook", lambda conn_id: paged)
    directory.locate(["accounts/a/jobs/2"], ["fw"])
    assert paged.afters == [None, "token-2"]
    assert directory.connection_of("accounts/a/jobs/2") == "fw"


def test_a_job_no_list_shows_is_asked_for_by_id_on_the_connection_its_task_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fireworks lists one kind of job: a DPO job its task recorded is still found, on the task's connection."""
    from airflow_provider_finetune.models import FineTuningJob, Page
    from airflow_provider_finetune.plugins import app
    from airflow_provider_finetune.plugins.jobs import JobRecord

    dpo = "accounts/a/dpoJobs/ft-1"

    class Unlisted:
        def list_jobs(self, *, after: str | None = None, limit: int | None = None) -> Page[FineTuningJob]:
            return Page[FineTuningJob](data=[], has_more=False)

        def get_job(self, job_id: str) -> FineTuningJob:
            return FineTuningJob.model_validate({"id": job_id, "status": "running", "model": "m"})

    directory = Directory()
    monkeypatch.setattr(directory, "hook", lambda conn_id: Unlisted())
    monkeypatch.setattr(app, "directory", directory)
    record = JobRecord(dpo, "d", "r", "t", -1, None, conn_id="fw")
    conn_id, _ = app._hook_for(record, ["other"])
    assert conn_id == "fw"
    assert directory.connection_of(dpo) == "fw"


class _Rows:
    """A session whose query answers with the given XCom rows (what load_records reads of the database)."""

    def __init__(self, rows: list[dict[str, object]]) -> None:

        self.rows = [SimpleNamespace(**row) for row in rows]

    def execute(self, query: object) -> list[SimpleNamespace]:
        return self.rows


def _xcoms(task: str, **values: object) -> list[dict[str, object]]:
    from datetime import datetime, timezone

    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [
        {"dag_id": "d", "run_id": "r", "task_id": task, "map_index": -1, "key": k, "value": json.dumps(v)}
        | {"timestamp": at}
        for k, v in values.items()
    ]


def test_the_list_shows_a_cost_where_the_create_task_pushed_one() -> None:
    from airflow_provider_finetune.plugins.jobs import RECORDED_KEYS, JobView, load_records

    assert {"estimated_cost", "total_price"} <= set(RECORDED_KEYS)  # the query asks for them
    session = _Rows(
        [
            *_xcoms("estimated", job_id="ftjob-e", estimated_cost=1.25),
            *_xcoms("reported", job_id="ftjob-r", estimated_cost=1.25, total_price=3.5),
            *_xcoms("unknown", job_id="ftjob-u"),
            *_xcoms("not_a_number", job_id="ftjob-n", estimated_cost="cheap", total_price=True),
        ]
    )
    records = {r.job_id: r for r in load_records(session, readable_dags=None)}  # type: ignore[arg-type]
    costs = {job_id: JobView(record=r).to_json()["estimated_cost"] for job_id, r in records.items()}
    # The reported price wins over an estimate; with neither (the provider has no price table) there is none.
    assert costs == {"ftjob-e": 1.25, "ftjob-r": 3.5, "ftjob-u": None, "ftjob-n": None}


class _Listed:
    """A connection whose job list shows the given jobs, counting the list calls it answers."""

    def __init__(self, *jobs: tuple[str, str]) -> None:
        from airflow_provider_finetune.models import FineTuningJob

        self.jobs = [FineTuningJob.model_validate({"id": i, "status": s, "model": "m"}) for i, s in jobs]
        self.calls = 0

    def list_jobs(self, *, after: str | None = None, limit: int | None = None) -> Any:
        from airflow_provider_finetune.models import FineTuningJob, Page

        self.calls += 1
        return Page[FineTuningJob](data=self.jobs, has_more=False)


def test_a_job_that_has_ended_is_never_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks that recorded a status that had not ended: once the service says the job ended, it is remembered."""
    service = _Listed(("ftjob-1", "succeeded"), ("ftjob-2", "running"))
    now = [0.0]
    directory = Directory(clock=lambda: now[0])
    monkeypatch.setattr(directory, "hook", lambda conn_id: service)
    directory.locate(["ftjob-1"], ["ft"], live=["ftjob-1"])
    assert service.calls == 1
    for _ in range(3):
        now[0] += 3600
        directory.locate(["ftjob-1"], ["ft"], live=["ftjob-1"])
    assert service.calls == 1  # ended: its reading stays true
    now[0] += 3600
    directory.locate(["ftjob-2"], ["ft"], live=["ftjob-2"])
    directory.locate(["ftjob-2"], ["ft"], live=["ftjob-2"])
    assert service.calls == 2  # running and stale: read again, once


def test_a_job_no_connection_lists_is_not_looked_for_on_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deleted job, or one on a connection gone: one walk of every connection, then none until the wait lapses."""
    from airflow_provider_finetune.plugins.jobs import ABSENT_TTL

    services = {"a": _Listed(("ftjob-1", "running")), "b": _Listed()}
    now = [0.0]
    directory = Directory(clock=lambda: now[0])
    monkeypatch.setattr(directory, "hook", lambda conn_id: services[conn_id])
    directory.locate(["ftjob-gone"], ["a", "b"], live=["ftjob-gone"])
    assert (services["a"].calls, services["b"].calls) == (1, 1)
    for _ in range(5):
        now[0] += ABSENT_TTL / 10
        directory.locate(["ftjob-gone"], ["a", "b"], live=["ftjob-gone"])
    assert (services["a"].calls, services["b"].calls) == (1, 1)
    now[0] += ABSENT_TTL
    directory.locate(["ftjob-gone"], ["a", "b"], live=["ftjob-gone"])
    assert (services["a"].calls, services["b"].calls) == (2, 2)  # looked for again after the wait


def test_jobs_made_in_one_second_list_newest_first_by_when_their_tasks_recorded_them() -> None:
    """A mapped task's jobs share the service's whole-second creation time: the later recorded comes first."""
    from datetime import datetime, timedelta, timezone

    from airflow_provider_finetune.plugins.jobs import JobRecord, JobView, newest_first

    second = datetime(2026, 12, 7, 12, 0, 0, tzinfo=timezone.utc)
    # Job ids are random: here they sort against the order the tasks made them in.
    made = [(f"ftjob-{'zyxwv'[i]}", i, second + timedelta(milliseconds=150 * i)) for i in range(5)]
    views = [
        JobView(JobRecord(job_id, "d", "r", "fine_tune", index, pushed), created_at=second.timestamp())
        for job_id, index, pushed in made
    ]
    older = JobView(JobRecord("ftjob-a", "d", "r0", "fine_tune", -1, second - timedelta(minutes=5)), created_at=None)
    rows = newest_first([older, *views])
    assert [row["map_index"] for row in rows] == [4, 3, 2, 1, 0, -1]
