"""Operators, triggers and sensors against the emulator over real loopback HTTP, and in real DAG runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any

import pytest

from airflow_provider_finetune.core.client import close_shared_async_clients
from airflow_provider_finetune.exceptions import FineTuningJobFailed
from airflow_provider_finetune.hooks.finetune import TASK_TAG_KEY, FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator, task_tag
from airflow_provider_finetune.sensors.finetune import FineTuningCheckpointSensor
from airflow_provider_finetune.triggers.finetune import FineTuningCheckpointTrigger, FineTuningJobTrigger
from airflow_provider_finetune.triggers.poller import MIN_EVENT_READS
from tests.hook_doors import async_call
from tests.integration.conftest import DAGS, Emulator
from tests.operators.conftest import FakeTI

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import TaskDeferred  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

CREATE = "POST /v1/fine_tuning/jobs"
CANCEL = "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel"


def dag_bag() -> Any:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    bag = DagBag(str(DAGS))
    assert bag.import_errors == {}
    return bag


def xcoms(run_id: str, dag_id: str, task_id: str) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).all()
        return {row.key: XComModel.deserialize_value(row) for row in rows}


def fresh_ti(**kwargs: Any) -> FakeTI:
    """A task instance of its own run, so that no other test's job carries its tag."""
    return FakeTI(run_id=f"test__{uuid.uuid4().hex}", **kwargs)


def operator(training_file: str, **kwargs: Any) -> FineTuningJobOperator:
    return FineTuningJobOperator(
        task_id="fine_tune",
        model="gpt-4o-mini-2024-07-18",
        training_file=training_file,
        poll_interval=0.2,
        **kwargs,
    )


@pytest.mark.parametrize("dag_id", ["ft_deferrable", "ft_on_worker"])
def test_dag_run_to_success_hands_the_model_downstream(
    airflow_db: None, emulator: Emulator, training_file: str, dag_id: str
) -> None:
    dag = dag_bag().get_dag(dag_id)
    run = dag.test(run_conf={"training_file": training_file})
    assert run.state == "success"
    ft = xcoms(run.run_id, dag_id, "fine_tune")
    model = ft["return_value"]
    assert model.startswith("ft:gpt-4o-mini-2024-07-18:emulator:it:")
    assert ft["status"] == "succeeded"
    assert ft["job_id"].startswith("ftjob-")
    assert ft["trained_tokens"] > 0
    assert len(ft["result_files"]) == 1
    assert len(ft["checkpoints"]) == 3
    assert all("train_loss" in c["metrics"] for c in ft["checkpoints"])
    # The emulator has no job page: the link is empty, not broken.
    assert ft["job_url"] is None
    assert ft["_link_FineTuningJobLink"] == ""
    evaluated = xcoms(run.run_id, dag_id, "evaluate")["return_value"]
    assert evaluated["model"] == model
    assert ":ckpt-step-" in evaluated["checkpoint"]
    job = FineTuningHook().get_job(ft["job_id"])
    assert job.metadata[TASK_TAG_KEY] == task_tag(_ti_context(dag_id, run.run_id))
    assert job.metadata["dag"] == dag_id
    assert emulator.counters()["jobs_created"] == 1


def _ti_context(dag_id: str, run_id: str) -> dict[str, Any]:
    return {"ti": FakeTI(dag_id=dag_id, task_id="fine_tune", run_id=run_id)}


def test_failure_details_reach_the_task(emulator: Emulator, training_file: str) -> None:
    op = operator(training_file, metadata={"emulator_force_failure": "server_error"})
    with pytest.raises(FineTuningJobFailed) as info:
        op.execute({"ti": fresh_ti()})  # type: ignore[arg-type]
    assert info.value.status == "failed"
    assert info.value.code == "server_error"
    assert "server_error" in str(info.value)


def test_bad_training_file_fails_with_the_line(emulator: Emulator) -> None:
    bad = FineTuningHook().upload_file(b'{"messages": []}\n' * 12, filename="bad.jsonl").id
    with pytest.raises(FineTuningJobFailed) as info:
        operator(bad).execute({"ti": fresh_ti()})  # type: ignore[arg-type]
    assert info.value.param == "training_file"
    assert "line 1" in str(info.value)


