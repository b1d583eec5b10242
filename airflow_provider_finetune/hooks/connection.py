"""An Airflow connection (type ``finetune``) read into its settings (``core.client.ConnectionSettings``).

The service comes from the ``service`` extra (``openai`` by default); the older ``api_type: azure`` still means
Azure. The base URL comes from the host: a full URL (``https://example.com/v1``) as is, or a bare host with the
port, the path from the schema, and ``scheme`` from the extras (``https`` by default), which is what a URI
such as ``finetune://:sk-emulator@localhost:8089/v1?scheme=http`` gives.

AWS Bedrock (``service: bedrock``) reads ``region_name`` (the endpoint ``https://bedrock.<region>.amazonaws.com``
when no host is given) and ``aws_conn_id``, the Airflow AWS connection whose credentials sign each request
(``auth: sigv4``, the default without a password); a password is a Bedrock API key (``auth: key``).
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

from airflow_provider_finetune.core.client import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    ApiType,
    ConnectionSettings,
)
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
    service = str(extra.get("service") or "openai").lower()
    region = str(extra["region_name"]).strip() if extra.get("region_name") else None
    base_url = _base_url(conn.host, conn.port, conn.schema, extra.get("scheme"))
    if service == "bedrock" and not conn.host:
        base_url = _bedrock_url(region)
    if service == "fireworks":
        base_url = _fireworks_base_url(conn.host, base_url, extra.get("account_id"))
    if service == "together" and not conn.host:
        from airflow_provider_finetune.backends.together import DEFAULT_BASE_URL as TOGETHER_BASE_URL

        base_url = TOGETHER_BASE_URL
    api_key = conn.password or extra.get("api_key") or ""
    headers = _headers_extra(extra.get("extra_headers"))
    if mask is not None:
        for secret in (api_key, *headers.values()):
            # Airflow cannot mask a value this short and says so on every task; ours are never logged anyway.
            if secret and len(secret) >= MIN_MASKED_LENGTH:
                mask(secret)
    return ConnectionSettings(
        base_url=base_url,
        api_key=api_key,
        organization=extra.get("organization") or None,
        project=extra.get("project") or None,
        service=service,
        preset=str(extra["preset"]).lower() if extra.get("preset") else None,
        api_type=cast(ApiType, str(extra.get("api_type") or "openai").lower()),
        api_version=extra.get("api_version") or None,
        auth=str(extra["auth"]).lower() if extra.get("auth") else None,
        extra_headers=headers,
        timeout=_number(extra.get("timeout"), DEFAULT_TIMEOUT, "timeout"),
        max_retries=int(_number(extra.get("max_retries"), DEFAULT_MAX_RETRIES, "max_retries")),
        aws_conn_id=str(extra["aws_conn_id"]) if extra.get("aws_conn_id") else None,
        region_name=region,
    )


def _bedrock_url(region: str | None) -> str:
    """Bedrock's control-plane endpoint in a region: a Bedrock connection without a host must name one."""
    if not region:
        raise InvalidRequestError(
            "region_name: a Bedrock connection without a host must name its AWS region (e.g. us-east-1)",
            field="region_name",
        )
    return f"https://bedrock.{region}.amazonaws.com"


def _base_url(host: str | None, port: int | None, schema: str | None, scheme: str | None) -> str:
    if not host:
        return DEFAULT_BASE_URL
    host = host.strip()
    if host.startswith(("http://", "https://")):
        return host.rstrip("/")
    netloc = f"{host}:{port}" if port else host
    path = f"/{schema.strip('/')}" if schema else ""
    return f"{scheme or 'https'}://{netloc}{path}"


def _fireworks_base_url(host: str | None, base_url: str, account_id: Any) -> str:
    """Fireworks' base URL for one account: ``{host}/v1/accounts/{account_id}`` (``api.fireworks.ai`` by default)."""
    from airflow_provider_finetune.backends.fireworks import DEFAULT_BASE_URL

    root = (base_url if host else DEFAULT_BASE_URL).rstrip("/")
    if "/accounts/" in root:
        return root  # the account is in the URL already
    if not isinstance(account_id, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", account_id):
        raise InvalidRequestError(
            f"account_id: a Fireworks connection needs its account id (lowercase letters, digits and '-'), "
            f"got {account_id!r}",
            field="account_id",
        )
    root = root.removesuffix("/v1")
    return f"{root}/v1/accounts/{account_id}"


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
