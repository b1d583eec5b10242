"""Every hook call on every Azure surface sends what that surface's published spec describes.

Each test drives the hook through :class:`tests.backends.conftest.FakeAzure`, which validates each request
against the surface's document (``../shared/azure-spec``) and fails the test on any that does not conform.
The coverage test at the end proves that every operation of each trimmed document is reached by some call
here, or is named with the reason the provider does not use it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_finetune.core.statuses import FineTuningJobStatus
from airflow_provider_finetune.exceptions import InvalidRequestError, UnsupportedCapabilityError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from tests.backends.conftest import REACHED, SURFACES, FakeAzure, Surface, file_obj, page
from tests.conformance import operation_ids, validate_request
from tests.hook_doors import sync_call

MODEL = "gpt-4o-mini-2024-07-18"
WANDB = [{"type": "wandb", "wandb": {"project": "tuning"}}]

#: Operations of the trimmed documents that no backend call makes, each with the reason.
NOT_USED = {
    ("2024-10-21", "FineTuning_Delete"): "the provider cancels jobs; deleting a job's record is not a pipeline step",
    ("2025-04-01-preview", "FineTuning_Delete"): "as for 2024-10-21: jobs are cancelled, never deleted",
    ("2024-10-21", "Files_Import"): "training data is uploaded from the worker, not imported from a URL",
    ("2025-04-01-preview", "Files_Import"): "as for 2024-10-21: files are uploaded, not imported",
    ("v1", "FineTuning_CopyCheckpoint"): "a preview feature (aoai-copy-ft-checkpoints header) outside the provider",
    ("v1", "FineTuning_GetCheckpoint"): "the status of a checkpoint copy, which the provider never starts",
}


def sent_json(fake: FakeAzure, index: int = -1) -> Any:
    return json.loads(fake.requests[index].content)


# -- jobs ---------------------------------------------------------------------------------------------------


def test_create_supervised_job(surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "training_file": "file-train",
        "validation_file": "file-valid",
        "suffix": "weekly",
        "seed": 42,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.1}},
        },
    }
    if not surface.authoring:
        request["metadata"] = {"team": "ml"}
    job = azure_hook.create_job(request)
    assert job.id == "ftjob-1"
    assert job.status in (FineTuningJobStatus.QUEUED, FineTuningJobStatus.VALIDATING_FILES)
    assert fake_azure.operations == ["FineTuning_Create" if surface.authoring else "createFineTuningJob"]
    body = sent_json(fake_azure)
    assert body["model"] == MODEL
    if surface.name == "2024-10-21":
        assert body["hyperparameters"] == {"n_epochs": 3, "learning_rate_multiplier": 0.1}


def test_create_supervised_job_with_defaults_only(
    surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook
) -> None:
    azure_hook.create_job({"model": MODEL, "training_file": "file-train", "method": {"type": "supervised"}})
    assert len(fake_azure.operations) == 1


def test_create_dpo_job_where_the_surface_takes_it(
    surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook
) -> None:
    request = {
        "model": MODEL,
        "training_file": "file-train",
        "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 2, "batch_size": "auto"}}},
    }
    if surface.name == "2024-10-21":
        with pytest.raises(InvalidRequestError):
            azure_hook.create_job(request)
        assert fake_azure.requests == []
        return
    azure_hook.create_job(request)
    body = sent_json(fake_azure)
    assert body["method"]["type"] == "dpo"
    assert body["method"]["dpo"]["hyperparameters"]["beta"] == 0.1


def test_create_job_with_integrations_where_the_surface_takes_them(
    surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook
) -> None:
    request = {"model": MODEL, "training_file": "file-train", "integrations": WANDB}
    if surface.name == "2024-10-21":
        with pytest.raises(InvalidRequestError):
            azure_hook.create_job(request)
        assert fake_azure.requests == []
        return
    azure_hook.create_job(request)
    assert sent_json(fake_azure)["integrations"] == WANDB


def test_list_get_and_cancel_jobs(surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook) -> None:
    assert [job.id for job in azure_hook.list_jobs(limit=5, after="ftjob-0").data] == ["ftjob-1"]
    assert [job.id for job in azure_hook.list_jobs().data] == ["ftjob-1"]
    assert [state.id for state in sync_call(azure_hook, "list_job_states", limit=5).data] == ["ftjob-1"]
    assert [job.id for job in azure_hook.iter_jobs(limit=2)] == ["ftjob-1"]
    assert azure_hook.get_job("ftjob-1").status == FineTuningJobStatus.RUNNING
    assert azure_hook.cancel_job("ftjob-1").status == FineTuningJobStatus.CANCELLED
    assert len(fake_azure.operations) == 6


def test_pause_and_resume_where_the_surface_has_them(
    surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook
) -> None:
    if surface.name == "2024-10-21":
        with pytest.raises(UnsupportedCapabilityError):
            azure_hook.pause_job("ftjob-1")
        with pytest.raises(UnsupportedCapabilityError):
            azure_hook.resume_job("ftjob-1")
        assert fake_azure.requests == []
        return
    assert azure_hook.pause_job("ftjob-1").status == FineTuningJobStatus.PAUSED
    azure_hook.resume_job("ftjob-1")
    assert len(fake_azure.operations) == 2


def test_events_and_checkpoints(surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook) -> None:
    events = azure_hook.list_events("ftjob-1", after="ftevent-0", limit=10).data
    assert [e.level for e in events] == ["warn"]  # Azure authoring's "warning" reads as the canonical level
    assert len(list(azure_hook.iter_events("ftjob-1"))) == 1
    checkpoints = sync_call(azure_hook, "list_checkpoints", "ftjob-1", after="ftckpt-0", limit=5).data
    assert [c.step_number for c in checkpoints] == [10]
    assert len(list(azure_hook.iter_checkpoints("ftjob-1"))) == 1
    assert len(fake_azure.operations) == 4


# -- files and uploads --------------------------------------------------------------------------------------


def test_files(surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook) -> None:
    uploaded = azure_hook.upload_file(b'{"messages": []}\n', filename="train.jsonl")
    assert uploaded.id == "file-train"
    assert [f.id for f in azure_hook.list_files(purpose="fine-tune").data] == ["file-train"]
    assert [f.id for f in azure_hook.list_files().data] == ["file-train"]
    assert azure_hook.get_file("file-train").filename == "train.jsonl"
    assert azure_hook.get_file_content("file-train") == b'{"messages": []}\n'
    assert azure_hook.delete_file("file-train").deleted is True
    assert len(fake_azure.operations) == 6


def test_file_list_limit_is_sent_only_where_declared(
    surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook
) -> None:
    """Only the preview's file list declares ``limit`` (and ``after``); elsewhere the whole list comes at once."""
    assert [f.id for f in azure_hook.list_files(purpose="fine-tune", limit=100).data] == ["file-train"]
    assert [f.id for f in azure_hook.iter_files(limit=100)] == ["file-train"]
    assert ("limit" in fake_azure.requests[0].url.params) is (surface.name == "2025-04-01-preview")


