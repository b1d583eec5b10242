"""A budget cap in the triggerer's shared poller: read from the job list's lean states, at no cost per poll."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow_provider_finetune.rules.budget import OVER_BUDGET, Budget
from airflow_provider_finetune.rules.waiting import watch
from tests.triggers.test_poller import Counted, JobsThatEnd, make_poller

BUDGET = Budget(max_cost=0.5, price=1.0, tokens_per_epoch=100, epochs=3)


class PricedJobs(JobsThatEnd):
    """Jobs whose reported cost grows by ``per_tick`` a tick (each job its own rate)."""

    def __init__(self, ends: dict[str, int], per_tick: dict[str, float]) -> None:
        super().__init__(ends)
        self.per_tick = per_tick
        for item in self.jobs:
            item["total_price"] = 0.0

    def tick(self) -> None:
        super().tick()
        for item in self.jobs:
            if item["status"] == "running":
                item["total_price"] = round(item["total_price"] + self.per_tick[item["id"]], 6)


async def run_all(
    service: JobsThatEnd, budget: Budget, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], Counted]:
    poller = make_poller(service)

    async def clock() -> None:
        while any(j["status"] == "running" for j in service.jobs):
            await asyncio.sleep(0.05)
            service.tick()

    ticking = asyncio.ensure_future(clock())
    counted = Counted(monkeypatch)
    ids = list(service.ends)
    outcomes = await asyncio.gather(
        *(poller.wait(j, watch(j, poll_interval=0.05, budget=budget), poll_interval=0.05) for j in ids)
    )
    for job_id, outcome in zip(ids, outcomes, strict=True):
        if outcome.status == OVER_BUDGET:
            service.set_status(job_id, "cancelled")  # what the task does next
    await ticking
    counted.rounds = poller.rounds  # type: ignore[attr-defined]
    return dict(zip(ids, outcomes, strict=True)), counted


async def test_a_reported_cost_past_the_cap_ends_the_wait_through_the_poller(monkeypatch: pytest.MonkeyPatch) -> None:
    ends = {f"ftjob-{i:03d}": 12 for i in range(20)}
    costly = {job_id: (0.1 if i % 2 else 0.01) for i, job_id in enumerate(ends)}  # half cross 0.5 by tick 6
    service = PricedJobs(ends, costly)
    outcomes, _ = await run_all(service, BUDGET, monkeypatch)
    for job_id, outcome in outcomes.items():
        if costly[job_id] == 0.1:
            assert outcome.status == OVER_BUDGET, outcome
            assert "(the cost the service reports)" in outcome.message
            assert "more than max_cost 0.5" in outcome.message
        else:
            assert outcome.status == "succeeded", outcome


async def test_a_budget_adds_no_future_or_task_per_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound of the poller's own allocation test holds for two hundred waits with a budget."""
    ends = {f"ftjob-{i:05d}": 12 for i in range(200)}
    service = PricedJobs(ends, dict.fromkeys(ends, 0.001))
    outcomes, counted = await run_all(service, BUDGET, monkeypatch)
    assert all(o.status == "succeeded" for o in outcomes.values())
    rounds = counted.rounds  # type: ignore[attr-defined]
    assert counted.futures <= 200 + 2 * len(service.calls) + service.ticks + 2 * rounds
    assert counted.tasks <= 200 + 2 * service.count("list") + service.count("events") + 2 * rounds
