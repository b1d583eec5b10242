"""The Azure backends at the HTTP transport: URLs, auth, statuses, errors, create bodies, capabilities."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from airflow_provider_finetune.backends import backend_for
from airflow_provider_finetune.backends.azure import AzureAuthoringBackend, AzureV1Backend
from airflow_provider_finetune.core.client import ConnectionSettings, RetryPolicy
from airflow_provider_finetune.core.statuses import FineTuningJobStatus
from airflow_provider_finetune.exceptions import InvalidRequestError, NotFoundError, UnsupportedCapabilityError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from tests.hook_doors import sync_call

ENDPOINT = "https://res.openai.azure.com"
KEY = "azure-secret-key-1234"


def hook_for(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> FineTuningHook:
    conn = {"conn_type": "finetune", "host": extra.pop("host", ENDPOINT), "password": KEY, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_FT_AZURE", json.dumps(conn))
    return FineTuningHook("ft_azure", retry_policy=RetryPolicy(initial_delay=0, max_delay=0, jitter=0))


def azure_job(status: str = "pending", **fields: Any) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job",
        "id": "ftjob-1",
        "model": "gpt-4o-mini-2024-07-18",
        "created_at": 1721764800,
        "status": status,
        "training_file": "file-abc",
        "organisation_id": "org-1",
        "hyperparameters": {"n_epochs": -1, "batch_size": -1, "learning_rate_multiplier": 1.0},
        **fields,
    }


@pytest.mark.parametrize(
    ("extra", "base", "kind", "version"),
    [
        ({"service": "azure"}, f"{ENDPOINT}/openai/v1", AzureV1Backend, None),
        ({"api_type": "azure", "api_version": "2024-10-21"}, f"{ENDPOINT}/openai", AzureAuthoringBackend, "2024-10-21"),
        ({"service": "azure", "host": f"{ENDPOINT}/openai"}, f"{ENDPOINT}/openai", AzureAuthoringBackend, "2024-10-21"),
        ({"service": "azure", "api_version": "preview"}, f"{ENDPOINT}/openai/v1", AzureV1Backend, "preview"),
        ({"service": "azure", "host": f"{ENDPOINT}/openai/v1/"}, f"{ENDPOINT}/openai/v1", AzureV1Backend, None),
    ],
)
def test_the_connection_picks_the_surface(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], base: str, kind: type, version: str | None
) -> None:
    backend = hook_for(monkeypatch, **extra).backend
    assert isinstance(backend, kind)
    assert backend.settings.base_url == base
    assert backend.settings.api_version == version


def test_authoring_sends_the_key_header_and_version_and_maps_statuses(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = hook_for(monkeypatch, service="azure", api_version="2025-04-01-preview", host=f"{ENDPOINT}/openai")
    with respx.mock(assert_all_called=True) as router:
        route = router.get(f"{ENDPOINT}/openai/fine_tuning/jobs/ftjob-1").mock(
            side_effect=[httpx.Response(200, json=azure_job(status)) for status in ("created", "pending", "resuming")]
        )
        statuses = [hook.get_job("ftjob-1").status for _ in range(3)]
    sent = route.calls[0].request
    assert sent.headers["api-key"] == KEY
    assert "authorization" not in sent.headers
    assert sent.url.params["api-version"] == "2025-04-01-preview"
    assert statuses == [FineTuningJobStatus.QUEUED, FineTuningJobStatus.QUEUED, FineTuningJobStatus.RESUMING]
    job = FineTuningJob_from(hook)
    assert job.organization_id == "org-1"
    assert job.hyperparameters is not None
    assert job.hyperparameters.n_epochs == "auto"


def FineTuningJob_from(hook: FineTuningHook) -> Any:
    with respx.mock() as router:
        router.get(f"{ENDPOINT}/openai/fine_tuning/jobs/ftjob-1").respond(200, json=azure_job("succeeded"))
        return hook.get_job("ftjob-1")


def test_a_status_azure_adds_later_parses_and_is_not_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = hook_for(monkeypatch, api_type="azure", api_version="2024-10-21")
    with respx.mock() as router:
        router.get(f"{ENDPOINT}/openai/fine_tuning/jobs/ftjob-1").respond(200, json=azure_job("deploying"))
        status = hook.get_job("ftjob-1").status
    assert status.value == "deploying"
    assert not status.is_known()
    assert not status.is_terminal()


def test_vendor_words_stay_out_of_the_canonical_statuses() -> None:
    assert {"pending", "created"}.isdisjoint(s.value for s in FineTuningJobStatus)


def test_authoring_error_body_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = hook_for(monkeypatch, api_type="azure", api_version="2024-10-21")
    body = {
        "error": {
            "code": "notFound",
            "message": "The fine tune job ftjob-9 was not found.",
            "target": "fine-tuning-job-id",
            "details": [],
            "innererror": {"code": "invalidPayload"},
        }
    }
    with respx.mock() as router:
        router.get(f"{ENDPOINT}/openai/fine_tuning/jobs/ftjob-9").respond(
            404, json=body, headers={"apim-request-id": "req-42"}
        )
        with pytest.raises(NotFoundError) as info:
            hook.get_job("ftjob-9")
    err = info.value
    assert (err.code, err.param, err.error_type, err.request_id) == (
        "notFound",
        "fine-tuning-job-id",
        "invalidPayload",
        "req-42",
    )
    assert "was not found" in err.message


def test_stable_authoring_body_has_top_level_numbers_and_no_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = hook_for(monkeypatch, api_type="azure", api_version="2024-10-21")
    request = {
        "model": "gpt-4o-mini-2024-07-18",
        "training_file": "file-abc",
        "suffix": "weekly",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": "auto"}}},
    }
    with respx.mock() as router:
        route = router.post(f"{ENDPOINT}/openai/fine_tuning/jobs").respond(
            201, json=azure_job("pending"), headers={"Location": f"{ENDPOINT}/openai/fine_tuning/jobs/ftjob-1"}
        )
        job = hook.create_job(request)
    assert job.status == FineTuningJobStatus.QUEUED
    body = json.loads(route.calls[0].request.content)
    assert body == {
        "model": "gpt-4o-mini-2024-07-18",
        "training_file": "file-abc",
        "suffix": "weekly",
        "hyperparameters": {"n_epochs": 3},
    }


def test_a_sibling_task_s_job_of_the_same_model_and_files_is_not_taken_for_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mapped grid: same model and training file, another suffix or other epochs. Azure's job reports both."""
    from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob, build_request
    from airflow_provider_finetune.rules.once import _same_request_fields

    backend = hook_for(monkeypatch, api_type="azure", api_version="2024-10-21").backend
    mine = {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-abc", "suffix": "e3"}
    mine["method"] = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}
    body = backend.job_body(build_request(CreateFineTuningJobRequest, mine))

    def reported(**fields: Any) -> FineTuningJob:
        return FineTuningJob.model_validate(backend.job_from(azure_job("running", **fields)))

    same = {"n_epochs": 3, "batch_size": -1, "learning_rate_multiplier": 1.0}
    assert _same_request_fields(reported(suffix="e3", hyperparameters=same), body)
    assert not _same_request_fields(reported(suffix="e2", hyperparameters=same), body)
    assert not _same_request_fields(reported(suffix="e3", hyperparameters={**same, "n_epochs": 2}), body)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"suffix": "x" * 41}, "suffix"),
        ({"metadata": {"team": "ml"}}, "metadata"),
        ({"method": {"type": "dpo", "dpo": {}}}, "method.type"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
    ],
)
def test_what_stable_authoring_cannot_take_is_refused_before_sending(
    monkeypatch: pytest.MonkeyPatch, request_: dict[str, Any], field: str
) -> None:
    hook = hook_for(monkeypatch, api_type="azure", api_version="2024-10-21")
    with respx.mock(assert_all_mocked=True) as router:
        with pytest.raises(InvalidRequestError) as info:
            hook.create_job({"model": "gpt-4o-mini", "training_file": "file-abc", **request_})
        assert router.calls.call_count == 0
    assert info.value.field == field


