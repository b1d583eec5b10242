"""What the triggers of this provider share: their serialized form, and one event fired after their last lines.

A deferred task's trigger is made again, on any triggerer, from its dotted path and the keyword arguments
:meth:`_FineTuningTrigger.serialize` gives: its constructor's arguments, as the trigger holds them.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_finetune.triggers.offloop import OffLoopLog

__all__: list[str] = []


class _FineTuningTrigger(BaseTrigger):
    """A trigger that waits in :meth:`_wait` and fires the one event it returns.

    Every argument of the constructor is kept as an attribute of the same name, in JSON primitives (no
    secrets): :meth:`serialize` gives them back as they are, so that a restarted trigger resumes where it was.
    """

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Dotted path and the constructor's arguments, as the trigger holds them."""
        cls = type(self)
        names = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        return f"{cls.__module__}.{cls.__qualname__}", {name: getattr(self, name) for name in names}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait; fire one event, once the lines the wait logged are written."""
        log = OffLoopLog(self.log)  # its lines never block the triggerer's event loop
        payload = await self._wait(log)
        await log.flushed()  # its last lines before Airflow's "Trigger fired event"
        yield TriggerEvent(payload)

    async def _wait(self, log: OffLoopLog) -> dict[str, Any]:
        """Wait, logging through ``log``; return the payload of the event that ends the wait."""
        raise NotImplementedError
