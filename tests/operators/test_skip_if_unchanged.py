"""No retraining on unchanged data: real DAG runs (``dag.test()``) against the emulator over real HTTP.

Each DAG run is a new logical date of the same DAG, as a weekly schedule makes them; the previous runs'
records are read through Airflow's own XComs, and the recorded job is checked on the emulator.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.rules.unchanged import DATA_KEY, FILE_FIELDS, TrainingRecord, data_digest, tag_value
from tests.integration.conftest import Emulator, airflow_db, chat_lines, emulator, emulator_server
from tests.integration.test_operators import dag_bag, xcoms

__all__ = ["airflow_db", "emulator", "emulator_server"]

pytestmark = pytest.mark.integration

WEEK = timedelta(days=7)


class Weeks:
    """Weekly logical dates of one DAG, one after the other (every test starts its own year)."""

    year = 2030

    def __init__(self) -> None:
        Weeks.year += 1
        self.next = datetime(Weeks.year, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.next += WEEK
        return self.next


@pytest.fixture
def weeks() -> Weeks:
    return Weeks()


def run(dag_id: str, when: datetime, **conf: Any) -> tuple[Any, dict[str, Any]]:
    dag = dag_bag().get_dag(dag_id)
    dag_run = dag.test(logical_date=when, run_conf=conf)
    assert dag_run.state == "success"
    return dag_run, xcoms(dag_run.run_id, dag_id, "fine_tune")


@pytest.mark.parametrize("dag_id", ["ft_unchanged_deferrable", "ft_unchanged_on_worker"])
def test_a_run_with_unchanged_data_returns_the_last_model_and_pays_nothing(
    airflow_db: None, emulator: Emulator, tmp_path: Path, weeks: Weeks, dag_id: str
) -> None:
    source = tmp_path / "train.jsonl"
    source.write_bytes(chat_lines())

    _, first = run(dag_id, weeks(), source=str(source))
    job_id = first["job_id"]
    assert "reused_job_id" not in first
    assert first["training_record"] == {
        "job_id": job_id,
        "fine_tuned_model": first["return_value"],
        "training_data_digest": first["training_data_digest"],
        "request_fingerprint": first["request_fingerprint"],
        "finetune_conn_id": "finetune_default",
    }
    job = FineTuningHook().get_job(job_id)
    assert job.metadata[DATA_KEY] == tag_value(first["training_data_digest"], first["request_fingerprint"])

    # Next week: the same data is uploaded again (a new file id), the request is the same: nothing is trained.
    _, second = run(dag_id, weeks(), source=str(source))
    assert emulator.counters()["jobs_created"] == 1
    assert second["return_value"] == first["return_value"]
    assert second["reused_job_id"] == job_id
    assert second["job_id"] == job_id
    assert second["status"] == "succeeded"
    assert "are the same as those of job " + job_id in second["skipped_because"]
    assert second["training_data_digest"] == first["training_data_digest"]
    assert second["training_record"] == first["training_record"]
    assert emulator.requests_to("POST /v1/files") == 2

    # The week after, one line of the data changed: a new job, and its record replaces the old one.
    source.write_bytes(chat_lines(prefix="changed "))
    _, third = run(dag_id, weeks(), source=str(source))
    assert emulator.counters()["jobs_created"] == 2
    assert "reused_job_id" not in third
    assert third["job_id"] != job_id
    assert third["training_data_digest"] != first["training_data_digest"]
    assert third["request_fingerprint"] == first["request_fingerprint"]

    # Same data as last week, another request (suffix): trained again.
    _, fourth = run(dag_id, weeks(), source=str(source), suffix="other")
    assert emulator.counters()["jobs_created"] == 3
    assert "reused_job_id" not in fourth
    assert fourth["request_fingerprint"] != third["request_fingerprint"]

    # And the run after that compares itself with the newest record: the last job's, not the first one's.
    _, fifth = run(dag_id, weeks(), source=str(source), suffix="other")
    assert emulator.counters()["jobs_created"] == 3
    assert fifth["reused_job_id"] == fourth["job_id"]


def test_a_file_given_by_id_is_compared_by_its_content_on_the_service(
    airflow_db: None, emulator: Emulator, weeks: Weeks
) -> None:
    hook = FineTuningHook()
    first_file = hook.upload_file(chat_lines(prefix="by id "), filename="train.jsonl").id
    again = hook.upload_file(chat_lines(prefix="by id "), filename="train.jsonl").id
    other = hook.upload_file(chat_lines(prefix="by id, other "), filename="train.jsonl").id

    _, first = run("ft_unchanged_file_id", weeks(), training_file=first_file)
    _, second = run("ft_unchanged_file_id", weeks(), training_file=again)
    assert second["reused_job_id"] == first["job_id"]
    _, third = run("ft_unchanged_file_id", weeks(), training_file=other)
    assert "reused_job_id" not in third
    assert emulator.counters()["jobs_created"] == 2
    assert emulator.requests_to("GET /v1/files/{file_id}/content") == 3


def _rewrite_record(dag_id: str, run_id: str, **changes: Any) -> None:
    """Change what Airflow recorded of a run, as a record that no longer matches the service would read."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, key="training_record").one()
        # Stored as the task SDK stores it: a JSON object in the JSON column.
        row.value = {**XComModel.deserialize_value(row), **changes}


