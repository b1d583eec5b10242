"""Once-only creation against services that cannot be trusted to filter: one job per task instance, never another's.

A service (a gateway, an older API version) that ignores the ``metadata[...]`` filter of the job list answers
with its newest jobs, whoever made them; Azure's authoring API keeps no metadata on jobs at all. A task adopts
a job only when the job's own fields say it is the task's; a worker killed right after the create still ends
with exactly one job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.core.client import close_shared_async_clients
from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.hooks.finetune import TASK_TAG_KEY, FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator, task_tag
from airflow_provider_finetune.rules.once import JobIdentity
from tests.chaos.conftest import MODEL, ROOT, FakeTI, chat_lines, serving, set_connection
from tests.hook_doors import async_call

pytestmark = pytest.mark.integration

KEY = "sk-untrusting-5ecret"
CREATE = "POST /v1/fine_tuning/jobs"


@pytest.fixture(scope="module")
def filterless() -> Iterator[EmulatorServer]:
    """An emulator whose job list ignores the metadata filter, as some gateways do."""
    with serving(EmulatorConfig(api_key=KEY, speed=50, seed=5, ignore_metadata_filter=True)) as server:
        yield server


def counters(server: EmulatorServer) -> dict[str, Any]:
    root = server.base_url.removesuffix("/v1")
    response = httpx.get(root + "/_emulator/counters", headers={"Authorization": f"Bearer {KEY}"})
    response.raise_for_status()
    return dict(response.json())


@pytest.fixture
def hook(filterless: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FineTuningHook]:
    set_connection(monkeypatch, "finetune_default", filterless.base_url, KEY)
    hook = FineTuningHook()
    yield hook
    hook.close()


def others_jobs(hook: FineTuningHook, training_file: str, count: int = 3) -> list[str]:
    """Jobs another team made (no tag, or another tag): the newest on the list."""
    made = []
    for i in range(count):
        metadata = {"team": "other"} if i % 2 else {TASK_TAG_KEY: f"ti-someone-else-{i}"}
        made.append(hook.create_job({"model": MODEL, "training_file": training_file, "metadata": metadata}).id)
    return made


def context(ti: FakeTI, started: float) -> dict[str, Any]:
    from datetime import datetime, timezone

    return {"ti": ti, "dag_run": SimpleNamespace(start_date=datetime.fromtimestamp(started, tz=timezone.utc))}


def test_the_list_really_ignores_the_filter(hook: FineTuningHook) -> None:
    training_file = hook.upload_file(chat_lines(), filename="train.jsonl").id
    others = others_jobs(hook, training_file, 1)
    listed = [job.id for job in hook.iter_jobs(metadata={TASK_TAG_KEY: "ti-nobody"}, limit=5)]
    assert others[0] in listed  # the service answered with a job that does not carry the tag asked for


def test_sync_no_task_adopts_a_job_without_its_tag(hook: FineTuningHook, filterless: EmulatorServer) -> None:
    training_file = hook.upload_file(chat_lines(), filename="train.jsonl").id
    started = time.time()
    others = others_jobs(hook, training_file)
    ti = FakeTI(run_id=f"untrusting__{uuid.uuid4().hex}")
    op = FineTuningJobOperator(task_id="fine_tune", model=MODEL, training_file=training_file, wait_for_completion=False)
    before = counters(filterless)["requests"].get(CREATE, 0)
    op.execute(context(ti, started))  # type: ignore[arg-type]
    op.hook.close()
    job_id = ti.xcoms["job_id"]
    assert job_id not in others
    assert counters(filterless)["requests"][CREATE] == before + 1
    assert hook.get_job(job_id).metadata[TASK_TAG_KEY] == task_tag({"ti": ti})  # type: ignore[typeddict-item]

    # The retry finds its own job among newer ones of others, and creates nothing.
    newer = others_jobs(hook, training_file)
    retry = FakeTI(run_id=ti.run_id, try_number=2)
    again = FineTuningJobOperator(
        task_id="fine_tune", model=MODEL, training_file=training_file, wait_for_completion=False
    )
    again.execute(context(retry, started))  # type: ignore[arg-type]
    again.hook.close()
    assert retry.xcoms["job_id"] == job_id
    assert job_id not in newer
    assert counters(filterless)["requests"][CREATE] == before + 1 + len(newer)


async def test_async_no_task_adopts_a_job_without_its_tag(hook: FineTuningHook) -> None:
    training_file = (await async_call(hook, "upload_file", chat_lines(), filename="train.jsonl")).id
    started = time.time()
    others = others_jobs(hook, training_file)
    identity = JobIdentity(f"ti-async-{uuid.uuid4().hex[:12]}", since=started)
    request = {"model": MODEL, "training_file": training_file}
    try:
        job, created = await async_call(hook, "ensure_job", request, identity=identity)
        assert created
        assert job.id not in others
        again, created_again = await async_call(hook, "ensure_job", request, identity=identity)
        assert (again.id, created_again) == (job.id, False)
    finally:
        await close_shared_async_clients()


def test_worker_killed_right_after_the_create_ends_with_one_job(
    hook: FineTuningHook, filterless: EmulatorServer
) -> None:
    training_file = hook.upload_file(chat_lines(), filename="train.jsonl").id
    started = time.time()
    run_id = f"untrusting__{uuid.uuid4().hex}"
    env = {**os.environ, "AIRFLOW_CONN_FINETUNE_DEFAULT": os.environ["AIRFLOW_CONN_FINETUNE_DEFAULT"]}
    script = f"""
        import os, signal
        from datetime import datetime, timezone
        from types import SimpleNamespace
        from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
        from tests.operators.conftest import FakeTI

        class DiesAtFirstPush(FakeTI):
            def xcom_push(self, key, value):
                os.kill(os.getpid(), signal.SIGKILL)

        op = FineTuningJobOperator(task_id="fine_tune", model={MODEL!r}, training_file={training_file!r},
                                   wait_for_completion=False)
        run = SimpleNamespace(start_date=datetime.fromtimestamp({started!r}, tz=timezone.utc))
        op.execute({{"ti": DiesAtFirstPush(run_id={run_id!r}), "dag_run": run}})
        """
    before = counters(filterless)["requests"].get(CREATE, 0)
    worker = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=ROOT, timeout=120, check=False
    )
    assert worker.returncode == -signal.SIGKILL
    assert counters(filterless)["requests"][CREATE] == before + 1
    # Others create jobs in the meantime: they are newer than ours on the list.
    others = others_jobs(hook, training_file)

    retry = FakeTI(run_id=run_id, try_number=2)
    op = FineTuningJobOperator(task_id="fine_tune", model=MODEL, training_file=training_file, wait_for_completion=False)
    op.execute(context(retry, started))  # type: ignore[arg-type]
    op.hook.close()
    assert counters(filterless)["requests"][CREATE] == before + 1 + len(others)
    tag = task_tag({"ti": retry})  # type: ignore[typeddict-item]
    ours = [job.id for job in hook.iter_jobs(limit=100) if (job.metadata or {}).get(TASK_TAG_KEY) == tag]
    assert ours == [retry.xcoms["job_id"]]


class FileStateStore:
    """A task state store that outlives the worker process, as Airflow's does (a JSON file here)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        values = json.loads(self.path.read_text()) if self.path.exists() else {}
        return values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        values = json.loads(self.path.read_text()) if self.path.exists() else {}
        values[key] = value
        self.path.write_text(json.dumps(values))