@pytest.mark.parametrize(
    ("extra", "call", "capability"),
    [
        ({"api_type": "azure", "api_version": "2024-10-21"}, lambda h: h.pause_job("ftjob-1"), "pause"),
        ({"api_type": "azure", "api_version": "2024-10-21"}, lambda h: h.resume_job("ftjob-1"), "resume"),
        (
            {"service": "azure"},
            lambda h: sync_call(h, "list_checkpoint_permissions", "ft:x:ckpt"),
            "checkpoint_permissions",
        ),
        ({"service": "azure"}, lambda h: h.validate_grader({"type": "string_check"}), "graders"),
        ({"service": "azure"}, lambda h: sync_call(h, "create_upload", "big.jsonl", 10), "uploads"),
    ],
)
def test_unsupported_capabilities_are_refused_with_no_request(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], call: Any, capability: str
) -> None:
    hook = hook_for(monkeypatch, **extra)
    with respx.mock(assert_all_mocked=True) as router:
        with pytest.raises(UnsupportedCapabilityError) as info:
            call(hook)
        assert router.calls.call_count == 0
    assert info.value.capability == capability
    assert "Azure OpenAI" in str(info.value)
    assert "\n" not in str(info.value)


def test_v1_uploads_say_when_the_file_expires_and_metadata_rides_on_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = hook_for(monkeypatch, service="azure")
    with respx.mock() as router:
        files = router.post(f"{ENDPOINT}/openai/v1/files").respond(
            200,
            json={
                "id": "file-1",
                "object": "file",
                "bytes": 3,
                "created_at": 1,
                "filename": "t.jsonl",
                "purpose": "fine-tune",
                "status": "processed",
            },
        )
        hook.upload_file(b"{}\n", filename="t.jsonl")
        jobs = router.post(f"{ENDPOINT}/openai/v1/fine_tuning/jobs").respond(200, json=azure_job("queued"))
        hook.create_job({"model": "gpt-4o-mini", "training_file": "file-1", "metadata": {"team": "ml"}})
    form = files.calls[0].request.content
    assert b'name="expires_after[anchor]"' in form
    assert b"created_at" in form
    assert b'name="expires_after[seconds]"' in form
    assert files.calls[0].request.headers["api-key"] == KEY
    assert json.loads(jobs.calls[0].request.content)["metadata"] == {"team": "ml"}


