"""One backend per service, found by the service's name in a registry (see :mod:`.base` for what a backend is).

The registry is the one place the services are spelled: the connection form's choices, the provider's
metadata and the hook's choice of a backend all read it. A new service is one backend module that calls
:func:`register` (and, for the local emulator, one dialect); nothing else changes. This module imports no
backend: each is imported when a connection names its service, so that reading the registry stays cheap.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.exceptions import InvalidRequestError

if TYPE_CHECKING:
    from airflow_provider_finetune.backends.base import Backend
    from airflow_provider_finetune.core.client import ConnectionSettings

__all__ = [
    "DEFAULT_SERVICE",
    "SERVICES",
    "Service",
    "auth_choices",
    "backend_for",
    "connection_fields",
    "default_base_url",
    "preset_choices",
    "register",
    "service_of",
]


@dataclass(frozen=True)
class Service:
    """A service the provider speaks, as a connection names it.

    :param name: the ``service`` extra of a connection.
    :param backend: ``"module:attribute"`` of what makes the backend from the connection's settings.
    :param default_base_url: the API's address when the connection has no host (``None``: a host is needed).
    :param base_url: ``"module:attribute"`` of a function ``(host_url, extra) -> base URL`` for a service whose
        address needs more than the host (a region, an account); it replaces ``default_base_url``.
    :param auth: the ``auth`` kinds it takes besides its default (``None``).
    :param presets: the ``preset`` values it takes.
    :param auth_presets: the ``auth`` kinds it takes behind one preset only (auth -> that preset).
    :param fields: the connection form's fields of its own (name -> ``conn-fields`` entry: label, description,
        JSON schema), shown beside the fields every service shares.
    """

    name: str
    backend: str
    default_base_url: str | None = None
    base_url: str | None = None
    auth: tuple[str, ...] = ()
    presets: tuple[str, ...] = ()
    auth_presets: Mapping[str, str] | None = None
    fields: Mapping[str, Mapping[str, Any]] | None = None

    def check(self, settings: ConnectionSettings) -> None:
        """Refuse, naming the field, an ``auth`` or ``preset`` this service does not take."""
        if settings.auth is not None and settings.auth not in self.auth:
            takes = ", ".join(s.name for s in SERVICES.values() if settings.auth in s.auth)
            raise InvalidRequestError(
                f"auth {settings.auth!r} is not one service {self.name!r} takes"
                + (f" ({', '.join(self.auth)} are)" if self.auth else "")
                + (f"; it is for service {takes}" if takes else ""),
                field="auth",
            )
        needs = (self.auth_presets or {}).get(settings.auth or "")
        if needs is not None and settings.preset != needs:
            raise InvalidRequestError(
                f"auth {settings.auth!r} is for service {self.name!r} with preset {needs!r} only", field="auth"
            )
        if settings.preset is not None and settings.preset not in self.presets:
            raise InvalidRequestError(
                f"preset must be one of {', '.join(self.presets) or 'none'} for service {self.name!r}, "
                f"got {settings.preset!r}",
                field="preset",
            )

    def make_backend(self, settings: ConnectionSettings) -> Backend:
        """The backend for a connection of this service, its ``auth`` and ``preset`` checked first."""
        self.check(settings)
        return _load(self.backend)(settings)

    def base_url_for(self, host_url: str | None, extra: Mapping[str, Any]) -> str:
        """The API's address for a connection: from its host, else the service's own default."""
        if self.base_url is not None:
            return str(_load(self.base_url)(host_url, extra))
        if host_url:
            return host_url
        if self.default_base_url is None:
            raise InvalidRequestError(
                f"host: a connection of service {self.name!r} needs the service's address as its host", field="host"
            )
        return self.default_base_url


#: Every service, by name, in the order the connection form lists them.
SERVICES: dict[str, Service] = {}

#: The service of a connection that names none.
DEFAULT_SERVICE = "openai"

#: Older spellings of a service in the ``api_type`` extra, still read.
_API_TYPES = {"openai": None, "azure": "azure"}


def register(service: Service) -> Service:
    """Add a service (a name registered again is replaced); return it."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", service.name):
        raise ValueError(f"a service's name is lowercase letters, digits and '-', got {service.name!r}")
    SERVICES[service.name] = service
    return service


def service_of(extra: Mapping[str, Any]) -> Service:
    """The service a connection's extras name (``service``, or the older ``api_type``), refused when unknown."""
    api_type = str(extra.get("api_type") or "openai").lower()
    if api_type not in _API_TYPES:
        raise InvalidRequestError(
            f"api_type must be one of {', '.join(_API_TYPES)}, got {api_type!r}", field="api_type"
        )
    name = str(extra.get("service") or _API_TYPES[api_type] or DEFAULT_SERVICE).lower()
    if name == DEFAULT_SERVICE and _API_TYPES[api_type]:
        name = str(_API_TYPES[api_type])
    return _service(name)


def backend_for(settings: ConnectionSettings) -> Backend:
    """The backend for a connection's ``service`` (the default service where it names none)."""
    return _service(settings.service or DEFAULT_SERVICE).make_backend(settings)


def auth_choices() -> tuple[str, ...]:
    """Every ``auth`` kind some service takes, for the connection form."""
    return tuple(dict.fromkeys(kind for service in SERVICES.values() for kind in service.auth))


def preset_choices() -> tuple[str, ...]:
    """Every ``preset`` some service takes, for the connection form."""
    return tuple(dict.fromkeys(preset for service in SERVICES.values() for preset in service.presets))