def test_file_list_cursor_is_refused_where_the_list_does_not_page(
    surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook
) -> None:
    if surface.name == "2025-04-01-preview":
        azure_hook.list_files(after="file-0", limit=10)
        assert fake_azure.requests[0].url.params["after"] == "file-0"
        return
    with pytest.raises(InvalidRequestError) as info:
        azure_hook.list_files(after="file-0")
    assert info.value.field == "after"
    assert fake_azure.requests == []


def test_v1_file_list_with_more_is_not_paged_with_an_undeclared_cursor(
    fake_azure: FakeAzure, azure_hook: FineTuningHook
) -> None:
    if fake_azure.surface.name != "v1":
        pytest.skip("v1 answers has_more on its file list")
    more = {**page(fake_azure.surface, [file_obj(fake_azure.surface)], files=True), "has_more": True}
    fake_azure.answers["listFiles"] = lambda request: (200, more, {})
    assert [f.id for f in azure_hook.iter_files()] == ["file-train"]
    assert len(fake_azure.requests) == 1


def test_uploads_on_authoring(surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook) -> None:
    if not surface.authoring:
        with pytest.raises(UnsupportedCapabilityError):
            sync_call(azure_hook, "create_upload", "big.jsonl", 100)
        assert fake_azure.requests == []
        return
    upload = sync_call(azure_hook, "create_upload", "big.jsonl", 100)
    part = sync_call(azure_hook, "add_upload_part", upload.id, b"x" * 100)
    done = sync_call(azure_hook, "complete_upload", upload.id, [part.id], md5="0" * 32)
    assert done.file is not None
    assert sync_call(azure_hook, "cancel_upload", upload.id).status == "cancelled"
    assert fake_azure.operations == ["UploadFile_Start", "UploadFile_Part", "UploadFile_Complete", "UploadFile_Cancel"]