@pytest.mark.parametrize("state_store", [True, False], ids=["intent-record", "no-state-store"])
def test_azure_authoring_worker_killed_right_after_the_create_ends_with_one_job(
    emulator_server: EmulatorServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_store: bool
) -> None:
    """Azure's authoring API keeps no metadata: the intent record (or the request fields) finds the job."""
    from tests.integration.conftest import API_KEY, Emulator

    emulator = Emulator(emulator_server)
    root = emulator_server.base_url.removesuffix("/v1")
    conn = {
        "conn_type": "finetune",
        "host": root,
        "password": API_KEY,
        "extra": {"service": "azure", "api_version": "2024-10-21"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    hook = FineTuningHook()
    training_file = hook.upload_file(chat_lines(), filename="train.jsonl").id
    started = time.time()
    run_id = f"azure__{uuid.uuid4().hex}"
    store_path = tmp_path / "state.json"
    script = f"""
        import os, signal
        from datetime import datetime, timezone
        from pathlib import Path
        from types import SimpleNamespace
        from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
        from tests.chaos.test_untrusting import FileStateStore
        from tests.operators.conftest import FakeTI

        class DiesAtFirstPush(FakeTI):
            def xcom_push(self, key, value):
                os.kill(os.getpid(), signal.SIGKILL)

        op = FineTuningJobOperator(task_id="fine_tune", model={MODEL!r}, training_file={training_file!r},
                                   wait_for_completion=False)
        run = SimpleNamespace(start_date=datetime.fromtimestamp({started!r}, tz=timezone.utc))
        context = {{"ti": DiesAtFirstPush(run_id={run_id!r}), "dag_run": run}}
        if {state_store!r}:
            context["task_state_store"] = FileStateStore(Path({str(store_path)!r}))
        op.execute(context)
        """
    create = "POST /openai/fine_tuning/jobs"
    before = emulator.counters()["requests"].get(create, 0)
    worker = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=dict(os.environ), cwd=ROOT, timeout=120, check=False
    )
    assert worker.returncode == -signal.SIGKILL
    assert emulator.counters()["requests"][create] == before + 1
    if state_store:
        assert FileStateStore(store_path).get("job_id")  # recorded before the worker died at its first XCom

    retry = FakeTI(run_id=run_id, try_number=2)
    retry_context = context(retry, started)
    if state_store:
        retry_context["task_state_store"] = FileStateStore(store_path)
    op = FineTuningJobOperator(task_id="fine_tune", model=MODEL, training_file=training_file, wait_for_completion=False)
    op.execute(retry_context)  # type: ignore[arg-type]
    op.hook.close()
    assert emulator.counters()["requests"][create] == before + 1
    made = [job for job in hook.iter_jobs(limit=100) if job.training_file == training_file]
    assert [job.id for job in made] == [retry.xcoms["job_id"]]
    hook.close()


@pytest.mark.parametrize("policy", ["cancel_and_create", "fail"])
def test_a_request_changed_between_tries_meets_on_changed_request(
    hook: FineTuningHook, filterless: EmulatorServer, policy: str
) -> None:
    from airflow_provider_finetune.exceptions import ChangedRequestError

    first_file = hook.upload_file(chat_lines(), filename="train.jsonl").id
    changed_file = hook.upload_file(chat_lines(), filename="train-v2.jsonl").id
    started = time.time()
    ti = FakeTI(run_id=f"changed__{uuid.uuid4().hex}")
    first = FineTuningJobOperator(task_id="fine_tune", model=MODEL, training_file=first_file, wait_for_completion=False)
    first.execute(context(ti, started))  # type: ignore[arg-type]
    first.hook.close()
    old_id = ti.xcoms["job_id"]

    # The retry runs after the DAG's data changed: the same task instance, another request.
    retry = FakeTI(run_id=ti.run_id, try_number=2)
    op = FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=changed_file,
        wait_for_completion=False,
        on_changed_request=policy,
    )
    before = counters(filterless)["requests"].get(CREATE, 0)
    if policy == "fail":
        with pytest.raises(ChangedRequestError, match=old_id):
            op.execute(context(retry, started))  # type: ignore[arg-type]
        assert counters(filterless)["requests"][CREATE] == before
        assert not hook.get_job(old_id).status.is_terminal()
        hook.cancel_job(old_id)
    else:
        op.execute(context(retry, started))  # type: ignore[arg-type]
        new_id = retry.xcoms["job_id"]
        assert new_id != old_id
        assert hook.get_job(old_id).status.value == "cancelled"
        assert hook.get_job(new_id).training_file == changed_file
        assert counters(filterless)["requests"][CREATE] == before + 1
    op.hook.close()
