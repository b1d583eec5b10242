"""The job operator on Together, against the emulator: the price before paying, the service's own options and
XComs, and the one crash window that remains for a service without metadata or client-chosen ids."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.backends.together import PriceRefusedError
from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
from airflow_provider_finetune.rules.once import JobIdentity, request_fingerprint
from tests.emulator.conftest import jsonl, training_lines
from tests.operators.conftest import FakeStateStore, FakeTI

pytestmark = pytest.mark.integration

KEY = "together-operator-5ecret"
CONN_ID = "ft_together_op"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
OPTIONS = {"lora_r": 8, "lora_alpha": 16, "n_evals": 4, "n_checkpoints": 3}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    server = EmulatorServer(EmulatorConfig(api_key=KEY, speed=50.0, seed=3)).start()
    conn = {
        "conn_type": "finetune",
        "host": server.url + "/together/v1",
        "password": KEY,
        "extra": {"service": "together"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    yield server
    server.stop()


@pytest.fixture
def http(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def upload(lines: list[Any], name: str = "train.jsonl") -> str:
    return FineTuningHook(CONN_ID).upload_file(jsonl(lines), filename=name).id


def operator(training_file: str, **kwargs: Any) -> FineTuningJobOperator:
    defaults: dict[str, Any] = {
        "task_id": "fine_tune",
        "model": MODEL,
        "training_file": training_file,
        "service_options": OPTIONS,
        "finetune_conn_id": CONN_ID,
        "deferrable": False,
        "poll_interval": 0.1,
    }
    return FineTuningJobOperator(**{**defaults, **kwargs})


def test_the_account_may_not_proceed_fails_the_task_before_any_create(
    server: EmulatorServer, http: httpx.Client
) -> None:
    training_file = upload(training_lines(20))
    assert http.post("/_emulator/together/account", json={"allowed_to_proceed": False, "user_limit": 0.5}).is_success
    context = {"ti": FakeTI(), "task_state_store": FakeStateStore()}
    with pytest.raises(PriceRefusedError, match=r"estimated price is \$0\.\d\d \(the account's limit is \$0\.50\)"):
        operator(training_file).execute(context)  # type: ignore[arg-type]
    requests = server.emulator.counters.requests
    assert requests["POST /together/v1/fine-tunes/estimate-price"] == 1
    assert requests["POST /together/v1/fine-tunes"] == 0
    assert http.get("/together/v1/fine-tunes").json()["data"] == []
    assert context["ti"].xcoms == {}  # type: ignore[attr-defined]


def test_the_estimate_goes_to_xcom_with_the_job_and_the_price_and_early_stopping_when_done(
    server: EmulatorServer,
) -> None:
    training_file = upload(training_lines(30))
    validation_file = upload(training_lines(10, start=100), name="valid.jsonl")
    ti = FakeTI()
    options = {**OPTIONS, "early_stopping_enabled": True}
    model = operator(training_file, validation_file=validation_file, service_options=options).execute(
        {"ti": ti, "task_state_store": FakeStateStore()}  # type: ignore[arg-type]
    )
    xcoms = ti.xcoms
    assert model == xcoms["fine_tuned_model"]
    assert model is not None
    assert model.startswith("emulator/")
    assert xcoms["price_estimate"]["allowed_to_proceed"] is True
    assert xcoms["estimated_cost"] == xcoms["price_estimate"]["estimated_total_price"] > 0
    assert xcoms["total_price"] == pytest.approx(xcoms["estimated_cost"])  # the price the estimate gave
    assert set(xcoms["early_stopping"]) == {"early_stopped", "early_stopping_best_step", "early_stopping_best_metric"}
    assert (
        xcoms["checkpoints"][0]["fine_tuned_model_checkpoint"]
        == f"{xcoms['job_id']}:{xcoms['checkpoints'][0]['step_number']}"
    )


def test_service_options_are_refused_where_the_service_takes_none(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "finetune", "host": "http://127.0.0.1:9/v1", "password": KEY}
    monkeypatch.setenv("AIRFLOW_CONN_FT_OPENAI_OP", json.dumps(conn))
    op = FineTuningJobOperator(
        task_id="t",
        model="gpt-4o-mini",
        training_file="file-1",
        finetune_conn_id="ft_openai_op",
        service_options={"lora_r": 8},
    )
    with pytest.raises(InvalidRequestError, match="service_options: OpenAI takes no options"):
        op.execute({"ti": FakeTI()})  # type: ignore[arg-type]


def test_the_crash_window_that_remains(server: EmulatorServer, http: httpx.Client) -> None:
    """The window, exactly: a job of an identical request, made by someone else after this task instance's
    intent and before its retry looks, is taken for this task instance's own (no duplicate, but not ours).

    Try 1 wrote its intent and died before its create reached Together. Meanwhile another task (or a person)
    asked Together for a job from the very same request. Try 2 finds no job id in its state store, searches the
    jobs made since its intent for one that echoes its request, and adopts that job: Together's job carries
    nothing of the task instance that could tell the two apart.
    """
    training_file = upload(training_lines(20))
    hook = FineTuningHook(CONN_ID)
    request = {"model": MODEL, "training_file": training_file, "suffix": "weekly"}
    body = hook.backend.job_body(_model(request), OPTIONS)  # the body try 1 meant to send
    state = FakeStateStore({"intent": {"fingerprint": request_fingerprint(body), "at": time.time()}})

    someone_elses = http.post("/together/v1/fine-tunes", json=body).json()["id"]
    job, created = hook.ensure_job(request, identity=JobIdentity("tag-of-try-2"), state=state, service_options=OPTIONS)
    assert (job.id, created) == (someone_elses, False)
    assert len(http.get("/together/v1/fine-tunes").json()["data"]) == 1

    # Outside the window (someone's identical job made longer than the clock slack before the intent) nothing
    # is adopted: a job is made.
    other = FakeStateStore({"intent": {"fingerprint": request_fingerprint(body), "at": time.time() + 3600}})
    mine, created = hook.ensure_job(request, identity=JobIdentity("tag-3"), state=other, service_options=OPTIONS)
    assert created
    assert mine.id != someone_elses


def _model(request: dict[str, Any]) -> Any:
    from airflow_provider_finetune.models import CreateFineTuningJobRequest, build_request

    return build_request(CreateFineTuningJobRequest, request)


def test_a_retry_that_knows_its_job_does_not_ask_the_price_again(server: EmulatorServer, http: httpx.Client) -> None:
    training_file = upload(training_lines(20))
    state = FakeStateStore()
    first = FakeTI()
    operator(training_file, wait_for_completion=False).execute({"ti": first, "task_state_store": state})  # type: ignore[arg-type]
    # The job exists and costs what it costs: a refusal now must not fail the retry that reattaches to it.
    assert http.post("/_emulator/together/account", json={"allowed_to_proceed": False}).is_success
    retry = FakeTI(try_number=2)
    operator(training_file, wait_for_completion=False).execute({"ti": retry, "task_state_store": state})  # type: ignore[arg-type]
    assert retry.xcoms["job_id"] == first.xcoms["job_id"]
    assert server.emulator.counters.requests["POST /together/v1/fine-tunes/estimate-price"] == 1
    assert server.emulator.counters.requests["POST /together/v1/fine-tunes"] == 1


def test_the_upload_operator_checks_by_together_formats(server: EmulatorServer, tmp_path: Any) -> None:
    from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator

    # Generic text is Together training data (not OpenAI's): checked, then uploaded.
    source = tmp_path / "text.jsonl"
    source.write_bytes(jsonl([{"text": f"Brightwave note {i}"} for i in range(12)]))
    ti = FakeTI()
    upload_op = FineTuningFileUploadOperator(task_id="up", source=source, finetune_conn_id=CONN_ID)
    assert upload_op.execute({"ti": ti})  # type: ignore[arg-type]
    assert ti.xcoms["examples"] == 12
    # A bad line is named, before any request.
    lines: list[Any] = [{"text": f"note {i}"} for i in range(12)]
    lines[6] = {"text": 7}
    source.write_bytes(jsonl(lines))
    before = sum(server.emulator.counters.requests.values())
    bad = FineTuningFileUploadOperator(task_id="up", source=source, finetune_conn_id=CONN_ID)
    with pytest.raises(InvalidRequestError, match=r"line 7: text: must be a string"):
        bad.execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert sum(server.emulator.counters.requests.values()) == before
