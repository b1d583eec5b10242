"""The emulator's state: its config, store, counters and services, and who may use them.

Every dialect serves the same state; the app (:mod:`airflow_provider_finetune.emulator.app`) mounts the dialects'
routes over it.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from airflow_provider_finetune.emulator.config import EmulatorConfig
from airflow_provider_finetune.emulator.counters import Counters
from airflow_provider_finetune.emulator.errors import APIError
from airflow_provider_finetune.emulator.faults import FaultMiddleware
from airflow_provider_finetune.emulator.files import FileService
from airflow_provider_finetune.emulator.inference import InferenceService
from airflow_provider_finetune.emulator.jobs import JobService
from airflow_provider_finetune.emulator.permissions import PermissionService
from airflow_provider_finetune.emulator.store import Store

__all__ = ["Emulator", "presented_key"]


class Emulator:
    """The emulator's state: its config, store, counters and services.

    :param config: the settings.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.store = Store(config.db_path, seed=config.seed)
        self.counters = Counters()
        self.files = FileService(self.store, config.clock, self.counters)
        self.jobs = JobService(self.store, self.files, config, self.counters)
        self.permissions = PermissionService(self.store, self.jobs, config.clock)
        self.inference = InferenceService(self.jobs, self.files, config.clock, self.store.seed)
        self.faults: FaultMiddleware | None = None
        self.together: Any = None

    def authenticate(self, headers: Mapping[str, str], *, admin: bool = False) -> None:
        """Check the request's key; raise 401 for a missing or wrong key, 403 for a non-admin key."""
        key = presented_key(headers)
        if key is None:
            raise APIError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY' "
                "(or as the 'api-key' header).",
                code="invalid_api_key",
            )
        api_key, admin_key = self.config.api_key, self.config.admin_key
        is_admin = admin_key is not None and hmac.compare_digest(key.encode(), admin_key.encode())
        is_user = api_key is None or hmac.compare_digest(key.encode(), api_key.encode())
        if not (is_user or is_admin):
            # The key is never echoed, not even in part.
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        if admin and admin_key is not None and not is_admin:
            raise APIError(
                403,
                "You have insufficient permissions for this operation: checkpoint permissions need an admin API key.",
                code="insufficient_permissions",
            )

    def close(self) -> None:
        """Close the store."""
        self.store.close()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: a Bearer token, or the ``api-key`` header."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("api-key")
    return api_key.strip() if api_key and api_key.strip() else None
