"""The request core's decisions, driven step by step with no I/O: retry rules, backoff, error mapping."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from airflow_provider_finetune.backends import backend_for, service_of
from airflow_provider_finetune.core.client import (
    ConnectionSettings,
    RetryPolicy,
    Send,
    Sleep,
    exchange,
    retry_after,
)
from airflow_provider_finetune.exceptions import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FineTuningAPIError,
    FineTuningConnectionError,
    FineTuningTimeoutError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    UnsafeToRetryError,
)

SECRET = "sk-test-0123456789abcdef"
SETTINGS = ConnectionSettings(base_url="https://api.test/v1", api_key=SECRET)
POLICY = RetryPolicy(max_retries=3, initial_delay=1.0, max_delay=8.0, jitter=0.0)


def _request() -> httpx.Request:
    return httpx.Request("GET", "https://api.test/v1/fine_tuning/jobs")


def _response(status: int, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body if body is not None else {}, headers=headers, request=_request())


def _error_body(message: str = "nope", code: str | None = "bad", param: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def drive(outcomes: list[httpx.Response | httpx.TransportError], *, idempotent: bool = True, policy=POLICY):
    """Run exchange() against a scripted list of outcomes; return (result, sleeps, sends)."""
    steps = exchange(_request, settings=SETTINGS, policy=policy, idempotent=idempotent)
    sleeps: list[float] = []
    sends = 0
    pending = list(outcomes)
    step = next(steps)
    while True:
        if isinstance(step, Sleep):
            sleeps.append(step.seconds)
            reply = None
        else:
            assert isinstance(step, Send)
            sends += 1
            reply = pending.pop(0)
        try:
            step = steps.send(reply)
        except StopIteration as done:
            return done.value, sleeps, sends


def test_success_first_time() -> None:
    result, sleeps, sends = drive([_response(200, {"ok": True})])
    assert result.json() == {"ok": True}
    assert (sleeps, sends) == ([], 1)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_with_exponential_backoff(status: int) -> None:
    result, sleeps, sends = drive([_response(status), _response(status), _response(200)])
    assert result.status_code == 200
    assert sends == 3
    assert sleeps == [1.0, 2.0]


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_retries=10, initial_delay=1.0, max_delay=4.0, jitter=0.5)
    delays = [policy.backoff(n) for n in range(8) for _ in range(20)]
    assert max(delays) <= 4.0
    assert min(delays) >= 0.5 * 1.0
    assert len(set(delays)) > 10, "jitter must spread the delays"


def test_retries_are_bounded() -> None:
    with pytest.raises(InternalServerError) as info:
        drive([_response(500, _error_body("boom", "server_error"))] * 4)
    assert info.value.status_code == 500
    assert info.value.code == "server_error"


def test_retry_after_seconds_is_honoured() -> None:
    _, sleeps, _ = drive([_response(429, headers={"retry-after": "7"}), _response(200)])
    assert sleeps == [7.0]


def test_retry_after_ms_wins_over_retry_after() -> None:
    _, sleeps, _ = drive([_response(429, headers={"retry-after-ms": "250", "retry-after": "9"}), _response(200)])
    assert sleeps == [0.25]


def test_retry_after_http_date_is_honoured() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    _, sleeps, _ = drive([_response(503, headers={"retry-after": when}), _response(200)])
    assert 27.0 <= sleeps[0] <= 30.0


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(max_retries=2, max_retry_after=60.0)
    _, sleeps, _ = drive([_response(429, headers={"retry-after": "3600"}), _response(200)], policy=policy)
    assert sleeps == [60.0]


def test_unusable_retry_after_falls_back_to_backoff() -> None:
    assert retry_after(httpx.Headers({"retry-after": "soon"})) is None
    _, sleeps, _ = drive([_response(429, headers={"retry-after": "soon"}), _response(200)])
    assert sleeps == [1.0]


def test_x_should_retry_false_stops_a_retryable_status() -> None:
    with pytest.raises(RateLimitError):
        drive([_response(429, _error_body("quota", "insufficient_quota"), {"x-should-retry": "false"})])


def test_x_should_retry_true_retries_a_client_error() -> None:
    result, _, sends = drive([_response(400, _error_body(), {"x-should-retry": "true"}), _response(200)])
    assert (result.status_code, sends) == (200, 2)


@pytest.mark.parametrize("status", [408, 500, 503])
def test_a_create_answered_an_error_it_may_have_survived_is_never_plain_even_when_told_not_to_retry(
    status: int,
) -> None:
    """x-should-retry: false forbids sending it again; it does not say the create was not made: look it up."""
    with pytest.raises(UnsafeToRetryError):
        drive([_response(status, _error_body("boom", "server_error"), {"x-should-retry": "false"})], idempotent=False)


def test_a_key_echoed_at_the_cut_of_a_plain_error_page_is_redacted_whole() -> None:
    page = "x" * 470 + f"Authorization: Bearer {SECRET}"  # the 500-character cut falls inside the key
    with pytest.raises(InternalServerError) as info:
        drive([httpx.Response(500, text=page, headers={"x-should-retry": "false"}, request=_request())])
    assert SECRET[:8] not in str(info.value)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (422, UnprocessableEntityError),
        (418, FineTuningAPIError),
    ],
)
def test_client_errors_are_typed_and_not_retried(status: int, cls: type[FineTuningAPIError]) -> None:
    response = _response(
        status, _error_body("it went wrong", "some_code", "training_file"), {"x-request-id": "req_123"}
    )
    with pytest.raises(cls) as info:
        drive([response])
    err = info.value
    assert type(err) is cls
    assert (err.status_code, err.code, err.param, err.message, err.request_id) == (
        status,
        "some_code",
        "training_file",
        "it went wrong",
        "req_123",
    )
    assert "training_file" in str(err)
    assert "req_123" in str(err)


def test_conflict_and_rate_limit_classes() -> None:
    with pytest.raises(ConflictError):
        drive([_response(409, _error_body())] * 4)
    with pytest.raises(RateLimitError):
        drive([_response(429, _error_body())] * 4)


def test_non_json_error_body() -> None:
    request = _request()
    response = httpx.Response(404, text="<html>Not Found</html>", request=request)
    with pytest.raises(NotFoundError) as info:
        drive([response])
    assert "Not Found" in info.value.message


def test_api_key_is_redacted_from_error_messages() -> None:
    body = _error_body(f"Incorrect API key provided: {SECRET}.", "invalid_api_key")
    with pytest.raises(AuthenticationError) as info:
        drive([_response(401, body)])
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.body)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
        httpx.ReadError("reset"),
    ],
)
def test_transport_errors_are_retried(exc: httpx.TransportError) -> None:
    result, sleeps, sends = drive([exc, _response(200)])
    assert (result.status_code, sends, len(sleeps)) == (200, 2, 1)


def test_transport_errors_exhausted_are_typed() -> None:
    with pytest.raises(FineTuningTimeoutError):
        drive([httpx.ReadTimeout("slow")] * 4)
    with pytest.raises(FineTuningConnectionError) as info:
        drive([httpx.ConnectError("refused")] * 4)
    assert "api.test" in str(info.value)


@pytest.mark.parametrize(
    "outcome",
    [
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
        httpx.Response(500, json=_error_body("boom"), request=_request()),
        httpx.Response(502, request=_request()),
        httpx.Response(408, request=_request()),
    ],
)
def test_create_with_unknown_outcome_is_never_resent(outcome: httpx.Response | httpx.TransportError) -> None:
    with pytest.raises(UnsafeToRetryError) as info:
        drive([outcome, _response(200)], idempotent=False)
    assert info.value.method == "GET"


@pytest.mark.parametrize(
    "outcome",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("no route"),
        httpx.Response(429, headers={"retry-after": "1"}, request=_request()),
    ],
)
def test_create_is_retried_when_it_surely_did_not_reach_the_service(
    outcome: httpx.Response | httpx.TransportError,
) -> None:
    result, _, sends = drive([outcome, _response(200)], idempotent=False)
    assert (result.status_code, sends) == (200, 2)


def test_settings_keep_the_key_out_of_repr() -> None:
    assert SECRET not in repr(SETTINGS)
    # The key is the backend's to send (an httpx.Auth), never a default header of the client.
    assert SECRET not in str(SETTINGS.headers())
    assert SECRET not in SETTINGS.fingerprint()


def test_azure_settings_use_the_version_and_name_the_service() -> None:
    azure = ConnectionSettings(
        base_url="https://res.openai.azure.com/openai",
        api_key=SECRET,
        service=service_of({"api_type": "azure"}).name,
        api_version="2025-04-01",
    )
    assert azure.service == "azure"
    assert azure.default_params() == {"api-version": "2025-04-01"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_url": "api.openai.com/v1"}, "base_url"),
        ({"api_type": "bedrock"}, "api_type"),
        ({"service": "sagemaker"}, "service"),
        ({"auth": "foo"}, "auth"),
        ({"auth": "entra"}, "auth"),
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_settings_refuse_bad_values(kwargs: dict[str, object], field: str) -> None:
    """Refused before any request: by the settings themselves, or by the registry of services they name."""

    def read() -> object:
        service = service_of({"api_type": kwargs.pop("api_type")} if "api_type" in kwargs else {})
        settings: dict[str, object] = {"base_url": "https://api.test/v1", "service": service.name, **kwargs}
        return backend_for(ConnectionSettings(**settings))  # type: ignore[arg-type]

    with pytest.raises(InvalidRequestError) as info:
        read()
    assert info.value.field == field
