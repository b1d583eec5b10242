"""Request and object counters of the emulator, read through ``GET /_emulator/counters``.

They let a test prove what happened on the server's side: "the retried create made no second job" is
``jobs_created == 1``, whatever the client believes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["Counters"]


class Counters:
    """Counts of requests by route, answers by status, objects created, faults injected, and connections.

    ``connections`` is the number of distinct client ``(host, port)`` pairs that ``/v1`` requests came
    from since the last reset: the TCP connections clients opened (a client that reuses a connection is
    counted once; a port the OS hands out again for a later connection is counted once too, so it is a
    lower bound when clients open tens of thousands of connections).
    """

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.jobs_created = 0
        self.files_created = 0
        self.clients: set[tuple[str, int]] = set()

    def reset(self) -> None:
        """Set every counter back to zero (the emulator's objects stay)."""
        for counter in (self.requests, self.statuses, self.faults):
            counter.clear()
        self.jobs_created = 0
        self.files_created = 0
        self.clients.clear()

    def connection(self, client: Any) -> None:
        """Note the client address of a request (ASGI ``scope["client"]``: ``(host, port)`` or ``None``)."""
        if client is not None:
            host, port = client
            self.clients.add((str(host), int(port)))

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as JSON: requests by route template, statuses, faults, connections.

        Requests are keyed ``"METHOD /v1/route/{template}"``; ``connections`` counts the distinct client
        ``(host, port)`` pairs of ``/v1`` requests.
        """
        return {
            "requests": dict(sorted(self.requests.items())),
            "total_requests": sum(self.requests.values()),
            "statuses": dict(sorted(self.statuses.items())),
            "jobs_created": self.jobs_created,
            "files_created": self.files_created,
            "faults": dict(sorted(self.faults.items())),
            "connections": len(self.clients),
        }
