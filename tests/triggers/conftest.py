from __future__ import annotations

from tests.hooks.conftest import api, connection, hook

__all__ = ["api", "connection", "hook"]
