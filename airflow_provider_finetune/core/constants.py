"""Values every layer may read without importing anything heavy: the version and the connection defaults."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_RETRIES", "DEFAULT_TIMEOUT", "__version__"]

__version__ = "0.1.0"
#: Seconds to wait for a service's answer (connecting takes at most 10 of them).
DEFAULT_TIMEOUT = 60.0
#: How often a transient failure is retried before it is raised.
DEFAULT_MAX_RETRIES = 5