def test_a_large_file_goes_through_the_uploads_api(surface: Surface, fake_azure: FakeAzure, monkeypatch: Any) -> None:
    if not surface.authoring:
        pytest.skip("v1 has no Uploads API")
    from tests.backends.conftest import ENDPOINT, KEY

    conn = {"conn_type": "finetune", "host": ENDPOINT, "password": KEY, "extra": surface.extra}
    monkeypatch.setenv("AIRFLOW_CONN_FT_AZURE_BIG", json.dumps(conn))
    hook = FineTuningHook("ft_azure_big", upload_threshold=10, part_size=8)
    try:
        assert hook.upload_file(b"0123456789abcdef!", filename="big.jsonl").id == "file-big"
    finally:
        hook.close()
    assert fake_azure.operations == ["UploadFile_Start", *["UploadFile_Part"] * 3, "UploadFile_Complete"]


# -- inference ----------------------------------------------------------------------------------------------


def test_chat_completion(surface: Surface, fake_azure: FakeAzure, azure_hook: FineTuningHook) -> None:
    answer = azure_hook.chat_completion(
        {"model": "gpt-4o-mini-ft", "messages": [{"role": "user", "content": "ok?"}], "max_tokens": 5}
    )
    assert answer["choices"][0]["message"]["content"] == "yes"
    if surface.authoring:
        # The deployments inference API is in none of the authoring documents: only its shape is checked.
        assert fake_azure.unvalidated == ["POST /openai/deployments/gpt-4o-mini-ft/chat/completions"]
        sent = fake_azure.requests[0]
        assert sent.url.params["api-version"] == surface.extra["api_version"]
        assert sent.headers["api-key"]
        assert "model" not in json.loads(sent.content)
    else:
        assert fake_azure.operations == ["createChatCompletion"]


# -- coverage -----------------------------------------------------------------------------------------------


def test_every_operation_of_each_azure_spec_is_reached_or_explained(request: pytest.FixtureRequest) -> None:
    """Runs after the calls above (file order): every spec operation is reached by one or named in NOT_USED."""
    drivers = {
        name
        for name, value in globals().items()
        if name.startswith("test_") and "fake_azure" in getattr(value, "__code__", compile("", "", "exec")).co_varnames
    }
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    if not drivers <= selected or not all(REACHED.values()):
        pytest.skip("needs every test of this module that drives the fake service in the same run")
    problems = []
    for name, surface in SURFACES.items():
        declared = set(operation_ids(surface.spec))
        explained = {op for (version, op) in NOT_USED if version == name}
        assert explained <= declared, f"{name}: NOT_USED names operations the spec lacks: {explained - declared}"
        reached = REACHED[name] - {"createChatCompletion"}  # from the whole v1 file, not the trimmed one
        missing = declared - reached - explained
        if missing:
            problems.append(f"{name}: never reached and not explained: {sorted(missing)}")
        both = reached & explained
        if both:
            problems.append(f"{name}: reached, yet listed as not used: {sorted(both)}")
    assert not problems, "\n".join(problems)


# -- the validator itself: it refuses what each document refuses --------------------------------------------

AUTHORING = "https://res.openai.azure.com/openai"
V1 = "https://res.openai.azure.com/openai/v1"


def _refusal(request: Any, spec: str, base_path: str) -> str:
    with pytest.raises(AssertionError) as info:
        validate_request(request, base_path=base_path, spec=spec)
    return str(info.value)


def _req(method: str, url: str, **kwargs: Any) -> Any:
    import httpx

    return httpx.Request(method, url, **kwargs)


KEY_HEADER = {"api-key": "k-1"}


