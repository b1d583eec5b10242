"""Settings of the local fine-tuning API emulator: keys, speed, seed, storage, timings and faults.

Everything the emulator does is decided by an :class:`EmulatorConfig`; the same config and the same
sequence of requests give the same answers (ids, hyperparameters, metrics, model names), and with an
injected :class:`ManualClock` the same timestamps too.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["BedrockConfig", "Clock", "EmulatorConfig", "FaultConfig", "ManualClock", "Timings"]

#: A source of the current time, in seconds since the epoch (``time.time`` by default).
Clock = Callable[[], float]


class ManualClock:
    """A clock that only moves when told to, for tests that must not sleep.

    :param start: the time it starts at, in seconds since the epoch.
    """

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Return the current time."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward and return the new time.

        :param seconds: how far to move; must not be negative (time does not go back).
        """
        if seconds < 0:
            raise ValueError(f"a clock does not go back (asked to advance by {seconds})")
        with self._lock:
            self._now += seconds
            return self._now


@dataclass(frozen=True)
class Timings:
    """How long each phase of a simulated job lasts, in seconds of simulated time (speed 1.0).

    With the defaults a small job (10 examples: 10 epochs of 10 steps) validates for 3 s, waits in the
    queue for 5 s and trains for 50 s: about a minute, as the demo wants. ``--speed 50`` makes it about a
    second.

    :param validating: time in ``validating_files``.
    :param queued: time in ``queued`` before training starts.
    :param step: time per training step.
    :param min_running: shortest training time, whatever the step count.
    :param max_running: longest training time, whatever the data size: large datasets train faster per step
        instead of longer (``finetune-emulator --max-training-seconds``).
    :param requeue: time in ``queued`` after a resume, before training goes on.
    """

    validating: float = 3.0
    queued: float = 5.0
    step: float = 0.5
    min_running: float = 30.0
    max_running: float = 120.0
    requeue: float = 2.0

    def __post_init__(self) -> None:
        if not self.max_running > 0:
            raise ValueError(f"max_running must be greater than 0, got {self.max_running}")
        negative = [item.name for item in fields(self) if getattr(self, item.name) < 0]
        if negative:
            raise ValueError(f"{', '.join(negative)} must not be negative")