def test_on_kill_cancels_the_job(emulator: Emulator, training_file: str) -> None:
    op = operator(training_file)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute({"ti": fresh_ti()})  # type: ignore[arg-type]
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.time() + 10
    while op.job_id is None and time.time() < deadline:
        time.sleep(0.05)
    op.on_kill()
    worker.join(timeout=15)
    assert FineTuningHook().get_job(op.job_id).status.value == "cancelled"
    assert isinstance(errors[0], FineTuningJobFailed)
    assert emulator.requests_to(CANCEL) == 1


async def test_trigger_on_kill_cancels_the_job(emulator: Emulator, training_file: str) -> None:
    job = FineTuningHook().create_job({"model": "gpt-4o-mini-2024-07-18", "training_file": training_file})
    await FineTuningJobTrigger(job.id).on_kill()
    assert (await FineTuningHook().aget_job(job.id)).status.value == "cancelled"
    await close_shared_async_clients()


def test_no_duplicate_job_when_the_worker_dies_after_create(emulator: Emulator, training_file: str) -> None:
    """The worker is killed right after the create call, before it pushed anything; the retry reattaches."""
    run_id = f"test__{uuid.uuid4().hex}"
    script = textwrap.dedent(
        f"""
        from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
        from tests.operators.conftest import FakeTI
        op = FineTuningJobOperator(task_id="fine_tune", model="gpt-4o-mini-2024-07-18",
                                   training_file={training_file!r}, poll_interval=30)
        op.execute({{"ti": FakeTI(run_id={run_id!r})}})
        """
    )
    worker = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy(), cwd=os.getcwd())
    deadline = time.time() + 30
    while emulator.counters()["jobs_created"] == 0 and time.time() < deadline:
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert emulator.counters()["jobs_created"] == 1

    ti = FakeTI(run_id=run_id, try_number=2)
    model = operator(training_file).execute({"ti": ti})  # type: ignore[arg-type]
    assert model is not None
    assert emulator.counters()["jobs_created"] == 1


def test_no_duplicate_job_after_an_ambiguous_5xx(emulator: Emulator, training_file: str) -> None:
    emulator.faults(error_rate=1.0, after_processing=True, match=r"^POST /v1/fine_tuning/jobs$")
    ti = fresh_ti()
    with pytest.raises(TaskDeferred):
        operator(training_file, deferrable=True).execute({"ti": ti})  # type: ignore[arg-type]
    emulator.faults()
    assert emulator.counters()["jobs_created"] == 1
    assert emulator.requests_to(CREATE) == 1
    job = FineTuningHook().get_job(ti.xcoms["job_id"])
    assert job.metadata[TASK_TAG_KEY] == task_tag({"ti": ti})  # type: ignore[arg-type]


def test_no_duplicate_job_across_task_retries(emulator: Emulator, training_file: str) -> None:
    first = fresh_ti(try_number=1)
    retry = FakeTI(run_id=first.run_id, try_number=2)
    with pytest.raises(TaskDeferred) as one:
        operator(training_file, deferrable=True).execute({"ti": first})  # type: ignore[arg-type]
    with pytest.raises(TaskDeferred) as two:
        operator(training_file, deferrable=True).execute({"ti": retry})  # type: ignore[arg-type]
    assert one.value.trigger.job_id == two.value.trigger.job_id
    assert emulator.counters()["jobs_created"] == 1