def connection_fields(*, timeout: float, max_retries: int) -> dict[str, dict[str, Any]]:
    """The connection form's fields (Airflow's ``conn-fields``): those every service shares, and each service's own.

    :param timeout: the default timeout, in seconds.
    :param max_retries: the default number of retries.
    """

    def optional(kind: str, **schema: Any) -> dict[str, Any]:
        return {"type": [kind, "null"], **schema}

    with_auth = ", ".join(service.name for service in SERVICES.values() if service.auth)
    with_presets = ", ".join(service.name for service in SERVICES.values() if service.presets)
    fields: dict[str, dict[str, Any]] = {
        "service": {
            "label": "Service",
            "description": "Which service the Base URL points at; it picks the dialect spoken to it",
            "schema": optional("string", enum=[*SERVICES, None], default=DEFAULT_SERVICE),
        },
        "preset": {
            "label": f"Preset ({with_presets})",
            "description": "The gateway or endpoint behind the service, if any",
            "schema": optional("string", enum=[*preset_choices(), None]),
        },
        "auth": {
            "label": f"Authentication ({with_auth})",
            "description": "How requests authenticate where a service offers more than one way: "
            + "; ".join(f"{service.name}: {', '.join(service.auth)}" for service in SERVICES.values() if service.auth),
            "schema": optional("string", enum=[*auth_choices(), None]),
        },
    }
    for service in SERVICES.values():
        fields.update({name: dict(field) for name, field in (service.fields or {}).items()})
    fields["api_type"] = {
        "label": "API type (older spelling)",
        "description": "Older spelling of the service, kept for existing connections: "
        + "; ".join(f"{spelling} means service {name}" for spelling, name in _API_TYPES.items() if name),
        "schema": optional("string", enum=[*_API_TYPES, None]),
    }
    fields["extra_headers"] = {
        "label": "Extra headers",
        "description": "JSON object of headers sent with every request (gateways)",
        "schema": optional("string", format="password"),
    }
    fields["timeout"] = {"label": "Timeout (seconds)", "schema": optional("number", default=timeout)}
    fields["max_retries"] = {"label": "Max retries", "schema": optional("integer", default=max_retries)}
    return fields


def default_base_url() -> str:
    """The address of a connection with neither a host nor a service: the default service's."""
    return SERVICES[DEFAULT_SERVICE].default_base_url or ""


def _service(name: str) -> Service:
    service = SERVICES.get(name)
    if service is None:
        raise InvalidRequestError(f"service must be one of {', '.join(SERVICES)}, got {name!r}", field="service")
    return service


def _load(target: str) -> Callable[..., Any]:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _text_field(label: str, description: str | None = None, *, default: str | None = None) -> dict[str, Any]:
    """A text field of the connection form (``conn-fields`` in the provider's metadata), empty by default."""
    schema: dict[str, Any] = {"type": ["string", "null"]}
    if default is not None:
        schema["default"] = default
    described = {"description": description} if description is not None else {}
    return {"label": label, **described, "schema": schema}


_HERE = __name__
register(
    Service(
        "openai",
        f"{_HERE}.openai:OpenAIBackend",
        default_base_url="https://api.openai.com/v1",
        fields={
            "organization": _text_field("Organization"),
            "project": _text_field("Project"),
        },
    )
)
register(
    Service(
        "azure",
        f"{_HERE}.azure:azure_backend",
        default_base_url="https://api.openai.com/v1",
        auth=("key", "entra"),
        fields={
            "api_version": _text_field("API version", "api-version query parameter (Azure OpenAI)"),
        },
    )
)
register(
    Service(
        "bedrock",
        f"{_HERE}.bedrock:BedrockBackend",
        base_url=f"{_HERE}.bedrock:base_url_for",
        auth=("key", "sigv4"),
        fields={
            "aws_conn_id": _text_field(
                "AWS connection (Bedrock)",
                "The Airflow AWS connection whose credentials sign requests (keys, profile, assumed role)",
                default="aws_default",
            ),
            "region_name": _text_field(
                "AWS region (Bedrock)", "e.g. us-east-1; the endpoint when no Base URL is given"
            ),
        },
    )
)
register(
    Service(
        "fireworks",
        f"{_HERE}.fireworks:FireworksBackend",
        base_url=f"{_HERE}.fireworks:base_url_for",
    )
)
register(Service("together", f"{_HERE}.together:TogetherBackend", default_base_url="https://api.together.ai/v1"))
register(
    Service(
        "vertex",
        f"{_HERE}.vertex:VertexBackend",
        base_url=f"{_HERE}.vertex:base_url_for",
        auth=("key", "google"),
        fields={
            "project": _text_field(
                "Project", "OpenAI: sent as OpenAI-Project; Vertex AI: the Google Cloud project id (required)"
            ),
            "location": _text_field(
                "Location (Vertex AI)",
                "The Google Cloud region of the tuning jobs, e.g. us-central1; the endpoint when no Base URL is given",
                default="us-central1",
            ),
            "gcp_conn_id": _text_field(
                "Google Cloud connection (Vertex AI)",
                "The Airflow Google connection whose credentials make the access token (auth: google)",
                default="google_cloud_default",
            ),
        },
    )
)
register(
    Service(
        "openai-compatible",
        f"{_HERE}.openai:OpenAICompatibleBackend",
        default_base_url="https://api.openai.com/v1",
        auth=("key", "sigv4"),
        presets=("bedrock-mantle", "litellm", "portkey"),
        auth_presets={"sigv4": "bedrock-mantle"},
    )
)