@dataclass(frozen=True)
class FaultConfig:
    """Faults injected into ``/v1`` requests, drawn from a seeded generator request by request.

    Each request that ``match`` selects draws from the generator in arrival order, so the same seed and
    the same requests give the same faults. At most one of drop, 5xx and 429 hits a request; latency is
    added on top.

    :param seed: seed of the fault generator.
    :param error_rate: share of requests answered 500, 502 or 503 (one third each).
    :param rate_limit_rate: share of requests answered 429 with ``retry-after``.
    :param retry_after: the ``retry-after`` of a 429, in seconds (also sent as ``retry-after-ms``).
    :param drop_rate: share of requests whose connection is closed without an answer.
    :param latency: seconds added to every selected request.
    :param latency_jitter: up to this many more seconds, drawn per request.
    :param match: a regular expression searched in ``"METHOD /v1/path"``; only matching requests get
        faults (all ``/v1`` requests when unset).
    :param after_processing: when true, a request that draws a 5xx, 429 or drop is first handled (a job
        is created, a job is cancelled...) and only its answer is lost, the case that makes a blind retry
        create a second job; when false (the default) the request is refused before it is handled.
    :param max_active_jobs: the service's cap on active jobs, which refuses a create with a quota error in
        the service's words: per base model on OpenAI's dialect, jobs running and queued per resource on
        Azure's; 0 for none.
    :param max_daily_jobs: OpenAI's cap on creates per base model in 24 hours (``daily_rate_limit_exceeded``);
        0 for none.
    :param refuse_fine_tuning: answer every create with OpenAI's final refusal, ``insufficient_quota`` (the
        organisation's billing quota is used up).
    :param reported_price: US dollars per million trained tokens that jobs report as ``total_price`` (the
        cost so far, as services that bill by report do, e.g. Together); 0 reports none, as OpenAI.
    """

    seed: int = 0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after: float = 1.0
    drop_rate: float = 0.0
    latency: float = 0.0
    latency_jitter: float = 0.0
    match: str | None = None
    after_processing: bool = False
    max_active_jobs: int = 0
    max_daily_jobs: int = 0
    refuse_fine_tuning: bool = False
    reported_price: float = 0.0

    def __post_init__(self) -> None:
        rates = (self.error_rate, self.rate_limit_rate, self.drop_rate)
        if any(not 0.0 <= rate <= 1.0 for rate in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError(
                "error_rate, rate_limit_rate and drop_rate must each be between 0 and 1, "
                f"and at most 1 together (got {rates})"
            )
        if self.latency < 0 or self.latency_jitter < 0 or self.retry_after < 0:
            raise ValueError("latency, latency_jitter and retry_after must not be negative")
        if self.max_active_jobs < 0 or self.max_daily_jobs < 0 or self.reported_price < 0:
            raise ValueError("max_active_jobs, max_daily_jobs and reported_price must not be negative")

    @property
    def active(self) -> bool:
        """Whether any fault or latency is configured."""
        return bool(self.error_rate or self.rate_limit_rate or self.drop_rate or self.latency or self.latency_jitter)

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready values."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def updated(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Return a copy with ``changes`` applied; unknown names raise :class:`ValueError`.

        :param changes: field names and their new values (JSON types).
        """
        known = {item.name: item.type for item in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown fault settings {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for name, value in changes.items():
            current = getattr(self, name)
            if name == "match":
                if value is not None and not isinstance(value, str):
                    raise ValueError("match must be a string or null")
            elif isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false")
            elif isinstance(current, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{name} must be an integer")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            values[name] = float(value) if isinstance(current, float) else value
        return replace(self, **values)


@dataclass(frozen=True)
class BedrockConfig:
    """Settings of the AWS Bedrock dialect (:mod:`airflow_provider_finetune.emulator.dialects.bedrock`).

    Requests are checked as AWS checks them: a SigV4 signature made with ``access_key_id`` and
    ``secret_access_key`` for ``region`` and the ``bedrock`` service, or ``Authorization: Bearer <api_key>``
    when a Bedrock API key is set. Training data is read from, and metrics are written to, the S3 service
    at ``s3_endpoint_url`` (moto's server in tests) with the same credentials.

    :param access_key_id: the AWS access key id requests must be signed with.
    :param secret_access_key: its secret. Never logged, never shown in ``repr``.
    :param api_key: a Bedrock API key accepted as ``Authorization: Bearer``; bearer requests are refused
        when ``None``. Never logged, never shown in ``repr``.
    :param region: the region signatures must be scoped to, and ARNs name.
    :param account_id: the 12-digit account id ARNs name.
    :param s3_endpoint_url: where the S3 service is; AWS's own endpoint for the region when ``None``.
    :param deployment_seconds: seconds (at speed 1.0) a custom model deployment stays ``Creating``.
    :param stopping_seconds: seconds (at speed 1.0) a stopped job stays ``Stopping``.
    :param max_active_jobs: the account's quota of customization jobs in progress (``InProgress`` or
        ``Stopping``) at once; a create beyond it is ``ServiceQuotaExceededException``. No quota when ``None``.
    """

    access_key_id: str = "AKIAEMULATOR00000000"
    secret_access_key: str = field(default="emulator-secret-access-key", repr=False)
    api_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    account_id: str = "123456789012"
    s3_endpoint_url: str | None = None
    deployment_seconds: float = 10.0
    stopping_seconds: float = 5.0
    max_active_jobs: int | None = None

    def __post_init__(self) -> None:
        for name in ("access_key_id", "secret_access_key", "api_key", "region"):
            value = getattr(self, name)
            if value is not None and (not value or any(char.isspace() for char in value)):
                raise ValueError(f"bedrock {name} must be a non-empty string without spaces")
        if not (len(self.account_id) == 12 and self.account_id.isdigit()):
            raise ValueError(f"bedrock account_id must be 12 digits, got {self.account_id!r}")
        if self.max_active_jobs is not None and self.max_active_jobs < 1:
            raise ValueError(f"bedrock max_active_jobs must be at least 1, got {self.max_active_jobs}")
        if self.deployment_seconds < 0 or self.stopping_seconds < 0:
            raise ValueError("bedrock deployment_seconds and stopping_seconds must not be negative")


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator needs to know; the defaults give a quiet in-memory emulator.

    :param api_key: the key clients must send (``Authorization: Bearer`` or ``api-key``); ``None``
        accepts any non-empty key. Never logged, never shown in ``repr``.
    :param admin_key: the key the checkpoint permission endpoints require; when ``None`` the API key is
        an admin key too. An admin key is accepted everywhere.
    :param organization: the organization id reported on jobs; its part after ``org-`` names the
        organization in fine-tuned model names (``ft:gpt-4o-mini-2024-07-18:emulator::abc12345``).
    :param speed: how much faster than :class:`Timings` jobs run (50 makes a one-minute job take about a
        second). A job keeps the speed it was created with, across restarts too.
    :param seed: seed of everything random: ids, job seeds, metrics, model names, chat answers.
    :param db_path: SQLite file that keeps every file, upload, job and permission across restarts;
        in memory when ``None``.
    :param timings: phase durations at speed 1.0.
    :param faults: faults injected into requests (none by default).
    :param clock: the time source; tests inject a :class:`ManualClock`.
    :param ignore_metadata_filter: when true, ``GET /v1/fine_tuning/jobs`` ignores its ``metadata[...]``
        filter and lists every job, as some gateways and older API versions do.
    :param bedrock: the AWS Bedrock dialect's credentials, region, account and S3 endpoint.
    :param gcs_endpoint: where the Cloud Storage JSON API is that the Google Vertex AI dialect reads training
        data from (``gs://`` URIs), e.g. ``http://127.0.0.1:9023`` (a Cloud Storage emulator; a bare
        ``host:port`` means ``http://``). The default is the ``STORAGE_EMULATOR_HOST`` environment variable,
        which Google's storage clients read too; with neither, a Vertex job's data cannot be read and the job
        fails saying so.
    """

    api_key: str | None = field(default="sk-emulator", repr=False)
    admin_key: str | None = field(default=None, repr=False)
    organization: str = "org-emulator"
    speed: float = 1.0
    seed: int = 0
    db_path: str | None = None
    timings: Timings = field(default_factory=Timings)
    faults: FaultConfig = field(default_factory=FaultConfig)
    clock: Clock = field(default=time.time, repr=False, compare=False)
    ignore_metadata_filter: bool = False
    bedrock: BedrockConfig = field(default_factory=BedrockConfig)
    gcs_endpoint: str | None = field(default_factory=lambda: os.environ.get("STORAGE_EMULATOR_HOST") or None)

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be greater than 0, got {self.speed}")
        for name in ("api_key", "admin_key"):
            value = getattr(self, name)
            if value is not None and (not value or any(char.isspace() for char in value)):
                raise ValueError(f"{name} must be a non-empty string without spaces")
        if self.gcs_endpoint is not None and (not self.gcs_endpoint.strip() or " " in self.gcs_endpoint.strip()):
            raise ValueError(f"gcs_endpoint must be a URL or host:port, got {self.gcs_endpoint!r}")

    @property
    def organization_name(self) -> str:
        """The organization as fine-tuned model names show it."""
        return self.organization.removeprefix("org-") or self.organization