@pytest.mark.parametrize(
    ("request_", "spec", "message"),
    [
        (
            _req("GET", f"{AUTHORING}/fine_tuning/jobs", headers=KEY_HEADER),
            "azure-2024-10-21",
            "'api-version' is missing",
        ),
        (
            _req("GET", f"{AUTHORING}/fine_tuning/jobs?api-version=2025-04-01-preview", headers=KEY_HEADER),
            "azure-2024-10-21",
            "describes api-version '2024-10-21'",
        ),
        (
            _req("GET", f"{AUTHORING}/fine_tuning/jobs?api-version=2024-10-21", headers={"authorization": "Bearer t"}),
            "azure-2024-10-21",
            "header 'api-key'",
        ),
        (
            _req("POST", f"{AUTHORING}/fine_tuning/jobs/ft-1/pause?api-version=2024-10-21", headers=KEY_HEADER),
            "azure-2024-10-21",
            "no operation in the spec matches",
        ),
        (
            _req(
                "POST",
                f"{AUTHORING}/fine_tuning/jobs?api-version=2024-10-21",
                headers=KEY_HEADER,
                json={"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": "auto"}},
            ),
            "azure-2024-10-21",
            "$.hyperparameters.n_epochs",
        ),
        (
            _req("POST", f"{AUTHORING}/files?api-version=2024-10-21", headers=KEY_HEADER, files={"file": ("t", b"{}")}),
            "azure-2024-10-21",
            "'purpose' is a required property",
        ),
        (
            _req(
                "POST",
                f"{AUTHORING}/uploads?api-version=2024-10-21",
                headers=KEY_HEADER,
                json={"filename": "t", "bytes": 1, "purpose": "fine-tune"},
            ),
            "azure-2024-10-21",
            "'mime_type' is a required property",
        ),
        (
            _req(
                "POST", f"{V1}/files", headers=KEY_HEADER, files={"file": ("t", b"{}")}, data={"purpose": "fine-tune"}
            ),
            "azure-v1",
            "'expires_after' is a required property",
        ),
        (
            _req("DELETE", f"{V1}/fine_tuning/jobs/ft-1", headers=KEY_HEADER),
            "azure-v1",
            "method DELETE is not declared",
        ),
        (_req("GET", f"{V1}/fine_tuning/jobs?api-version=2024-10-21", headers=KEY_HEADER), "azure-v1", "api-version"),
        (_req("GET", f"{V1}/fine_tuning/jobs"), "azure-v1", "no credentials this spec accepts"),
        (_req("GET", f"{V1}/fine_tuning/jobs", headers={"api-key": "none"}), "azure-v1", "no usable credential"),
    ],
)
def test_the_validator_refuses_what_the_azure_document_refuses(request_: Any, spec: str, message: str) -> None:
    base_path = "/openai/v1" if spec.startswith("azure-v1") else "/openai"
    assert message in _refusal(request_, spec, base_path)


@pytest.mark.parametrize(
    ("request_", "spec", "operation"),
    [
        (_req("GET", f"{V1}/fine_tuning/jobs", headers={"authorization": "Bearer tok"}), "azure-v1", None),
        (_req("GET", f"{V1}/fine_tuning/jobs?api-version=preview", headers=KEY_HEADER), "azure-v1", None),
        (
            _req(
                "GET",
                f"{AUTHORING}/fine_tuning/jobs?api-version=2025-04-01-preview",
                headers={"authorization": "Bearer t"},
            ),
            "azure-2025-04-01-preview",
            "FineTuning_List",
        ),
        (
            _req(
                "POST",
                f"{AUTHORING}/files?api-version=2025-04-01-preview",
                headers=KEY_HEADER,
                files={"file": ("t", b"{}")},
                data={"purpose": "fine-tune", "expires_after.anchor": "created_at", "expires_after.seconds": "1209600"},
            ),
            "azure-2025-04-01-preview",
            "Files_Upload",
        ),
    ],
)
def test_the_validator_accepts_what_the_azure_document_allows(request_: Any, spec: str, operation: str | None) -> None:
    base_path = "/openai/v1" if spec.startswith("azure-v1") else "/openai"
    assert validate_request(request_, base_path=base_path, spec=spec) == (operation or "listPaginatedFineTuningJobs")
