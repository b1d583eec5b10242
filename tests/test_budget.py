"""Budget caps against the emulator over real HTTP: the estimate refuses a job before anything is billed, and a
running job that costs more than max_cost (as the service reports it, or by its trained tokens) is cancelled and
fails the task, on the worker and deferred alike; estimated and final cost go to XCom."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_finetune.core.client import close_shared_async_clients
from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJobEvent, build_request
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
from airflow_provider_finetune.rules.budget import (
    OVER_BUDGET,
    Budget,
    BudgetExceededError,
    auto_epochs,
    estimate,
    price_for,
    progress_of,
)
from airflow_provider_finetune.training_data import validate_file
from tests.integration.conftest import API_KEY, Emulator, chat_lines, stop_too_late
from tests.operators.conftest import FakeTI

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow 3.1
    from airflow.exceptions import TaskDeferred  # type: ignore[no-redef]

CREATE = "POST /v1/fine_tuning/jobs"
CONTENT = "GET /v1/files/{file_id}/content"
CANCEL = "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel"
MODEL = "gpt-4o-mini-2024-07-18"
EXAMPLES = 12
TOKENS = validate_file(io.BytesIO(chat_lines(EXAMPLES)), method="supervised").tokens
LIMITS = {"max_active_jobs": 0, "max_daily_jobs": 0, "refuse_fine_tuning": False, "reported_price": 0.0}


def epochs(n: int | str) -> dict[str, Any]:
    return {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": n, "batch_size": 1}}}


# -- the estimate, with no I/O ------------------------------------------------------------------------------


def request(method: dict[str, Any] | None = None) -> CreateFineTuningJobRequest:
    fields: dict[str, Any] = {"model": MODEL, "training_file": "file-1"}
    if method is not None:
        fields["method"] = method
    return build_request(CreateFineTuningJobRequest, fields)


def test_the_estimate_is_tokens_times_epochs_times_price() -> None:
    budget = estimate(request(epochs(4)), max_cost="5", price={MODEL: 3.0}, tokens_per_epoch="250000", examples=None)
    assert budget == Budget(max_cost=5.0, price=3.0, tokens_per_epoch=250_000, epochs=4)
    assert budget.estimated_cost == pytest.approx(3.0)
    assert Budget.of(json.loads(json.dumps(budget.to_json()))) == budget
    with pytest.raises(BudgetExceededError, match=r"250,000 tokens per epoch x 4 epochs x 3 per million tokens = 3\.0"):
        estimate(request(epochs(4)), max_cost=2, price=3.0, tokens_per_epoch=250_000, examples=None).check_estimate()


def test_auto_epochs_follow_the_number_of_examples() -> None:
    assert [auto_epochs(n) for n in (10, 12, 34, 100, 8334, 20000)] == [10, 8, 3, 3, 2, 1]
    budget = estimate(request(), max_cost=1, price=lambda model: 2.0, tokens_per_epoch=1000, examples="12")
    assert budget.epochs == 8
    with pytest.raises(InvalidRequestError) as missing:
        estimate(request(), max_cost=1, price=2.0, tokens_per_epoch=1000, examples=None)
    assert missing.value.field == "training_examples"


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ({"gpt-4o-2024-08-06": 25.0}, "has no price for 'gpt-4o-mini-2024-07-18' (it prices: gpt-4o-2024-08-06)"),
        ({MODEL: -1}, "must be >= 0"),
        (lambda model: 1 / 0, "price_per_million_tokens('gpt-4o-mini-2024-07-18') failed: ZeroDivisionError"),
        ("cheap", "must be a number"),
    ],
)
def test_an_unusable_price_is_named(price: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message.replace("(", r"\(").replace(")", r"\)")) as bad:
        price_for(price, MODEL)
    assert (bad.value.field or "").startswith("price_per_million_tokens")


def test_each_service_settles_the_epochs_its_own_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate's epochs are those of the body the service is sent; a default is used only where the service
    publishes its rule (OpenAI's "auto"); elsewhere a cap with no epochs given is refused, naming where to give them.
    """
    from airflow_provider_finetune.backends.fireworks import FireworksBackend
    from airflow_provider_finetune.backends.openai import OpenAIBackend
    from airflow_provider_finetune.backends.together import TogetherBackend
    from airflow_provider_finetune.core.client import ConnectionSettings
    from tests.backends.bedrock_fake import ROLE_ARN, connect_bedrock

    def budget(backend: Any, method: dict[str, Any] | None, options: dict[str, Any] | None = None) -> Budget:
        train = {"fireworks": "ds-train", "bedrock": "s3://training-bucket/train.jsonl"}.get(backend.service, "file-1")
        asked = request(method) if method is not None else request()
        asked = asked.model_copy(update={"model": "base-model", "training_file": train})
        rule = backend.epoch_rule(asked, backend.job_body(asked, options))
        return estimate(asked, max_cost=10, price=1.0, tokens_per_epoch=1000, examples=12, epochs=rule)

    openai = OpenAIBackend(ConnectionSettings(base_url="https://api.openai.com/v1", api_key="k"))
    assert budget(openai, epochs(2)).epochs == 2
    assert budget(openai, epochs("auto")).epochs == auto_epochs(12) == 8

    together = TogetherBackend(ConnectionSettings(base_url="https://api.together.ai/v1", api_key="k"))
    lora = {"lora_r": 8, "lora_alpha": 16}
    assert budget(together, epochs(2), lora).epochs == 2
    assert budget(together, epochs("auto"), lora).epochs == 1  # the SDK's default, which the body carries

    fireworks = FireworksBackend(ConnectionSettings(base_url="https://api.fireworks.ai/v1/accounts/acme", api_key="k"))
    assert budget(fireworks, epochs(3)).epochs == 3
    assert budget(fireworks, None, {"epochs": 4}).epochs == 4
    with pytest.raises(InvalidRequestError, match="no published rule") as refused:
        budget(fireworks, epochs("auto"))
    assert refused.value.field == "n_epochs"

    bedrock = connect_bedrock(monkeypatch).backend
    where = {"role_arn": ROLE_ARN, "output_s3_uri": "s3://training-bucket/out/"}
    assert budget(bedrock, None, {**where, "hyperparameters": {"epochCount": 2}}).epochs == 2
    rft = {
        **where,
        "customization_type": "REINFORCEMENT_FINE_TUNING",
        "lambda_grader_arn": "arn:aws:lambda:us-east-1:123456789012:function:grade",
        "hyperparameters": {"epochCount": 5},
    }
    assert budget(bedrock, None, rft).epochs == 5
    with pytest.raises(InvalidRequestError, match="no published rule") as refused:
        budget(bedrock, None, where)
    assert refused.value.field == "service_options.hyperparameters.epochCount"


