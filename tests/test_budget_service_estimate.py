"""A service's own estimate of a job's cost (Together's ``estimate-price``) is the one a budget cap checks.

No service of the emulator makes such an estimate: a backend that does is plugged in here, at the HTTP layer."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
import respx

from airflow_provider_finetune.backends.base import Call
from airflow_provider_finetune.backends.openai import OpenAIBackend
from airflow_provider_finetune.hooks import finetune as hook_module
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
from airflow_provider_finetune.rules.budget import BudgetExceededError, PriceEstimate
from tests.hooks.conftest import BASE_URL, connection, job, page  # noqa: F401 (fixtures)
from tests.operators.conftest import FakeTI

ESTIMATE = "fine-tunes/estimate-price"


class EstimatingBackend(OpenAIBackend):
    """OpenAI's dialect with a service estimate of the cost, as Together makes one."""

    def estimate_price(self, body: Mapping[str, Any]) -> Call[PriceEstimate]:
        def parse(response: httpx.Response) -> PriceEstimate:
            data = response.json()
            return PriceEstimate(data["estimated_total_price"], int(data["estimated_train_token_count"]))

        sent = {"model": body["model"], "training_file": body["training_file"]}
        return Call("POST", ESTIMATE, parse, json=sent)


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, connection: dict[str, Any]) -> Iterator[respx.MockRouter]:  # noqa: F811
    """The connection's service answers with OpenAI's jobs API and a price estimate (not in OpenAI's spec)."""
    monkeypatch.setattr(hook_module, "backend_for", EstimatingBackend)
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        yield router


def estimate_answer(total: float) -> httpx.Response:
    return httpx.Response(200, json={"estimated_total_price": total, "estimated_train_token_count": 3000})


def operator(**kwargs: Any) -> FineTuningJobOperator:
    return FineTuningJobOperator(
        task_id="fine_tune",
        model="gpt-4o-mini-2024-07-18",
        training_file="file-abc",
        training_tokens=1000,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        price_per_million_tokens=0.001,  # the DAG's own estimate would be far below the cap
        max_cost=1.0,
        wait_for_completion=False,
        **kwargs,
    )


def test_the_service_estimate_above_the_cap_refuses_the_job(service: respx.MockRouter) -> None:
    asked = service.post(f"/{ESTIMATE}").mock(return_value=estimate_answer(5.0))
    create = service.post("/fine_tuning/jobs").mock(return_value=httpx.Response(200, json=job()))
    ti = FakeTI()
    with pytest.raises(BudgetExceededError, match=r"above max_cost 1: the service's own estimate, 5\.0000"):
        operator().execute({"ti": ti})  # type: ignore[arg-type]
    assert asked.call_count == 1
    assert create.call_count == 0
    assert ti.xcoms["estimated_cost"] == 5.0


def test_the_service_estimate_within_the_cap_lets_the_job_be_made(service: respx.MockRouter) -> None:
    service.post(f"/{ESTIMATE}").mock(return_value=estimate_answer(0.5))
    service.get("/fine_tuning/jobs").mock(return_value=httpx.Response(200, json=page([])))
    create = service.post("/fine_tuning/jobs").mock(return_value=httpx.Response(200, json=job()))
    ti = FakeTI()
    operator().execute({"ti": ti})  # type: ignore[arg-type]
    assert create.call_count == 1
    assert ti.xcoms["estimated_cost"] == 0.5
