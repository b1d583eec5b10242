"""Fault drills on Fireworks: a fine-tuning task (dataset upload, create, wait) under each kind of transient fault.

One job per drill, against one emulator whose Fireworks routes fail in one way: 5xx answers, 429 with
``retry-after``, dropped connections, answers lost after the service acted (dataset and job creates), and a
worker killed right after its create. The proofs: the task returns the job's model, the service holds exactly
one job (and one dataset), and no transient fault failed the task. The figures (requests, faults, seconds)
are printed for the report (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer, FaultConfig
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator, task_tag
from airflow_provider_finetune.rules.once import JobIdentity
from tests.chaos.conftest import FakeTI, set_connection
from tests.emulator.conftest import jsonl, training_lines

pytestmark = pytest.mark.integration

KEY = "fw-chaos-5ecret-key"
CONN_ID = "fireworks_chaos"
ACCOUNT = "chaos"
BASE_MODEL = "accounts/fireworks/models/llama-v3p1-8b-instruct"
TRAIN = jsonl(training_lines(12))
CREATES = r"^POST /v1/accounts/[^/]+/(supervisedFineTuningJobs|datasets)$"
EVERY = r"^[A-Z]+ /v1/accounts/"


@dataclass(frozen=True)
class Drill:
    """One kind of fault and where it strikes."""

    name: str
    faults: FaultConfig


DRILLS = [
    Drill("5xx", FaultConfig(seed=1, error_rate=0.3, match=EVERY)),
    Drill("429 with retry-after", FaultConfig(seed=2, rate_limit_rate=0.3, retry_after=0.05, match=EVERY)),
    Drill("dropped connections", FaultConfig(seed=3, drop_rate=0.2, match=EVERY)),
    Drill(
        "lost create answers", FaultConfig(seed=4, error_rate=0.5, drop_rate=0.3, match=CREATES, after_processing=True)
    ),
]


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(api_key=KEY, speed=50, seed=5)) as running:
        yield running


@pytest.fixture
def connection(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, CONN_ID, server.url, KEY, service="fireworks", account_id=ACCOUNT, max_retries=8)


def hook() -> FineTuningHook:
    from airflow_provider_finetune.core.client import RetryPolicy

    return FineTuningHook(CONN_ID, retry_policy=RetryPolicy(initial_delay=0.01, max_delay=0.05))


def upload(made: FineTuningHook) -> str:
    digest = hashlib.sha256(TRAIN).hexdigest()
    return made.run_flow(made.backend.dataset_flow(io.BytesIO(TRAIN), "train.jsonl", len(TRAIN), digest, 12))


def operator(dataset: str) -> FineTuningJobOperator:
    op = FineTuningJobOperator(
        task_id="fine_tune", model=BASE_MODEL, training_file=dataset, finetune_conn_id=CONN_ID, poll_interval=0.2
    )
    op.__dict__["hook"] = hook()
    return op


def figures(name: str, server: EmulatorServer, started: float) -> str:
    counters = server.emulator.counters
    faults = {kind: count for kind, count in counters.faults.items() if count}
    requests = sum(count for route, count in counters.requests.items() if "/v1/accounts/" in route)
    line = (
        f"[fireworks fault drill] {name}: 1 task, {len(server.emulator.store.records('fw_job'))} job, "
        f"{len(server.emulator.store.records('fw_dataset'))} dataset, {requests} requests handled, "
        f"faults {faults}, {time.monotonic() - started:.1f} s"
    )
    print(line)
    return line


@pytest.mark.parametrize("drill", DRILLS, ids=[d.name for d in DRILLS])
def test_a_task_under_faults_ends_with_its_model_and_one_job(
    drill: Drill, server: EmulatorServer, connection: None
) -> None:
    started = time.monotonic()
    server.emulator.faults.configure(drill.faults)  # type: ignore[union-attr]
    dataset = upload(hook())
    ti = FakeTI(dag_id="fireworks_chaos", run_id=f"drill__{drill.faults.seed}")
    model = operator(dataset).execute({"ti": ti})  # type: ignore[arg-type]
    line = figures(drill.name, server, started)
    assert model == f"accounts/{ACCOUNT}/models/{ti.xcoms['job_id'].rsplit('/', 1)[1]}", line
    assert len(server.emulator.store.records("fw_job")) == 1, line
    assert len(server.emulator.store.records("fw_dataset")) == 1, line
    assert sum(server.emulator.counters.faults.values()) > 0, line


def test_a_worker_killed_after_its_create_is_reattached_by_its_retry(server: EmulatorServer, connection: None) -> None:
    started = time.monotonic()
    server.emulator.faults.configure(FaultConfig(seed=6, error_rate=0.2, match=EVERY))  # type: ignore[union-attr]
    dataset = upload(hook())
    ti = FakeTI(dag_id="fireworks_chaos", run_id="drill__killed")
    first = operator(dataset)
    # The first try creates its job and dies before it waits (no answer, no XCom after this).
    made, created = first.hook.ensure_job(first.build_request(), identity=JobIdentity(task_tag({"ti": ti})))  # type: ignore[typeddict-item]
    assert created
    retry = FakeTI(dag_id="fireworks_chaos", run_id="drill__killed", try_number=2)
    model = operator(dataset).execute({"ti": retry})  # type: ignore[arg-type]
    line = figures("worker killed after create", server, started)
    assert retry.xcoms["job_id"] == made.id, line
    assert model is not None
    assert len(server.emulator.store.records("fw_job")) == 1, line
