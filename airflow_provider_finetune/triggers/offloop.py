"""A trigger's log lines, written by a thread of their own instead of the event loop.

In the triggerer, writing a log record is a blocking send on the socket that the trigger runner's supervisor
reads. The supervisor reads it between its own work on the database (claiming triggers, saving their events,
cleaning up), which takes seconds with a thousand triggers; meanwhile the socket fills, and the next write
blocks the whole event loop, every trigger with it, until the supervisor reads again. Airflow's own trigger
runner logs through structlog's async methods for that reason (in a thread). A wait's progress lines are the
bulk of what triggers write (a job that ends has its last events logged), so they go through
:class:`OffLoopLog`: one thread formats and writes them, in the order they were logged, each in the context
of the trigger that logged it (Airflow routes a record to its task's log by that context), and a trigger awaits
:meth:`OffLoopLog.flushed` before it fires, so that its last lines come before Airflow's "Trigger fired event".

A line costs the loop one tuple on a queue: the context is the one the log was made in (a trigger makes its
log in its own task, after Airflow has bound its ids), not a copy per line, and there is no future per line.
Little is left to outlive the interpreter's young collections while the writer catches up.

Outside an event loop (a wait on the worker), lines are written at once, as by the logger itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import os
import queue
import sys
import threading
from concurrent.futures import Future
from typing import Any

__all__ = ["OffLoopLog"]

#: Seconds the interpreter's exit waits for the lines still queued.
EXIT_WAIT = 5.0

# A line: (context, logger method, message, args, kwargs); a flush: a Future the writer completes.
_Item = tuple[contextvars.Context, Any, str, tuple[Any, ...], dict[str, Any]] | Future[None] | None


class _Writer:
    """The process's one writer thread and its queue; the thread starts with the first line."""

    def __init__(self) -> None:
        self.lines: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.starting = threading.Lock()

    def put(self, item: _Item) -> None:
        if self.thread is None:
            with self.starting:
                if self.thread is None:
                    thread = threading.Thread(target=self._run, name="finetune-trigger-log", daemon=True)
                    thread.start()
                    self.thread = thread
        self.lines.put(item)

    def _run(self) -> None:
        while (item := self.lines.get()) is not None:
            if isinstance(item, Future):
                item.set_result(None)
                continue
            context, method, msg, args, kwargs = item
            del item
            try:
                context.run(method, msg, *args, **kwargs)
            except Exception:  # a handler that fails: said on stderr, as the logging module does; the next lines go on
                sys.excepthook(*sys.exc_info())

    def close(self) -> None:
        """Write what is queued (for a while at most) and stop: the interpreter is exiting."""
        thread = self.thread
        if thread is not None and thread.is_alive():
            self.lines.put(None)
            thread.join(EXIT_WAIT)


_writer = _Writer()
atexit.register(lambda: _writer.close())


def _forked() -> None:  # a forked child has none of its parent's threads: its first line starts its own writer
    global _writer
    _writer = _Writer()


os.register_at_fork(after_in_child=_forked)


class OffLoopLog:
    """A logger's ``debug``/``info``/``warning``/``error``, written off the running event loop, in order.

    Make it in the task whose lines it writes (a trigger's ``run``): its lines are written in that task's
    context as it was then.

    :param logger: the logger the lines go to (a trigger's ``self.log``).
    """

    __slots__ = ("context", "logger")

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.context = contextvars.copy_context()

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at debug level, as ``logger.debug`` does (off the loop when one runs)."""
        self._write(self.logger.debug, msg, args, kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at info level, as ``logger.info`` does (off the loop when one runs)."""
        self._write(self.logger.info, msg, args, kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at warning level, as ``logger.warning`` does (off the loop when one runs)."""
        self._write(self.logger.warning, msg, args, kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log at error level, as ``logger.error`` does (off the loop when one runs)."""
        self._write(self.logger.error, msg, args, kwargs)

    def _write(self, method: Any, msg: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: nothing to hold up
            method(msg, *args, **kwargs)
            return
        if kwargs.get("exc_info") is True:  # the exception being handled here, not in the writer thread
            kwargs["exc_info"] = sys.exc_info()
        _writer.put((self.context, method, msg, args, kwargs))

    @staticmethod
    async def flushed() -> None:
        """Return once every line logged so far, by any trigger, is written."""
        done: Future[None] = Future()
        _writer.put(done)
        await asyncio.wrap_future(done)
