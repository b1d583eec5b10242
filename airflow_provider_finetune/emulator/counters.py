"""Request and object counters of the emulator, read through ``GET /_emulator/counters``.

They let a test prove what happened on the server's side: "the retried create made no second job" is
``jobs_created == 1``, whatever the client believes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["Counters"]


class Counters:
    """Counts of requests by route, answers by status, objects created and faults injected."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.jobs_created = 0
        self.files_created = 0

    def reset(self) -> None:
        """Set every counter back to zero (the emulator's objects stay)."""
        for counter in (self.requests, self.statuses, self.faults):
            counter.clear()
        self.jobs_created = 0
        self.files_created = 0

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as JSON: requests by ``"METHOD /v1/route/{template}"``, statuses, faults."""
        return {
            "requests": dict(sorted(self.requests.items())),
            "total_requests": sum(self.requests.values()),
            "statuses": dict(sorted(self.statuses.items())),
            "jobs_created": self.jobs_created,
            "files_created": self.files_created,
            "faults": dict(sorted(self.faults.items())),
        }