def _reaches(hook: FineTuningHook, job_id: str, status: str = "succeeded") -> Any:
    deadline = time.monotonic() + 60
    while (job := hook.get_job(job_id)).status != status:
        assert not job.status.is_terminal(), job.status
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return job


def test_the_record_alone_is_never_trusted(airflow_db: None, emulator: Emulator, weeks: Weeks) -> None:
    hook = FineTuningHook()
    file_id = hook.upload_file(chat_lines(prefix="trust "), filename="train.jsonl").id
    dag_id = "ft_unchanged_file_id"
    first_run, first = run(dag_id, weeks(), training_file=file_id, suffix="trust")

    # The record names a job that failed on the service (made here with the emulator's forced failure).
    failed = hook.create_job(
        {"model": "gpt-4o-mini-2024-07-18", "training_file": file_id, "metadata": {"emulator_force_failure": "x"}}
    )
    _reaches(hook, failed.id, "failed")
    _rewrite_record(dag_id, first_run.run_id, job_id=failed.id)
    second_run, second = run(dag_id, weeks(), training_file=file_id, suffix="trust")
    assert "reused_job_id" not in second
    assert second["job_id"] not in (first["job_id"], failed.id)
    assert second["trained_because"] == f"the service says job {failed.id} is failed, not succeeded"

    # The record names a job of the service that is not this task's (its own tag says another digest).
    stranger = hook.create_job({"model": "gpt-4o-mini-2024-07-18", "training_file": file_id, "suffix": "trust"})
    stranger = _reaches(hook, stranger.id)
    _rewrite_record(dag_id, second_run.run_id, job_id=stranger.id, fine_tuned_model=stranger.fine_tuned_model)
    _, third = run(dag_id, weeks(), training_file=file_id, suffix="trust")
    assert "reused_job_id" not in third
    assert emulator.counters()["jobs_created"] == 5  # three runs, the failed job and the stranger
    reason = f"job {stranger.id} does not carry this run's training data digest and request fingerprint"
    assert third["trained_because"] == reason


def test_digest_of_the_data_is_by_role() -> None:
    train = {"training_file": "a" * 64, "validation_file": None}
    swapped = {"training_file": None, "validation_file": "a" * 64}
    assert data_digest(train) != data_digest(swapped)
    assert data_digest(train) == data_digest(dict(reversed(list(train.items()))))
    assert FILE_FIELDS == ("training_file", "validation_file")


def test_a_record_that_is_not_one_is_ignored() -> None:
    assert TrainingRecord.from_json(None) is None
    assert TrainingRecord.from_json({"job_id": "ftjob-1"}) is None
    good = TrainingRecord("ftjob-1", "ft:m", "sha256-x", "rq-y", "finetune_default")
    assert TrainingRecord.from_json(good.to_json()) == good
    assert TrainingRecord.from_json({**good.to_json(), "job_id": ""}) is None
