"""Fixtures of the sensor tests: the operator tests' fake API, connection and task context."""

from __future__ import annotations

from tests.operators.conftest import api, connection, context, hook

__all__ = ["api", "connection", "context", "hook"]
