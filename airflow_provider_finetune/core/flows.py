"""Flows: operations of more than one request, as generators of steps carried out by one sync and one async driver.

A flow decides everything and does no I/O, like :func:`~airflow_provider_finetune.core.client.exchange` for one
request. It yields steps and is sent what each came to:

* a request (a backend's ``Call``, or a :class:`Transfer` to an address that is its own key): its result, or
  the :class:`~airflow_provider_finetune.exceptions.FineTuningError` that ended it, sent rather than raised so
  that the flow decides (look the object up, abort, give up);
* :class:`~airflow_provider_finetune.core.client.Sleep`: ``None`` once the time has passed;
* :class:`ReadState`: the value kept under the key in the task's state store (:data:`NO_STATE_STORE` where
  there is none); :class:`WriteState`: ``None`` once it is kept.

Any other failure while a step is carried out (the file unreadable, the task killed) is thrown into the flow at
its ``yield``, so that it may clean up (one more step) before it ends. What the flow returns, its driver
returns; what it raises, its driver raises.

:func:`run_flow_sync` and :func:`run_flow_async` are the two drivers, the only places where the two paths
differ; each sends requests through a function it is given (the hook's ``call`` and ``acall``, which run them
through the one request core).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import httpx

from airflow_provider_finetune.core.client import (
    ConnectionSettings,
    Course,
    Exchange,
    RetryPolicy,
    Sleep,
    exchange,
    run_async,
    run_sync,
)
from airflow_provider_finetune.exceptions import FineTuningError

__all__ = [
    "NO_STATE_STORE",
    "Flow",
    "FlowRunner",
    "ReadState",
    "Sleep",
    "Transfer",
    "WriteState",
    "raised",
    "redirect_answers",
    "run_flow_async",
    "run_flow_sync",
    "transfer_async",
    "transfer_sync",
    "translated",
]

T = TypeVar("T")

#: A flow that returns a ``T``: it yields steps and is sent each one's answer.
Flow = Generator[Any, Any, T]


class _NoStore:
    def __repr__(self) -> str:
        return "NO_STATE_STORE"


#: What :class:`ReadState` gets back where Airflow has no task state store (before 3.3).
NO_STATE_STORE: Any = _NoStore()


class ReadState(NamedTuple):
    """Read a key of the task's state store; :data:`NO_STATE_STORE` where there is none."""

    key: str


class WriteState(NamedTuple):
    """Write a key of the task's state store (nothing where there is none)."""

    key: str
    value: Any


@dataclass(frozen=True)
class Transfer(Generic[T]):
    """Send one request to an address that is its own key (a storage host's presigned URL).

    Nothing of the connection goes with it, neither its key nor its headers; it is retried by the request core
    like any call, and built again for each attempt so that its body starts afresh.

    :param build: makes the request with the plain client it is sent with.
    :param parse: turns the successful response into the step's answer.
    :param timeout: how long to wait for the storage host.
    :param follow_redirects: whether the storage host's redirects are followed (with the same method and body).
    """

    build: Callable[[httpx.Client | httpx.AsyncClient], httpx.Request]
    parse: Callable[[httpx.Response], T]
    timeout: httpx.Timeout
    follow_redirects: bool = False


class FlowRunner(Protocol):
    """What carries a flow out to its end (``FineTuningHook.run_flow``)."""

    def run_flow(self, flow: Flow[T], *, state: Any = None) -> T:
        """Carry out ``flow``; return what it returns."""
        ...


def raised(answer: T | BaseException) -> T:
    """A step's answer, or the error it is, raised (for a flow that cannot go on after a failed step)."""
    if isinstance(answer, BaseException):
        raise answer
    return answer


def redirect_answers(steps: Exchange) -> Exchange:
    """:func:`~airflow_provider_finetune.core.client.exchange`, but a redirect with a ``Location`` is its answer.

    Neither followed nor an error: a flow reads where it points and sends what goes there itself.
    """
    step = next(steps)
    while True:
        outcome = yield step
        if isinstance(outcome, httpx.Response) and outcome.is_redirect:
            steps.close()
            return outcome
        try:
            step = steps.send(outcome)
        except StopIteration as done:
            return done.value


def transfer_sync(step: Transfer[T], storage: httpx.Client, *, settings: ConnectionSettings, policy: RetryPolicy) -> T:
    """Carry out a :class:`Transfer` with ``storage``, a client with nothing of the connection (no key, no headers)."""
    return step.parse(run_sync(storage, exchange(lambda: step.build(storage), settings=settings, policy=policy)))


async def transfer_async(
    step: Transfer[T], storage: httpx.AsyncClient, *, settings: ConnectionSettings, policy: RetryPolicy
) -> T:
    """Async :func:`transfer_sync`."""
    steps = exchange(lambda: step.build(storage), settings=settings, policy=policy)
    return step.parse(await run_async(storage, steps))


def _keep(state: Any, step: ReadState | WriteState) -> Any:
    """Read or write the task's state store (nothing where there is none)."""
    if isinstance(step, ReadState):
        return NO_STATE_STORE if state is None else state.get(step.key)
    if state is not None:
        state.set(step.key, step.value)
    return None


def run_flow_sync(
    send: Callable[[Any], Any], flow: Flow[T], *, state: Any = None, sleep: Callable[[float], None] | None = None
) -> T:
    """Carry out ``flow`` on this thread; return what it returns.

    :param send: carries out one request step and returns its result (the hook's ``call``).
    :param state: the task's state store (``get(key)``, ``set(key, value)``), if any.
    :param sleep: what waits out a :class:`Sleep` (``time.sleep``, looked up at each call).
    """
    course = Course(flow, answers=FineTuningError, throws=BaseException)  # the flow may clean up before it ends
    for step in course:
        with course.answering():
            if isinstance(step, Sleep):
                (sleep or time.sleep)(step.seconds)
            elif isinstance(step, ReadState | WriteState):
                course.answer = _keep(state, step)
            else:
                course.answer = send(step)
    return course.value


async def run_flow_async(asend: Callable[[Any], Awaitable[Any]], flow: Flow[T], *, state: Any = None) -> T:
    """Async :func:`run_flow_sync`; the task's state store is only read and written through a thread.

    :param asend: carries out one request step and returns its result (the hook's ``acall``).
    """
    course = Course(flow, answers=FineTuningError, throws=BaseException)  # the flow may clean up before it ends
    for step in course:
        with course.answering():
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, ReadState | WriteState):
                course.answer = await asyncio.to_thread(_keep, state, step)
            else:
                course.answer = await asend(step)
    return course.value


def _as_is(step: Any, answer: Any) -> Any:
    return answer


def translated(
    steps: Generator[Any, Any, T],
    step_for: Callable[[Any], Any],
    answer_for: Callable[[Any, Any], Any] = _as_is,
) -> Flow[T]:
    """``steps`` of a rule's own vocabulary, as a flow: each is carried out as ``step_for(step)``.

    The answer goes back to ``steps`` as ``answer_for(step, answer)`` (which may raise, ending the flow); a
    failure thrown into the flow is thrown into ``steps``.
    """
    answer: Any = None
    failure: BaseException | None = None
    while True:
        try:
            step = steps.send(answer) if failure is None else steps.throw(failure)
        except StopIteration as done:
            return done.value
        failure = None
        try:
            answer = yield step_for(step)
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as error:
            failure = error
            continue
        answer = answer_for(step, answer)
