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

Outside an event loop (a wait on the worker), lines are written at once, as by the logger itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["OffLoopLog"]

#: The process's one writer thread: started by the first line, it finishes what it was given before exit.
_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finetune-trigger-log")


def _nothing() -> None:
    return None


class OffLoopLog:
    """A logger's ``debug``/``info``/``warning``/``error``, written off the running event loop, in order.

    :param logger: the logger the lines go to (a trigger's ``self.log``).
    """

    __slots__ = ("logger",)

    def __init__(self, logger: Any) -> None:
        self.logger = logger

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

    @staticmethod
    def _write(method: Any, msg: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: nothing to hold up
            method(msg, *args, **kwargs)
            return
        if kwargs.get("exc_info") is True:  # the exception being handled here, not in the writer thread
            kwargs["exc_info"] = sys.exc_info()
        # In the caller's context: the record carries the trigger's ids, as if it had been written here.
        _writer.submit(contextvars.copy_context().run, method, msg, *args, **kwargs)

    @staticmethod
    async def flushed() -> None:
        """Return once every line logged so far, by any trigger, is written."""
        await asyncio.wrap_future(_writer.submit(_nothing))