def test_progress_is_read_from_the_newest_metrics_event() -> None:
    def metrics(step: int) -> FineTuningJobEvent:
        return FineTuningJobEvent.model_validate(
            {"id": f"e{step}", "created_at": 1, "level": "info", "message": "", "type": "metrics",
             "data": {"step": step, "total_steps": 40}}
        )  # fmt: skip

    assert progress_of([metrics(4), metrics(10)], None) == 0.25
    assert progress_of([], 0.25) == 0.25  # a poll without new events keeps what was seen


# -- against the emulator -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    """Jobs that train for about 1.5 s: long enough for waits polling every 0.1 s to stop them half-way."""
    with EmulatorServer(EmulatorConfig(api_key=API_KEY, speed=20, seed=17)) as running:
        yield running


@pytest.fixture
def emulator(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    conn = {"conn_type": "finetune", "host": server.base_url, "password": API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    emulator = Emulator(server)
    emulator.reset()
    emulator.faults(**LIMITS)
    yield emulator
    emulator.faults(**LIMITS)


@pytest.fixture
def training_file(emulator: Emulator) -> str:
    return FineTuningHook().upload_file(chat_lines(EXAMPLES), filename="train.jsonl").id


def operator(training_file: str, **kwargs: Any) -> FineTuningJobOperator:
    defaults: dict[str, Any] = {
        "task_id": "fine_tune",
        "model": MODEL,
        "training_file": training_file,
        "method": epochs(3),
        "poll_interval": 0.1,
        "timeout": 60,
        "price_per_million_tokens": {MODEL: 1.0},
    }
    return FineTuningJobOperator(**{**defaults, **kwargs})


def fresh_ti() -> FakeTI:
    return FakeTI(run_id=f"test__{uuid.uuid4().hex}")


def test_an_estimate_above_max_cost_fails_before_anything_is_billed(emulator: Emulator, training_file: str) -> None:
    ti = fresh_ti()
    cap = TOKENS * 3 * 25.0 / 1e6 / 2
    task = operator(training_file, max_cost=cap, price_per_million_tokens={MODEL: 25.0}, training_tokens=str(TOKENS))
    with pytest.raises(BudgetExceededError) as refused:
        task.execute({"ti": ti})  # type: ignore[arg-type]
    assert f"{TOKENS:,} tokens per epoch x 3 epochs x 25 per million tokens" in str(refused.value)
    assert "nothing was created" in str(refused.value)
    from airflow_provider_finetune.core.compat import AirflowFailException

    assert isinstance(refused.value, AirflowFailException)  # the same estimate again: not retried
    assert ti.xcoms["estimated_cost"] == pytest.approx(TOKENS * 3 * 25.0 / 1e6)
    assert emulator.requests_to(CREATE) == 0
    assert emulator.requests_to(CONTENT) == 0  # the tokens were given: the file was not read back


def test_without_the_counts_the_training_file_is_read_back_and_counted(emulator: Emulator, training_file: str) -> None:
    ti = fresh_ti()
    task = operator(training_file, method=None, max_cost=1.0, price_per_million_tokens=lambda model: 2.0)
    task.wait_for_completion = False
    task.execute({"ti": ti})  # type: ignore[arg-type]
    assert emulator.requests_to(CONTENT) == 1
    # n_epochs "auto" over 12 examples is 8 epochs, as the service resolves it.
    assert ti.xcoms["estimated_cost"] == pytest.approx(TOKENS * 8 * 2.0 / 1e6)
    assert FineTuningHook().get_job(ti.xcoms["job_id"]).hyperparameters.n_epochs in ("auto", 8)


def test_a_job_within_budget_runs_to_its_end_with_its_final_cost(emulator: Emulator, training_file: str) -> None:
    ti = fresh_ti()
    model = operator(training_file, max_cost=1.0, price_per_million_tokens={MODEL: 3.0}).execute({"ti": ti})  # type: ignore[arg-type]
    assert model is not None
    trained = ti.xcoms["trained_tokens"]
    assert trained == TOKENS * 3
    assert ti.xcoms["total_price"] == pytest.approx(trained * 3.0 / 1e6)
    assert ti.xcoms["estimated_cost"] == pytest.approx(TOKENS * 3 * 3.0 / 1e6)


def assert_cancelled_over_budget(emulator: Emulator, ti: FakeTI, err: BudgetExceededError, cap: float) -> None:
    from airflow_provider_finetune.core.compat import AirflowFailException

    assert isinstance(err, AirflowFailException)  # not retried: a retry would make the same job again
    job = FineTuningHook().get_job(ti.xcoms["job_id"])
    assert job.status.value == "cancelled"
    assert ti.xcoms["status"] == "cancelled"
    assert f"more than max_cost {cap:g}" in str(err)
    assert "cancelled it" in str(err)
    assert emulator.requests_to(CANCEL) == 1


def test_a_reported_cost_past_the_cap_cancels_the_job_on_the_worker(emulator: Emulator, training_file: str) -> None:
    # The service bills far more than the price the DAG was given: its reported cost crosses the cap mid-way.
    emulator.faults(**{**LIMITS, "reported_price": 1000.0})
    cap = TOKENS * 3 * 1000.0 / 1e6 / 3
    ti = fresh_ti()
    with pytest.raises(BudgetExceededError) as over:
        operator(training_file, max_cost=cap, training_tokens=TOKENS).execute({"ti": ti})  # type: ignore[arg-type]
    assert "(the cost the service reports)" in str(over.value)
    assert_cancelled_over_budget(emulator, ti, over.value, cap)
    assert ti.xcoms["total_price"] > cap
    assert ti.xcoms["total_price"] < TOKENS * 3 * 1000.0 / 1e6  # stopped before the end


async def test_deferred_the_trigger_ends_over_budget_and_the_task_cancels(
    emulator: Emulator, training_file: str
) -> None:
    import asyncio

    emulator.faults(**{**LIMITS, "reported_price": 1000.0})
    cap = TOKENS * 3 * 1000.0 / 1e6 / 3
    ti = fresh_ti()
    task = operator(training_file, max_cost=cap, training_tokens=TOKENS, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        await asyncio.to_thread(task.execute, {"ti": ti})
    trigger = deferred.value.trigger
    budget = {"max_cost": cap, "price": 1.0, "tokens_per_epoch": TOKENS, "epochs": 3, "service_estimate": None}
    assert trigger.serialize()[1]["budget"] == budget
    try:
        async for fired in trigger.run():
            event = dict(fired.payload)
            break
    finally:
        await close_shared_async_clients()
    assert event["status"] == OVER_BUDGET
    with pytest.raises(BudgetExceededError) as over:
        await asyncio.to_thread(task.execute_complete, {"ti": ti}, event)
    assert_cancelled_over_budget(emulator, ti, over.value, cap)


def test_a_job_that_succeeds_before_the_cancel_reaches_it_ends_the_task_as_its_success(
    emulator: Emulator, training_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a job read ended a moment earlier would have: its model is paid for, and a retry would return it."""
    emulator.faults(**{**LIMITS, "reported_price": 1000.0})
    cap = TOKENS * 3 * 1000.0 / 1e6 / 3
    ti = fresh_ti()
    task = operator(training_file, max_cost=cap, training_tokens=TOKENS, deferrable=True)
    with pytest.raises(TaskDeferred):
        task.execute({"ti": ti})  # type: ignore[arg-type]
    job_id = ti.xcoms["job_id"]
    stop_too_late(monkeypatch, "cancel_job")
    event = {"status": OVER_BUDGET, "job_id": job_id, "message": f"Job {job_id} costs more than max_cost {cap:g}"}
    model = task.execute_complete({"ti": ti}, event)  # type: ignore[arg-type]
    job = FineTuningHook().get_job(job_id)
    assert job.status.value == "succeeded"
    assert model == job.fine_tuned_model is not None
    assert ti.xcoms["status"] == "succeeded"
    assert ti.xcoms["total_price"] > cap  # what it cost, said as it is
    assert emulator.requests_to(CANCEL) == 1


def test_trained_tokens_past_the_cap_cancel_the_job(emulator: Emulator, training_file: str) -> None:
    """The DAG said 100 examples (3 epochs); the file has 12, which the service trains for 8: the steps done tell."""
    price = 10.0
    cap = TOKENS * 4 * price / 1e6
    ti = fresh_ti()
    task = operator(
        training_file,
        method=epochs("auto"),
        max_cost=cap,
        price_per_million_tokens=price,
        training_tokens=TOKENS,
        training_examples=100,
    )
    with pytest.raises(BudgetExceededError) as over:
        task.execute({"ti": ti})  # type: ignore[arg-type]
    assert "of the steps of 8 epochs" in str(over.value)
    assert ti.xcoms["estimated_cost"] == pytest.approx(TOKENS * 3 * price / 1e6)
    assert_cancelled_over_budget(emulator, ti, over.value, cap)