def test_entra_id_tokens_are_refreshed_before_they_expire() -> None:
    import time

    from airflow_provider_finetune.backends.azure import EntraIdAuth

    class Credential:
        def __init__(self) -> None:
            self.calls = 0

        def get_token(self, scope: str) -> Any:
            self.calls += 1
            # The first token expires in 60 s (inside the refresh margin), the second in an hour.
            lifetime = 60 if self.calls == 1 else 3600
            return type("Token", (), {"token": f"tok-{self.calls}", "expires_on": time.time() + lifetime})()

    credential = Credential()
    auth = EntraIdAuth(credential)
    settings = ConnectionSettings(base_url=f"{ENDPOINT}/openai/v1", service="azure", auth="entra")
    seen = []
    with respx.mock() as router:
        route = router.get(f"{ENDPOINT}/openai/v1/fine_tuning/jobs/ftjob-1").respond(200, json=azure_job("queued"))
        with settings.make_client(auth=auth) as client:
            for _ in range(3):
                client.get("fine_tuning/jobs/ftjob-1")
        seen = [call.request.headers["authorization"] for call in route.calls]
    assert seen == ["Bearer tok-1", "Bearer tok-2", "Bearer tok-2"]
    assert credential.calls == 2
    assert backend_for(settings).label.startswith("Azure OpenAI")