async def test_trigger_recreated_mid_wait_finishes_with_no_side_effect(emulator: Emulator, training_file: str) -> None:
    job = await async_call(
        FineTuningHook(), "create_job", {"model": "gpt-4o-mini-2024-07-18", "training_file": training_file}
    )
    first = FineTuningJobTrigger(job.id, poll_interval=0.1)
    _, kwargs = first.serialize()
    run = first.run()
    waiting = asyncio.ensure_future(run.__anext__())
    await asyncio.sleep(0.5)
    assert not waiting.done()
    waiting.cancel()  # the triggerer goes away; a restart calls cleanup(), never on_kill()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await first.cleanup()
    await run.aclose()

    again = FineTuningJobTrigger(**json.loads(json.dumps(kwargs)))
    events = [event.payload async for event in again.run()]
    assert [e["status"] for e in events] == ["succeeded"]
    counters = emulator.counters()
    assert counters["jobs_created"] == 1
    assert counters["requests"].get(CANCEL, 0) == 0
    await close_shared_async_clients()


async def test_checkpoint_sensor_fires_on_a_threshold(emulator: Emulator, training_file: str) -> None:
    job = await async_call(
        FineTuningHook(), "create_job", {"model": "gpt-4o-mini-2024-07-18", "training_file": training_file}
    )
    trigger = FineTuningCheckpointTrigger(job.id, metric="train_loss", threshold=10.0, poll_interval=0.1)
    (event,) = [e.payload async for e in trigger.run()]
    assert event["status"] == "found"
    assert event["checkpoint"]["metrics"]["train_loss"] <= 10.0
    sensor = FineTuningCheckpointSensor(task_id="best", job_id=job.id, metric="train_loss", threshold=10.0)
    ti = fresh_ti()
    name = sensor.execute_complete({"ti": ti}, event)  # type: ignore[arg-type]
    assert name == event["checkpoint"]["fine_tuned_model_checkpoint"]
    assert name.startswith("ft:gpt-4o-mini-2024-07-18:emulator::")
    await close_shared_async_clients()


async def test_triggers_of_one_connection_share_their_polls(emulator: Emulator, training_file: str) -> None:
    """Sixty waits, one poller: after the first read of each job, one list call serves them all."""
    hook = FineTuningHook()
    jobs = [
        await async_call(hook, "create_job", {"model": "gpt-4o-mini-2024-07-18", "training_file": training_file})
        for _ in range(60)
    ]
    emulator.reset()
    triggers = [FineTuningJobTrigger(job.id, poll_interval=0.5) for job in jobs]

    async def one(trigger: FineTuningJobTrigger) -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    results = await asyncio.gather(*(one(t) for t in triggers))
    assert [[e["status"] for e in r] for r in results] == [["succeeded"]] * 60
    counters = emulator.counters()["requests"]
    per_job_reads = counters.get("GET /v1/fine_tuning/jobs/{fine_tuning_job_id}", 0)
    list_reads = counters.get("GET /v1/fine_tuning/jobs", 0)
    event_reads = counters.get("GET /v1/fine_tuning/jobs/{fine_tuning_job_id}/events", 0)
    assert per_job_reads == 0  # the newest pages of the list show every job, first sight included
    assert list_reads >= 1
    # Events: once per job at its end (every event up to it), plus the budget of running jobs' reads: at least
    # MIN_EVENT_READS per interval; a round lists at least once.
    assert event_reads <= 60 + MIN_EVENT_READS * list_reads
    # Without sharing, every poll of every trigger reads the job and its events: 2 x 60 per round.
    assert list_reads + event_reads < (2 * 60 * list_reads) / 4
    await close_shared_async_clients()


def test_a_create_refused_for_good_is_sent_once_and_not_retried(
    airflow_db: None, emulator: Emulator, training_file: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """retries=2 and an unknown model: one create reaches the service, and the task fails after its one try."""
    dag = dag_bag().get_dag("ft_refused")
    run = dag.test(run_conf={"training_file": training_file, "model": "gpt-unknown-model"})
    assert run.state == "failed"
    (ti,) = run.get_task_instances()
    assert ti.state == "failed"
    assert ti.try_number == 1
    assert emulator.requests_to(CREATE) == 1
    assert emulator.counters()["jobs_created"] == 0
    # The service's own words, said to be final, and no complaint about a link to a job that was never made.
    log = capfd.readouterr().out
    assert "[model_not_available] Model gpt-unknown-model is not available" in log
    assert "Not retried: the next try would get the same answer." in log
    assert "XCom not found" not in log
