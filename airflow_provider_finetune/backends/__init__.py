"""One backend per service: the dialect the hook speaks to it (see :mod:`.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_finetune.exceptions import InvalidRequestError

if TYPE_CHECKING:
    from airflow_provider_finetune.backends.openai import OpenAIBackend
    from airflow_provider_finetune.core.client import ConnectionSettings

__all__ = ["backend_for"]


def backend_for(settings: ConnectionSettings) -> OpenAIBackend:
    """The backend for a connection's ``service``."""
    from airflow_provider_finetune.backends.azure import azure_backend
    from airflow_provider_finetune.backends.fireworks import FireworksBackend
    from airflow_provider_finetune.backends.openai import OpenAIBackend, OpenAICompatibleBackend
    from airflow_provider_finetune.backends.together import TogetherBackend

    if settings.service == "openai":
        return OpenAIBackend(settings)
    if settings.service == "azure":
        return azure_backend(settings)
    if settings.service == "fireworks":
        return FireworksBackend(settings)
    if settings.service == "together":
        return TogetherBackend(settings)
    if settings.service == "openai-compatible":
        return OpenAICompatibleBackend(settings)
    if settings.service == "bedrock":
        from airflow_provider_finetune.backends.bedrock import BedrockBackend

        return BedrockBackend(settings)
    raise InvalidRequestError(
        f"service {settings.service!r} has no backend in this version of the provider "
        "(openai, azure, bedrock, fireworks, together and openai-compatible do)",
        field="service",
    )
