"""A trigger's lines are written off the event loop: a log write that blocks holds up no trigger."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Iterator

import pytest

from airflow_provider_finetune.triggers.offloop import OffLoopLog

trigger_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trigger_id", default=None)


class Socket(logging.Handler):
    """A handler like the triggerer's log socket: a write blocks while the reader (its supervisor) is busy."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = threading.Event()
        self.reading.set()
        self.written: list[tuple[str, str | None, str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.reading.wait(timeout=10)
        exc = record.exc_info[1] if record.exc_info else None
        self.written.append((record.getMessage(), trigger_id.get(), threading.current_thread().name, exc))


@pytest.fixture
def socket() -> Iterator[Socket]:
    log = logging.getLogger("tests.offloop")
    log.addHandler(handler := Socket())
    log.setLevel(logging.INFO)
    log.propagate = False
    yield handler
    handler.reading.set()
    log.removeHandler(handler)
    log.propagate = True


async def test_a_write_that_blocks_does_not_hold_up_the_loop(socket: Socket) -> None:
    log = OffLoopLog(logging.getLogger("tests.offloop"))
    socket.reading.clear()  # the supervisor is busy with its database: every write blocks
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.ensure_future(ticker())
    for n in range(50):
        log.info("[ftjob-1] step %d/50", n + 1)
    await asyncio.sleep(0.3)
    assert ticks >= 10  # the loop went on (a blocking write would have held it for the whole wait)
    assert socket.written == []
    socket.reading.set()  # the supervisor reads again
    await asyncio.wait_for(log.flushed(), timeout=10)
    ticking.cancel()
    assert [message for message, *_ in socket.written] == [f"[ftjob-1] step {n}/50" for n in range(1, 51)]
    assert {thread for *_, thread, _ in socket.written} == {"finetune-trigger-log"}


async def test_each_line_keeps_its_order_and_the_context_of_its_trigger(socket: Socket) -> None:
    async def trigger(name: str) -> None:
        trigger_id.set(name)  # what Airflow binds for a trigger's task (its log goes to that task's file)
        log = OffLoopLog(logging.getLogger("tests.offloop"))  # made in the trigger's run, as the triggers do
        trigger_id.set("changed later")  # a line is written in the context its log was made in
        for n in range(20):
            log.info("%s line %d", name, n)
            await asyncio.sleep(0)

    await asyncio.gather(trigger("a"), trigger("b"))
    await OffLoopLog.flushed()
    for name in ("a", "b"):
        mine = [(message, bound) for message, bound, *_ in socket.written if message.startswith(name)]
        assert mine == [(f"{name} line {n}", name) for n in range(20)]


async def test_an_exception_logged_is_the_one_its_trigger_handled(socket: Socket) -> None:
    log = OffLoopLog(logging.getLogger("tests.offloop"))
    try:
        raise ValueError("the service answered nonsense")
    except ValueError as err:
        log.warning("Could not read the job: %s", err, exc_info=True)
        raised = err
    await log.flushed()
    ((message, _, _, exc),) = socket.written
    assert message == "Could not read the job: the service answered nonsense"
    assert exc is raised


async def test_a_handler_that_fails_is_reported_and_the_lines_after_it_are_written(
    socket: Socket, capsys: pytest.CaptureFixture[str]
) -> None:
    class Broken(logging.Handler):
        def handle(self, record: logging.LogRecord) -> bool:  # raises where a handler would report and go on
            if record.getMessage() == "second":
                raise RuntimeError("the handler broke")
            return True

    logger = logging.getLogger("tests.offloop")
    logger.addHandler(broken := Broken())
    try:
        log = OffLoopLog(logger)
        for message in ("first", "second", "third"):
            log.info(message)
        await asyncio.wait_for(log.flushed(), timeout=10)
    finally:
        logger.removeHandler(broken)
    assert [message for message, *_ in socket.written] == ["first", "second", "third"]
    assert "RuntimeError: the handler broke" in capsys.readouterr().err


def test_outside_an_event_loop_lines_are_written_at_once(socket: Socket) -> None:
    OffLoopLog(logging.getLogger("tests.offloop")).info("on the worker")
    assert socket.written == [("on the worker", None, threading.current_thread().name, None)]
