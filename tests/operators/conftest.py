from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.hooks.conftest import api, connection, hook

__all__ = ["FakeStateStore", "FakeTI", "api", "connection", "context", "hook"]


@dataclass
class FakeTI:
    """The parts of a running task instance that operators touch."""

    dag_id: str = "retrain"
    task_id: str = "fine_tune"
    run_id: str = "scheduled__2026-11-16T00:00:00+00:00"
    map_index: int = -1
    try_number: int = 1
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


@dataclass
class FakeStateStore:
    values: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


@pytest.fixture
def context(connection: dict[str, Any]) -> dict[str, Any]:
    """A task context, with the default connection pointing at the mocked service."""
    return {"ti": FakeTI()}
