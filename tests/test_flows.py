"""The flow drivers: a result or its error sent back, other failures thrown in, state and sleep carried out."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest

from airflow_provider_finetune.core.flows import (
    NO_STATE_STORE,
    ReadState,
    Sleep,
    WriteState,
    run_flow_async,
    run_flow_sync,
    translated,
)
from airflow_provider_finetune.exceptions import FineTuningError, NotFoundError


class Store:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


def flow() -> Generator[Any, Any, list[Any]]:
    seen = [(yield ReadState("k"))]
    yield WriteState("k", "v")
    seen.append((yield ReadState("k")))
    seen.append((yield Sleep(0)))
    seen.append((yield "found"))
    missing = yield "missing"
    seen.append(type(missing).__name__)
    try:
        yield "broken"
    except OSError as failure:
        seen.append((yield f"clean up after {failure}"))
    return seen


def send(step: str) -> str:
    if step == "missing":
        raise NotFoundError(404, "no such thing")
    if step == "broken":
        raise OSError("disk")
    return f"sent {step}"


async def asend(step: str) -> str:
    return send(step)


WANTED = [None, "v", None, "sent found", "NotFoundError", "sent clean up after disk"]


def test_the_sync_driver_answers_each_step() -> None:
    assert run_flow_sync(send, flow(), state=Store()) == WANTED


def test_the_async_driver_answers_each_step_alike() -> None:
    assert asyncio.run(run_flow_async(asend, flow(), state=Store())) == WANTED


def test_without_a_state_store_a_read_says_so() -> None:
    def reads() -> Generator[Any, Any, Any]:
        return (yield ReadState("k"))

    assert run_flow_sync(send, reads()) is NO_STATE_STORE


def test_a_translated_rule_gets_its_own_answers_and_a_raised_one_ends_the_flow() -> None:
    def rule() -> Generator[str, Any, str]:
        first = yield "a"
        second = yield "b"
        return f"{first} {second}"

    def answer(step: str, got: Any) -> Any:
        if isinstance(got, FineTuningError):
            raise got
        return got.upper()

    assert run_flow_sync(send, translated(rule(), lambda step: step * 2, answer)) == "SENT AA SENT BB"
    with pytest.raises(NotFoundError):
        run_flow_sync(send, translated(rule(), lambda step: "missing", answer))
