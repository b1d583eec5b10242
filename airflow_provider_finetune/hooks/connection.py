"""An Airflow connection (type ``finetune``) read into its settings (``core.client.ConnectionSettings``).

The service comes from the ``service`` extra (the registry's default when none; an older spelling is still read,
:func:`~airflow_provider_finetune.backends.service_of`). The base URL comes from the host: a full URL
(``https://example.com/v1``) as is, or a bare host with the port, the path from the schema, and ``scheme`` from
the extras (``https`` by default), which is what a URI such as
``finetune://:sk-emulator@localhost:8089/v1?scheme=http`` gives. Without a host, or where the address needs more
than the host (a region, an account), the service's own rule gives it.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_finetune.backends import service_of
from airflow_provider_finetune.core.client import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, ConnectionSettings
from airflow_provider_finetune.exceptions import InvalidRequestError

__all__ = ["MIN_MASKED_LENGTH", "settings_from_connection"]

#: Airflow's secrets masker skips (and warns about) values shorter than this; such a value is not asked for.
MIN_MASKED_LENGTH = 5


def settings_from_connection(conn: Any, *, mask: Any = None) -> ConnectionSettings:
    """Read a ``finetune`` connection into settings.

    :param conn: the Airflow connection.
    :param mask: called with each secret so that Airflow masks it in logs (``mask_secret``).
    """
    extra = conn.extra_dejson or {}
    service = service_of(extra)
    base_url = service.base_url_for(_base_url(conn.host, conn.port, conn.schema, extra.get("scheme")), extra)
    api_key = conn.password or extra.get("api_key") or ""
    headers = _headers_extra(extra.get("extra_headers"))
    if mask is not None:
        for secret in (api_key, *headers.values()):
            # Airflow cannot mask a value this short and says so on every task; ours are never logged anyway.
            if secret and len(secret) >= MIN_MASKED_LENGTH:
                mask(secret)
    settings = ConnectionSettings(
        base_url=base_url,
        api_key=api_key,
        organization=extra.get("organization") or None,
        project=extra.get("project") or None,
        service=service.name,
        preset=str(extra["preset"]).lower() if extra.get("preset") else None,
        api_version=extra.get("api_version") or None,
        auth=str(extra["auth"]).lower() if extra.get("auth") else None,
        extra_headers=headers,
        timeout=_number(extra.get("timeout"), DEFAULT_TIMEOUT, "timeout"),
        max_retries=int(_number(extra.get("max_retries"), DEFAULT_MAX_RETRIES, "max_retries")),
        aws_conn_id=str(extra["aws_conn_id"]) if extra.get("aws_conn_id") else None,
        region_name=str(extra["region_name"]).strip() if extra.get("region_name") else None,
        service_fields={
            name: str(extra[name]).strip() for name in service.fields or {} if extra.get(name) not in (None, "")
        },
    )
    service.check(settings)
    return settings


def _base_url(host: str | None, port: int | None, schema: str | None, scheme: str | None) -> str | None:
    """The address a connection's host gives, or ``None`` without a host (the service's own then)."""
    if not host:
        return None
    host = host.strip()
    if host.startswith(("http://", "https://")):
        return host.rstrip("/")
    netloc = f"{host}:{port}" if port else host
    path = f"/{schema.strip('/')}" if schema else ""
    return f"{scheme or 'https'}://{netloc}{path}"


def _headers_extra(raw: Any) -> dict[str, str]:
    if raw in (None, ""):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as err:
            raise InvalidRequestError("extra_headers must be a JSON object", field="extra_headers") from err
    if not isinstance(raw, dict):
        raise InvalidRequestError("extra_headers must be a JSON object", field="extra_headers")
    return {str(k): str(v) for k, v in raw.items()}


def _number(raw: Any, default: float, name: str) -> float:
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except (TypeError, ValueError) as err:
        raise InvalidRequestError(f"{name} must be a number, got {raw!r}", field=name) from err
