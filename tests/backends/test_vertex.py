"""The Vertex AI backend through the hook: every request checked against Google's ``google-genai`` SDK.

The fake (:mod:`tests.backends.vertex_fake`) validates each create body with the SDK's ``TuningJob`` type, each
generateContent body with its ``Content`` and ``GenerationConfig``, reads each of its answers back with the SDK's
own conversion, and fails the test at teardown on any request Vertex AI would not take. The create bodies are also
compared with what the SDK itself builds (``_CreateTuningJobParametersPrivate_to_vertex``) for the same request.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import types as pytypes
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from google.genai import _common, tunings
from google.genai import types as genai

from airflow_provider_finetune.backends import SERVICES
from airflow_provider_finetune.backends.vertex import (
    MISSING_EXTRA,
    VERTEX_STATES,
    GoogleAuth,
    GoogleCredentials,
    VertexBackend,
    base_url_for,
    checkpoints_from_vertex,
    job_from_vertex,
    label_value,
)
from airflow_provider_finetune.core.client import ConnectionSettings, close_shared_async_clients
from airflow_provider_finetune.core.statuses import FineTuningJobStatus
from airflow_provider_finetune.exceptions import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    FineTuningError,
    FineTuningJobFailed,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnsupportedCapabilityError,
)
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.models import CreateFineTuningJobRequest, FineTuningJob, build_request
from airflow_provider_finetune.rules.once import REQUEST_KEY, TASK_TAG_KEY, JobIdentity
from tests.backends.vertex_fake import (
    ENDPOINT,
    LOCATION,
    PROJECT,
    PROJECT_NUMBER,
    ROOT,
    TOKEN,
    FakeVertex,
    answer,
    connect_vertex,
    google_error,
    serve_fake_vertex,
)
from tests.hook_doors import async_call, sync_call
from tests.operators.conftest import FakeStateStore, FakeTI

MODEL = "gemini-2.5-flash"
TRAIN = "gs://acme-tuning/support/train.jsonl"
VALID = "gs://acme-tuning/support/valid.jsonl"
TAG = "ti-0123456789abcdef0123456789abcdef01234567"
BASE = f"projects/{PROJECT_NUMBER}/locations/{LOCATION}"


@pytest.fixture
def fake() -> Iterator[FakeVertex]:
    with serve_fake_vertex() as made:
        yield made


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[FineTuningHook]:
    made: FineTuningHook = connect_vertex(monkeypatch)
    yield made
    made.close()


def request(**fields: Any) -> CreateFineTuningJobRequest:
    return build_request(CreateFineTuningJobRequest, {"model": MODEL, "training_file": TRAIN, **fields})


def ensure(hook: FineTuningHook, tag: str = TAG, options: dict[str, Any] | None = None, **fields: Any) -> Any:
    return hook.ensure_job(request(**fields), identity=JobIdentity(tag), service_options=options)


def ident(job_id: str) -> str:
    return job_id.rsplit("/", 1)[-1]


def camel(value: Any, *, keep: bool = False) -> Any:
    """Keys in camelCase, as proto JSON reads either spelling (the keys of ``labels`` are data, kept as they are)."""
    if isinstance(value, dict):
        return {
            (key if keep else re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)): camel(item, keep=key == "labels")
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [camel(item) for item in value]
    return value


def sdk_body(base_model: str, training: str, **config: Any) -> dict[str, Any]:
    """The create body Google's SDK sends for the same request (``client.tunings.tune`` in Vertex AI mode)."""
    params = genai._CreateTuningJobParametersPrivate(
        base_model=base_model,
        training_dataset=genai.TuningDataset(gcs_uri=training),
        config=genai.CreateTuningJobConfig(**config),
    )
    body = tunings._CreateTuningJobParametersPrivate_to_vertex(params, None, params)
    body.pop("config", None)
    return camel(_common.encode_unserializable_types(_common.convert_to_dict(body)))  # type: ignore[no-any-return]


# -- the connection -----------------------------------------------------------------------------------------------


def test_the_service_is_registered_with_its_fields_and_auth_kinds() -> None:
    service = SERVICES["vertex"]
    assert service.auth == ("key", "google")
    assert set(service.fields or {}) == {"project", "location", "gcp_conn_id"}
    assert service.fields["location"]["schema"]["default"] == "us-central1"  # type: ignore[index]
    assert service.fields["gcp_conn_id"]["schema"]["default"] == "google_cloud_default"  # type: ignore[index]


def test_without_a_host_the_api_root_is_googles_regional_address(hook: FineTuningHook) -> None:
    assert hook.settings.base_url == ROOT
    backend = hook.backend
    assert isinstance(backend, VertexBackend)
    assert (backend.project, backend.location, backend.api_root) == (PROJECT, LOCATION, f"{ENDPOINT}/v1")
    assert backend.auth_kind == "key"
    assert TOKEN not in repr(hook.settings)


@pytest.mark.parametrize(
    ("host", "extra", "expected"),
    [
        # The contract with the emulator's dialect: a host is the root below /v1.
        (
            "http://127.0.0.1:8089/vertex",
            {"project": "p1", "location": "europe-west4"},
            "http://127.0.0.1:8089/vertex/v1/projects/p1/locations/europe-west4",
        ),
        (
            "http://127.0.0.1:8089/vertex/",
            {"project": "p1"},
            "http://127.0.0.1:8089/vertex/v1/projects/p1/locations/us-central1",
        ),
        (
            "https://psc.example.test/v1",
            {"project": "p1"},
            "https://psc.example.test/v1/projects/p1/locations/us-central1",
        ),
        (
            None,
            {"project": "p1", "location": "europe-west4"},
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/p1/locations/europe-west4",
        ),
        (
            None,
            {"project": "p1", "location": "global"},
            "https://aiplatform.googleapis.com/v1/projects/p1/locations/global",
        ),
    ],
)
def test_the_api_root_from_host_project_and_location(host: str | None, extra: dict[str, str], expected: str) -> None:
    assert base_url_for(host, extra) == expected


def test_a_connection_needs_its_project(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "finetune", "password": TOKEN, "extra": {"service": "vertex"}}
    monkeypatch.setenv("AIRFLOW_CONN_FT_NO_PROJECT", json.dumps(conn))
    with pytest.raises(InvalidRequestError, match="project") as refused:
        _ = FineTuningHook("ft_no_project").settings
    assert refused.value.field == "project"
    with pytest.raises(InvalidRequestError, match="location"):
        base_url_for(None, {"project": "p1", "location": "US Central"})


def test_the_google_connection_and_auth_kinds_of_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    keyless = connect_vertex(monkeypatch, password=None, extra={"gcp_conn_id": "google_tuning"}, conn_id="ft_g")
    backend = keyless.backend
    assert backend.auth_kind == "google"
    assert backend.gcp_conn_id == "google_tuning"
    assert keyless.settings.service_fields["gcp_conn_id"] == "google_tuning"
    auth = backend.auth()
    assert isinstance(auth, GoogleAuth)
    assert auth.credentials.gcp_conn_id == "google_tuning"
    default = connect_vertex(monkeypatch, password=None, conn_id="ft_g2")
    assert default.backend.gcp_conn_id == "google_cloud_default"
    no_key = connect_vertex(monkeypatch, password=None, extra={"auth": "key"}, conn_id="ft_g3")
    with pytest.raises(InvalidRequestError, match="OAuth 2 access token"):
        no_key.backend.auth()
    wrong = connect_vertex(monkeypatch, extra={"auth": "sigv4"}, conn_id="ft_g4")
    with pytest.raises(InvalidRequestError, match="key, google"):
        _ = wrong.settings


# -- create: the request Google's SDK would send --------------------------------------------------------------------


EVALUATION = {
    "metrics": [{"aggregation_metrics": ["AVERAGE", "STANDARD_DEVIATION"], "exact_match_spec": {}}],
    "output_config": {"gcs_destination": {"output_uri_prefix": "gs://acme-tuning/eval/"}},
    "autorater_config": {"sampling_count": 4},
}


def test_a_supervised_create_is_the_body_googles_sdk_sends(hook: FineTuningHook, fake: FakeVertex) -> None:
    options = {
        "adapter_size": 4,
        "export_last_checkpoint_only": True,
        "evaluation_config": EVALUATION,
        "tuned_model_display_name": "support-v2",
        "description": "weekly support model",
        "labels": {"team": "support"},
    }
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "learning_rate_multiplier": 0.5}}}
    job = hook.create_job(request(validation_file=VALID, method=method), service_options=options)
    (body,) = fake.bodies("CreateTuningJob")
    assert fake.requests[0].url == f"{ROOT}/tuningJobs"
    assert camel(body) == sdk_body(
        MODEL,
        TRAIN,
        method="SUPERVISED_FINE_TUNING",
        validation_dataset=genai.TuningValidationDataset(gcs_uri=VALID),
        tuned_model_display_name="support-v2",
        description="weekly support model",
        epoch_count=3,
        learning_rate_multiplier=0.5,
        export_last_checkpoint_only=True,
        adapter_size="ADAPTER_SIZE_FOUR",
        labels={"team": "support"},
        evaluation_config=genai.EvaluationConfig(
            metrics=[genai.Metric(name="exact_match")],
            output_config=genai.OutputConfig(
                gcs_destination=genai.GcsDestination(output_uri_prefix="gs://acme-tuning/eval/")
            ),
            autorater_config=genai.AutoraterConfig(sampling_count=4),
        ),
    )
    assert body["supervisedTuningSpec"]["evaluationConfig"]["outputConfig"] == {
        "gcsDestination": {"outputUriPrefix": "gs://acme-tuning/eval/"}
    }
    assert job.id == f"{BASE}/tuningJobs/{next(iter(fake.jobs))}"
    assert job.status is FineTuningJobStatus.QUEUED
    assert job.model == MODEL
    assert (job.training_file, job.validation_file) == (TRAIN, VALID)
    assert job.metadata == {"team": "support"}
    assert job.method is not None
    assert job.method.type == "supervised"
    assert job.method.supervised is not None
    assert job.method.supervised.hyperparameters is not None
    assert job.method.supervised.hyperparameters.n_epochs == 3


def test_a_dpo_create_is_a_preference_optimization_spec_with_beta(hook: FineTuningHook, fake: FakeVertex) -> None:
    method = {
        "type": "dpo",
        "dpo": {"hyperparameters": {"n_epochs": 2, "beta": 0.1, "learning_rate_multiplier": "auto"}},
    }
    job = hook.create_job(
        request(validation_file=VALID, method=method), service_options={"adapter_size": "adapter_size_eight"}
    )
    (body,) = fake.bodies("CreateTuningJob")
    assert camel(body) == sdk_body(
        MODEL,
        TRAIN,
        method="PREFERENCE_TUNING",
        validation_dataset=genai.TuningValidationDataset(gcs_uri=VALID),
        epoch_count=2,
        beta=0.1,
        adapter_size="ADAPTER_SIZE_EIGHT",
    )
    assert "learningRateMultiplier" not in body["preferenceOptimizationSpec"]["hyperParameters"]  # "auto": Vertex's
    assert job.method is not None
    assert job.method.type == "dpo"
    assert job.method.dpo is not None
    assert job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.1


def test_a_bare_create_sends_only_what_was_given(hook: FineTuningHook, fake: FakeVertex) -> None:
    hook.create_job(request())
    (body,) = fake.bodies("CreateTuningJob")
    assert body == {"baseModel": MODEL, "supervisedTuningSpec": {"trainingDatasetUri": TRAIN}}
    assert camel(body) == sdk_body(MODEL, TRAIN)


# -- refused before any request --------------------------------------------------------------------------------------


REFUSED_REQUESTS = [
    ({"suffix": "weekly"}, "suffix", "tuned_model_display_name"),
    ({"seed": 42}, "seed", "no seed"),
    ({"metadata": {"team": "ml"}}, "metadata", "service_options={'labels'"),
    ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations", "Vertex AI Experiment"),
    (
        {"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}}},
        "method.supervised.hyperparameters.batch_size",
        "batch size",
    ),
    ({"training_file": "file-abc123"}, "training_file", "gs://"),
    ({"training_file": "s3://bucket/train.jsonl"}, "training_file", "Cloud Storage"),
    ({"validation_file": "file-valid"}, "validation_file", "gs://"),
]


@pytest.mark.parametrize(("fields", "field", "says"), REFUSED_REQUESTS, ids=[r[1] for r in REFUSED_REQUESTS])
def test_openai_options_that_mean_something_else_are_refused_before_any_request(
    hook: FineTuningHook, fake: FakeVertex, fields: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        hook.create_job(request(**fields))
    assert refused.value.field == field
    assert says in str(refused.value)
    assert "\n" not in str(refused.value).split("\nNot retried")[0]
    with pytest.raises(InvalidRequestError):
        ensure(hook, **fields)
    assert fake.requests == []


def test_a_method_vertex_lacks_is_refused_by_name(hook: FineTuningHook, fake: FakeVertex) -> None:
    from airflow_provider_finetune.models import MethodRequest

    method = MethodRequest.model_construct(type="reinforcement", reinforcement=None)
    refused_request = CreateFineTuningJobRequest.model_construct(model=MODEL, training_file=TRAIN, method=method)
    with pytest.raises(InvalidRequestError, match="'reinforcement'") as refused:
        hook.create_job(refused_request)
    assert refused.value.field == "method.type"
    assert fake.requests == []


REFUSED_OPTIONS = [
    ({"adapter_size": 3}, "service_options.adapter_size", "adapter size"),
    ({"adapter_size": True}, "service_options.adapter_size", ""),
    ({"labels": {"Team": "ml"}}, "service_options.labels", "lowercase"),
    ({"labels": {"team": "Machine Learning"}}, "service_options.labels", "lowercase"),
    ({"labels": {"team": "x" * 64}}, "service_options.labels", "63"),
    ({"labels": {TASK_TAG_KEY: "mine"}}, "service_options.labels", "provider's own"),
    ({"labels": {f"k{i}": "v" for i in range(63)}}, "service_options.labels", "64"),
    ({"tuned_model_display_name": "x" * 129}, "service_options.tuned_model_display_name", "128"),
    ({"export_last_checkpoint_only": "yes"}, "service_options.export_last_checkpoint_only", ""),
    (
        {"evaluation_config": {"metrics": [{"exact_match_spec": {}}]}},
        "service_options.evaluation_config.output_config",
        "",
    ),
    (
        {"evaluation_config": {**EVALUATION, "output_config": {"gcs_destination": {"output_uri_prefix": "/tmp/x"}}}},
        "service_options.evaluation_config.output_config.gcs_destination.output_uri_prefix",
        "gs://",
    ),
    (
        {"evaluation_config": {**EVALUATION, "autorater_config": {"sampling_count": 33}}},
        "service_options.evaluation_config.autorater_config.sampling_count",
        "",
    ),
    ({"learning_rate": 1e-4}, "service_options.learning_rate", "learning_rate_multiplier"),
    ({"epochs": 3}, "service_options.epochs", "n_epochs"),
    ({"beta": 0.1}, "service_options.beta", "method.dpo.hyperparameters.beta"),
    ({"role_arn": "arn:aws:iam::1:role/x"}, "service_options.role_arn", "no such option"),
]


@pytest.mark.parametrize(
    ("options", "field", "says"), REFUSED_OPTIONS, ids=[f"{r[1]}-{i}" for i, r in enumerate(REFUSED_OPTIONS)]
)
def test_wrong_options_are_refused_naming_the_field_before_any_request(
    hook: FineTuningHook, fake: FakeVertex, options: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        hook.create_job(request(), service_options=options)
    assert refused.value.field == field
    assert says in str(refused.value)
    with pytest.raises(InvalidRequestError):
        ensure(hook, options=options)
    assert fake.requests == []


def test_labels_leave_room_for_the_providers_own_with_once_only_creation(
    hook: FineTuningHook, fake: FakeVertex
) -> None:
    labels = {f"k{i}": "v" for i in range(15)}
    hook.create_job(request(), service_options={"labels": labels})  # a bare create carries Vertex's 64
    with pytest.raises(InvalidRequestError, match=r"service_options\.labels: 15 keys given, at most 14") as refused:
        ensure(hook, options={"labels": labels})
    assert refused.value.field == "service_options.labels"
    assert fake.operations == ["CreateTuningJob"]


def test_what_vertex_lacks_is_refused_before_any_request(hook: FineTuningHook, fake: FakeVertex) -> None:
    job_id = f"{BASE}/tuningJobs/1"
    for call, capability in (
        (lambda: hook.pause_job(job_id), "pause"),
        (lambda: hook.resume_job(job_id), "resume"),
        (lambda: hook.list_events(job_id), "events"),
        (lambda: sync_call(hook, "list_checkpoint_permissions", "ckpt"), "checkpoint_permissions"),
        (lambda: hook.validate_grader({"type": "string_check"}), "graders"),
        (lambda: sync_call(hook, "create_upload", "a.jsonl", 10), "uploads"),
        (lambda: hook.find_job_by_tag(TAG), "job_metadata"),
        (lambda: hook.upload_file(b'{"contents": []}\n'), "files"),
        (lambda: hook.backend.create_prepared_job({}, job_id="x"), "client_job_id"),
    ):
        with pytest.raises(UnsupportedCapabilityError) as refused:
            call()
        assert refused.value.capability == capability
        assert "Vertex AI does not support" in str(refused.value)
    with pytest.raises(UnsupportedCapabilityError, match="gs:// URI"):
        hook.upload_file(b"{}\n")
    assert fake.requests == []
    with pytest.raises(InvalidRequestError, match="location europe-west4"):
        hook.get_job("projects/1/locations/europe-west4/tuningJobs/5")
    with pytest.raises(InvalidRequestError, match="resource name"):
        hook.get_job("projects/1/tuningJobs/5")
    assert hook.backend.file_reference == "gcs_uri"


# -- states ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(genai.JobState), ids=lambda s: s.value)
def test_every_state_of_googles_job_state_is_mapped(state: genai.JobState) -> None:
    """Google's own enum: a state it adds fails here until it is mapped."""
    assert state.value in VERTEX_STATES
    job = FineTuningJob.model_validate(job_from_vertex({"name": f"{BASE}/tuningJobs/1", "state": state.value}))
    assert job.status is VERTEX_STATES[state.value]
    assert job.status.is_known()
    assert job.model_extra is not None
    assert job.model_extra["vertex_state"] == state.value


EXPECTED_STATES = {
    "JOB_STATE_UNSPECIFIED": "queued",
    "JOB_STATE_QUEUED": "queued",
    "JOB_STATE_PENDING": "queued",
    "JOB_STATE_RUNNING": "running",
    "JOB_STATE_UPDATING": "running",
    "JOB_STATE_PAUSED": "paused",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_SUCCEEDED": "succeeded",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_EXPIRED": "failed",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "failed",
}


def test_the_decided_status_of_each_state() -> None:
    assert {state: status.value for state, status in VERTEX_STATES.items()} == EXPECTED_STATES
    assert set(EXPECTED_STATES) == {state.value for state in genai.JobState}
    terminal = {s for s, status in VERTEX_STATES.items() if status.is_terminal()}
    # Google's SDK ends a wait on these; a partial success ends it too (it runs no more).
    assert terminal == set(genai.JOB_STATES_ENDED_VERTEX) | {"JOB_STATE_PARTIALLY_SUCCEEDED"}


def test_a_state_google_adds_later_parses_and_is_not_terminal() -> None:
    job = FineTuningJob.model_validate(job_from_vertex({"name": f"{BASE}/tuningJobs/1", "state": "JOB_STATE_NEW"}))
    assert not job.status.is_known()
    assert not job.status.is_terminal()


def test_expired_and_partially_succeeded_jobs_fail_saying_why() -> None:
    expired = FineTuningJob.model_validate(job_from_vertex({"name": "x", "state": "JOB_STATE_EXPIRED"}))
    assert expired.error is not None
    assert "expired" in (expired.error.message or "")
    partial = {
        "name": "x",
        "state": "JOB_STATE_PARTIALLY_SUCCEEDED",
        "tunedModel": {"model": f"{BASE}/models/7@1", "endpoint": f"{BASE}/endpoints/8"},
    }
    job = FineTuningJob.model_validate(job_from_vertex(partial))
    assert job.status is FineTuningJobStatus.FAILED
    assert job.error is not None
    assert job.error.code == "PARTIALLY_SUCCEEDED"
    assert job.fine_tuned_model is None
    assert job.model_extra is not None
    assert job.model_extra["tuned_model"]["model"] == f"{BASE}/models/7@1"  # what it made stays readable


# -- the job, read back --------------------------------------------------------------------------------------------


def test_a_succeeded_job_reads_as_the_canonical_job(hook: FineTuningHook, fake: FakeVertex) -> None:
    made = hook.create_job(request(validation_file=VALID), service_options={"tuned_model_display_name": "support-v2"})
    fake.advance(ident(made.id), "JOB_STATE_SUCCEEDED")
    job = hook.get_job(made.id)
    record = fake.jobs[ident(made.id)]
    assert job.status is FineTuningJobStatus.SUCCEEDED
    assert job.fine_tuned_model == f"{BASE}/models/77@1"
    extra = job.model_extra or {}
    assert extra["tuned_model_endpoint"] == f"{BASE}/endpoints/88"
    assert extra["vertex_state"] == "JOB_STATE_SUCCEEDED"
    assert extra["tuning_data_stats"] == record["tuningDataStats"]
    assert extra["experiment"] == record["experiment"]
    assert extra["tuned_model_display_name"] == "support-v2"
    created = datetime.strptime(record["createTime"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    assert job.created_at == int(created.timestamp())
    assert job.finished_at is not None
    assert job.finished_at >= job.created_at
    assert extra["updated_at"] == job.finished_at
    assert extra["started_at"] <= job.finished_at
    assert fake.requests[-1].url == f"{ENDPOINT}/v1/{record['name']}"  # the job's own name: the project number


def test_a_failed_job_fails_with_googles_error_and_its_message(hook: FineTuningHook, fake: FakeVertex) -> None:
    made = hook.create_job(request())
    fake.advance(ident(made.id), "JOB_STATE_FAILED")
    job = hook.get_job(made.id)
    assert job.status is FineTuningJobStatus.FAILED
    assert job.error is not None
    assert (job.error.code, job.error.message) == (
        "INVALID_ARGUMENT",
        "Invalid training data: line 3 has no model turn.",
    )
    assert job.fine_tuned_model is None


def test_checkpoints_are_the_tuned_models_newest_first(hook: FineTuningHook, fake: FakeVertex) -> None:
    made = hook.create_job(request())
    assert list(hook.iter_checkpoints(made.id)) == []  # none before the job has a tuned model
    fake.advance(ident(made.id), "JOB_STATE_SUCCEEDED")
    checkpoints = list(hook.iter_checkpoints(made.id, limit=100))
    assert [c.step_number for c in checkpoints] == [20, 10]
    newest = checkpoints[0]
    assert newest.id == f"{made.id}/checkpoints/2"
    assert newest.fine_tuned_model_checkpoint == f"{BASE}/endpoints/82"
    assert newest.fine_tuning_job_id == made.id
    assert newest.metrics.step == 20
    assert (newest.model_extra or {})["epoch"] == 2
    assert (newest.model_extra or {})["checkpoint_id"] == "2"
    after = hook.call(hook.backend.checkpoints(made.id, newest.id, 100))
    assert [c.step_number for c in after.data] == [10]
    # Each checkpoint as Google's SDK types it.
    for item in fake.jobs[ident(made.id)]["tunedModel"]["checkpoints"]:
        typed = genai.TunedModelCheckpoint.model_validate(item)
        assert any(c.step_number == typed.step and c.id.endswith(f"/{typed.checkpoint_id}") for c in checkpoints)


def test_checkpoints_from_a_job_without_steps_keep_what_they_have() -> None:
    found = checkpoints_from_vertex({"name": "j", "tunedModel": {"checkpoints": [{"checkpointId": "9", "epoch": 1}]}})
    assert found == [
        {
            "id": "j/checkpoints/9",
            "object": "fine_tuning.job.checkpoint",
            "fine_tuning_job_id": "j",
            "metrics": {},
            "checkpoint_id": "9",
            "epoch": 1,
        }
    ]


def test_the_list_pages_by_its_token_newest_first(hook: FineTuningHook, fake: FakeVertex) -> None:
    made = [hook.create_job(request()) for _ in range(3)]
    page = hook.list_jobs(limit=2)
    assert [j.id for j in page.data] == [
        made[1].id,
        made[0].id,
    ]  # the fake lists oldest first; a page is put newest first
    assert page.has_more
    assert page.last_id == "2"
    assert [j.id for j in hook.iter_jobs(limit=2)] == [made[1].id, made[0].id, made[2].id]
    listed = [r for r, op in zip(fake.requests, fake.operations, strict=True) if op == "ListTuningJobs"]
    assert dict(listed[-1].url.params) == {"pageSize": "2", "pageToken": "2"}


def test_cancel_posts_the_custom_method(hook: FineTuningHook, fake: FakeVertex) -> None:
    made = hook.create_job(request())
    cancelled = hook.cancel_job(made.id)
    assert cancelled.status is FineTuningJobStatus.CANCELLING
    assert cancelled.id == made.id
    assert fake.requests[-1].url == f"{ENDPOINT}/v1/{made.id}:cancel"
    fake.advance(ident(made.id), "JOB_STATE_CANCELLED")
    job = hook.get_job(made.id)
    assert job.status is FineTuningJobStatus.CANCELLED
    assert job.error is not None
    assert job.error.code == "CANCELLED"
    with pytest.raises(ConflictError, match="cannot be cancelled"):  # an ended job: a conflict, as OpenAI's 409
        hook.cancel_job(made.id)


def test_a_bare_job_id_is_this_connections_project(hook: FineTuningHook, fake: FakeVertex) -> None:
    made = hook.create_job(request())
    assert hook.get_job(ident(made.id)).id == made.id
    assert fake.requests[-1].url == f"{ROOT}/tuningJobs/{ident(made.id)}"


def test_the_jobs_console_page(hook: FineTuningHook, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hook.job_url(f"{BASE}/tuningJobs/42") == (
        "https://console.cloud.google.com/vertex-ai/generative/language/locations/us-central1/tuning/tuningJob/42"
        f"?project={PROJECT_NUMBER}"
    )
    assert hook.job_url("42") == (
        "https://console.cloud.google.com/vertex-ai/generative/language/locations/us-central1/tuning/tuningJob/42"
        f"?project={PROJECT}"
    )
    emulated = VertexBackend(
        ConnectionSettings(base_url=base_url_for("http://127.0.0.1:8089/vertex", {"project": "p"}))
    )
    assert emulated.job_url("42") is None


# -- once-only creation ----------------------------------------------------------------------------------------------


def test_once_only_creation_tags_the_labels_and_a_retry_reattaches(hook: FineTuningHook, fake: FakeVertex) -> None:
    first, created = ensure(hook, options={"labels": {"team": "support"}})
    assert created
    (body,) = fake.bodies("CreateTuningJob")
    assert body["labels"][TASK_TAG_KEY] == TAG
    assert body["labels"][REQUEST_KEY].startswith("rq-")
    assert body["labels"]["team"] == "support"
    assert first.metadata == body["labels"]
    again, created = ensure(hook, options={"labels": {"team": "support"}})
    assert not created
    assert again.id == first.id
    assert fake.creates_made == 1
    listed = [r for r, op in zip(fake.requests, fake.operations, strict=True) if op == "ListTuningJobs"]
    assert listed[-1].url.params["filter"] == f'labels.{TASK_TAG_KEY}="{TAG}"'


def test_a_listed_job_is_adopted_only_when_its_own_labels_carry_the_tag(hook: FineTuningHook, fake: FakeVertex) -> None:
    theirs, _ = ensure(hook, tag="ti-someone-else")
    fake.ignore_filter = True  # the list answers every job: each is checked by its own labels
    ours, created = ensure(hook)
    assert created
    assert ours.id != theirs.id
    assert fake.creates_made == 2
    fake.jobs[ident(theirs.id)]["labels"][TASK_TAG_KEY] = TAG + "x"
    again, created = ensure(hook)
    assert not created
    assert again.id == ours.id


def test_a_lost_create_answer_is_found_by_the_label_filter(hook: FineTuningHook, fake: FakeVertex) -> None:
    def made_but_lost(request: httpx.Request) -> httpx.Response:
        fake._create_tuning_job(request, {})
        raise httpx.ReadTimeout("answer lost", request=request)

    fake.fault("CreateTuningJob", made_but_lost)
    job, created = ensure(hook)
    assert not created  # found, not made again
    assert fake.creates_made == 1
    assert job.id == f"{BASE}/tuningJobs/{next(iter(fake.jobs))}"
    assert fake.operations == ["ListTuningJobs", "CreateTuningJob", "ListTuningJobs"]


def test_a_changed_request_cancels_the_old_job_and_makes_a_new_one(hook: FineTuningHook, fake: FakeVertex) -> None:
    first, _ = ensure(hook)
    second, created = ensure(hook, validation_file=VALID)
    assert created
    assert second.id != first.id
    assert fake.jobs[ident(first.id)]["state"] == "JOB_STATE_CANCELLING"


def test_after_a_failed_job_a_retry_makes_a_new_one(hook: FineTuningHook, fake: FakeVertex) -> None:
    first, _ = ensure(hook)
    fake.advance(ident(first.id), "JOB_STATE_FAILED")
    second, created = ensure(hook)
    assert created
    assert second.id != first.id


def test_a_tag_vertex_would_not_take_as_a_label_rides_as_its_digest(hook: FineTuningHook, fake: FakeVertex) -> None:
    tag = "DAG retrain / task Fine_Tune / run manual__2026-11-16T00:00:00+00:00"
    first, _ = ensure(hook, tag=tag)
    (body,) = fake.bodies("CreateTuningJob")
    assert body["labels"][TASK_TAG_KEY] == label_value(tag)
    assert re.fullmatch(r"tag-[0-9a-f]{40}", label_value(tag))
    assert label_value(TAG) == TAG
    again, created = ensure(hook, tag=tag)
    assert not created
    assert again.id == first.id


def test_the_state_store_names_the_job_of_an_earlier_try(hook: FineTuningHook, fake: FakeVertex) -> None:
    state = FakeStateStore()
    first, _ = hook.ensure_job(request(), identity=JobIdentity(TAG), state=state)
    assert state.values["job_id"] == first.id
    again, created = hook.ensure_job(request(), identity=JobIdentity(TAG), state=state)
    assert not created
    assert again.id == first.id
    assert fake.operations[-1] == "GetTuningJob"


# -- errors ----------------------------------------------------------------------------------------------------------


def test_resource_exhausted_is_a_rate_limit_and_retried(hook: FineTuningHook, fake: FakeVertex) -> None:
    made = hook.create_job(request())
    exhausted = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/requests.")
    fake.fault("GetTuningJob", lambda r: exhausted, lambda r: exhausted)
    assert hook.get_job(made.id).id == made.id
    fake.fault("GetTuningJob", *[lambda r: exhausted] * 4)
    with pytest.raises(RateLimitError) as raised:
        hook.get_job(made.id)
    assert raised.value.code == "RESOURCE_EXHAUSTED"


def test_a_create_refused_for_a_quota_is_a_quota_refusal_waited_for_not_retried(
    hook: FineTuningHook, fake: FakeVertex
) -> None:
    from airflow_provider_finetune.exceptions import QuotaExceededError

    details = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"subject": "concurrent tuning jobs per region", "description": "limit 2"}],
        }
    ]
    exhausted = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for concurrent tuning jobs.", details)
    fake.fault("CreateTuningJob", lambda r: exhausted)
    with pytest.raises(QuotaExceededError, match="Quota exceeded") as raised:
        hook.create_job(request())
    assert raised.value.quota == "concurrent tuning jobs per region"
    assert fake.creates_made == 0
    assert fake.operations.count("CreateTuningJob") == 1  # the quota is waited for by the operator, not retried here


def test_a_bad_request_names_the_field_and_the_request(hook: FineTuningHook, fake: FakeVertex) -> None:
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "base_model", "description": "unsupported"}],
        },
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "MODEL_NOT_SUPPORTED", "domain": "x"},
        {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "req-123"},
    ]
    fake.fault(
        "CreateTuningJob",
        lambda r: google_error(400, "INVALID_ARGUMENT", "Base model gemini-0 is not supported.", details),
    )
    with pytest.raises(BadRequestError, match="Base model gemini-0 is not supported") as raised:
        hook.create_job(request())
    err = raised.value
    assert (err.code, err.param, err.error_type, err.request_id) == (
        "INVALID_ARGUMENT",
        "base_model",
        "MODEL_NOT_SUPPORTED",
        "req-123",
    )
    assert fake.creates_made == 0


@pytest.mark.parametrize(
    ("status_code", "status", "error"),
    [
        (404, "NOT_FOUND", NotFoundError),
        (403, "PERMISSION_DENIED", PermissionDeniedError),
        (401, "UNAUTHENTICATED", AuthenticationError),
        (409, "ALREADY_EXISTS", ConflictError),
        (400, "FAILED_PRECONDITION", BadRequestError),
    ],
)
def test_googles_statuses_pick_the_error(
    hook: FineTuningHook, fake: FakeVertex, status_code: int, status: str, error: type[Exception]
) -> None:
    fake.fault("GetTuningJob", *[lambda r: google_error(status_code, status, f"{status} happened")] * 4)
    with pytest.raises(error, match=f"{status} happened"):
        hook.get_job("4")


def test_an_unknown_job_is_not_found(hook: FineTuningHook, fake: FakeVertex) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        hook.get_job(f"{BASE}/tuningJobs/999")


def test_a_refused_token_is_an_authentication_error(monkeypatch: pytest.MonkeyPatch, fake: FakeVertex) -> None:
    wrong = connect_vertex(monkeypatch, password="ya29.not-the-right-token-000", conn_id="ft_wrong")
    with pytest.raises(AuthenticationError, match="invalid authentication credentials"):
        wrong.list_jobs(limit=1)
    ok, message = wrong.test_connection()
    assert not ok
    assert "401" in message


# -- chat completions: the evaluation operator's questions ----------------------------------------------------------


def test_a_tuned_endpoint_answers_a_chat_completion(hook: FineTuningHook, fake: FakeVertex) -> None:
    endpoint = f"{BASE}/endpoints/88"
    body = {
        "model": endpoint,
        "messages": [
            {"role": "system", "content": "Answer yes or no."},
            {"role": "user", "content": [{"type": "text", "text": "Is the sky blue?"}]},
            {"role": "assistant", "content": "yes"},
            {"role": "user", "content": "Is grass green?"},
        ],
        "temperature": 0,
        "max_completion_tokens": 200,
        "stop": "\n",
    }
    completion = hook.chat_completion(body)
    (sent,) = fake.bodies("GenerateContent")
    assert fake.requests[-1].url == f"{ENDPOINT}/v1/{endpoint}:generateContent"
    assert sent == {
        "contents": [
            {"role": "user", "parts": [{"text": "Is the sky blue?"}]},
            {"role": "model", "parts": [{"text": "yes"}]},
            {"role": "user", "parts": [{"text": "Is grass green?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Answer yes or no."}]},
        "generationConfig": {"temperature": 0, "maxOutputTokens": 200, "stopSequences": ["\n"]},
    }
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "yes"}
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"] == {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}


def test_the_evaluation_operators_scoring_runs_on_vertex(hook: FineTuningHook, fake: FakeVertex) -> None:
    from airflow_provider_finetune.operators.evaluate import read_examples, score_model

    examples = read_examples(
        "\n".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}], "expected": "yes"}) for i in range(3)
        ),
        needs_expected=True,
    )
    tuned = score_model(hook, f"{BASE}/endpoints/88", examples)
    base = score_model(hook, MODEL, examples)
    assert tuned.score == base.score == 1.0
    urls = [str(r.url) for r in fake.requests]
    assert urls[-1] == f"{ROOT}/publishers/google/models/{MODEL}:generateContent"
    assert urls[0] == f"{ENDPOINT}/v1/{BASE}/endpoints/88:generateContent"
    assert fake.bodies("GenerateContent")[0]["generationConfig"] == {"temperature": 0, "maxOutputTokens": 200}


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("gemini-2.5-flash", "/v1/projects/acme-ml/locations/us-central1/publishers/google/models/gemini-2.5-flash"),
        ("google/gemini-2.5-pro", "/v1/projects/acme-ml/locations/us-central1/publishers/google/models/gemini-2.5-pro"),
        ("publishers/meta/models/llama", "/v1/projects/acme-ml/locations/us-central1/publishers/meta/models/llama"),
        (f"{BASE}/models/77@1", f"/v1/{BASE}/models/77@1"),
    ],
)
def test_a_model_is_named_as_googles_sdk_names_it(
    hook: FineTuningHook, fake: FakeVertex, model: str, path: str
) -> None:
    hook.chat_completion({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert fake.requests[-1].url.path == f"{path}:generateContent"


def test_cut_and_blocked_answers_read_as_openai_says_them(hook: FineTuningHook, fake: FakeVertex) -> None:
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    fake.generated = answer("", "MAX_TOKENS")
    cut = hook.chat_completion(ask)["choices"][0]
    assert (cut["message"]["content"], cut["finish_reason"]) == (None, "length")
    fake.generated = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}
    blocked = hook.chat_completion(ask)["choices"][0]
    assert blocked["finish_reason"] == "content_filter"
    assert "SAFETY" in blocked["message"]["refusal"]
    fake.generated = answer("", "SAFETY")
    assert "SAFETY" in hook.chat_completion(ask)["choices"][0]["message"]["refusal"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json"}},
            "response_format",
        ),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        ({"model": MODEL, "messages": [{"role": "system", "content": "x"}]}, "messages"),
        ({"model": "../x", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_a_question_vertex_cannot_be_asked_is_refused_before_any_request(
    hook: FineTuningHook, fake: FakeVertex, body: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        hook.chat_completion(body)
    assert refused.value.field == field
    assert fake.requests == []


# -- authentication: Google credentials ----------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class StandInCredentials:
    """What ``GoogleBaseHook.get_credentials()`` returns, as google-auth's credentials behave."""

    def __init__(self, *, lifetime: timedelta = timedelta(hours=1), quota_project_id: str | None = None) -> None:
        self.token: str | None = None
        self.expiry: datetime | None = None
        self.lifetime = lifetime
        self.refreshes: list[int] = []
        self.quota_project_id = quota_project_id

    @property
    def valid(self) -> bool:
        return self.token is not None and (self.expiry is None or self.expiry > _utcnow())

    def refresh(self, request: Any) -> None:
        self.refreshes.append(threading.get_ident())
        self.token = TOKEN
        self.expiry = _utcnow() + self.lifetime  # google-auth keeps a naive UTC expiry


@pytest.fixture
def google_provider(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A stand-in for the Google provider's ``GoogleBaseHook``, handing out :class:`StandInCredentials`."""
    made: dict[str, Any] = {"connections": [], "credentials": StandInCredentials()}

    class GoogleBaseHook:
        def __init__(self, gcp_conn_id: str) -> None:
            made["connections"].append(gcp_conn_id)

        def get_credentials(self) -> Any:
            return made["credentials"]

    module = pytypes.ModuleType("airflow.providers.google.common.hooks.base_google")
    module.GoogleBaseHook = GoogleBaseHook  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "airflow.providers.google.common.hooks.base_google", module)
    return made


def test_google_credentials_make_the_bearer_token_and_refresh_before_expiry(
    monkeypatch: pytest.MonkeyPatch, fake: FakeVertex, google_provider: dict[str, Any]
) -> None:
    credentials = StandInCredentials(quota_project_id="acme-billing")
    google_provider["credentials"] = credentials
    hook = connect_vertex(monkeypatch, password=None, extra={"gcp_conn_id": "google_tuning"}, conn_id="ft_google")
    made = hook.create_job(request())
    hook.get_job(made.id)
    assert google_provider["connections"] == ["google_tuning"]  # read once
    assert len(credentials.refreshes) == 1  # fetched once, then reused while valid
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in fake.requests)
    assert fake.requests[-1].headers["x-goog-user-project"] == "acme-billing"
    credentials.expiry = _utcnow() + timedelta(seconds=60)  # about to expire: refreshed first
    hook.get_job(made.id)
    assert len(credentials.refreshes) == 2
    credentials.token, credentials.expiry = None, None
    hook.get_job(made.id)
    assert len(credentials.refreshes) == 3


def test_async_refreshes_run_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, fake: FakeVertex, google_provider: dict[str, Any]
) -> None:
    credentials = google_provider["credentials"]
    hook = connect_vertex(monkeypatch, password=None, conn_id="ft_google_async")

    async def lifecycle() -> tuple[int, FineTuningJob, FineTuningJob]:
        loop_thread = threading.get_ident()
        job, _ = await async_call(hook, "ensure_job", request(), identity=JobIdentity(TAG))
        read = await hook.aget_job(job.id)
        stopped = await hook.acancel_job(job.id)
        await close_shared_async_clients()
        return loop_thread, read, stopped

    loop_thread, read, stopped = asyncio.run(lifecycle())
    assert read.status is FineTuningJobStatus.QUEUED
    assert stopped.status is FineTuningJobStatus.CANCELLING
    assert credentials.refreshes
    assert loop_thread not in credentials.refreshes  # every refresh ran in a thread
    assert len(credentials.refreshes) == 1  # a fresh token is read on the loop, with no I/O


def test_the_token_is_read_on_the_loop_while_fresh() -> None:
    source = GoogleCredentials("google_x")
    stand_in = StandInCredentials()
    source._credentials = stand_in
    stand_in.refresh(None)
    seen: list[str] = []

    async def read() -> None:
        seen.append(await source.atoken())

    asyncio.run(read())
    assert seen == [TOKEN]
    assert len(stand_in.refreshes) == 1  # nothing refreshed: the token was fresh


def test_without_the_google_provider_one_line_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "airflow.providers.google.common.hooks.base_google", None)
    hook = connect_vertex(monkeypatch, password=None, conn_id="ft_no_google")
    with pytest.raises(InvalidRequestError) as refused:
        hook.get_job("1")
    assert str(refused.value).splitlines()[0] == MISSING_EXTRA
    assert "pip install 'airflow-provider-finetune[google]'" in MISSING_EXTRA


def test_a_failed_refresh_says_which_connection(
    monkeypatch: pytest.MonkeyPatch, google_provider: dict[str, Any]
) -> None:
    class Revoked(StandInCredentials):
        def refresh(self, request: Any) -> None:
            raise RuntimeError("invalid_grant: Token has been expired or revoked.")

    google_provider["credentials"] = Revoked()
    hook = connect_vertex(monkeypatch, password=None, conn_id="ft_revoked")
    with pytest.raises(FineTuningError, match="'google_cloud_default' could not refresh its access token"):
        hook.get_job("1")


# -- the job operator: the tuned model's endpoint as an XCom --------------------------------------------------------


def test_the_job_operator_tunes_on_vertex_and_pushes_the_endpoint(
    monkeypatch: pytest.MonkeyPatch, fake: FakeVertex
) -> None:
    from airflow_provider_finetune.operators.finetune import FineTuningJobOperator

    connect_vertex(monkeypatch, conn_id="ft_vertex_op")
    steps = ["JOB_STATE_RUNNING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]

    def step(job: dict[str, Any]) -> None:
        if steps and job["state"] not in ("JOB_STATE_SUCCEEDED",):
            fake.advance(ident(job["name"]), steps.pop(0))

    fake.before_get = step

    def operator(**kwargs: Any) -> FineTuningJobOperator:
        return FineTuningJobOperator(
            task_id="fine_tune",
            model=MODEL,
            training_file=TRAIN,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
            service_options={"adapter_size": 4, "labels": {"team": "support"}},
            finetune_conn_id="ft_vertex_op",
            poll_interval=0.01,
            **kwargs,
        )

    ctx = {"ti": FakeTI(), "task_state_store": FakeStateStore()}
    model = operator().execute(ctx)
    (job,) = fake.jobs.values()
    assert model == job["tunedModel"]["model"]
    xcoms = ctx["ti"].xcoms
    assert xcoms["job_id"] == job["name"]
    assert xcoms["status"] == "succeeded"
    assert xcoms["tuned_model_endpoint"] == job["tunedModel"]["endpoint"]
    assert [c["step_number"] for c in xcoms["checkpoints"]] == [20, 10]
    assert xcoms["checkpoints"][0]["fine_tuned_model_checkpoint"] == f"{BASE}/endpoints/82"
    assert job["labels"]["team"] == "support"
    assert operator().execute(ctx) == model  # a retry reattaches
    assert fake.creates_made == 1


def test_a_failed_job_fails_the_task_with_googles_message(monkeypatch: pytest.MonkeyPatch, fake: FakeVertex) -> None:
    from airflow_provider_finetune.operators.finetune import FineTuningJobOperator

    connect_vertex(monkeypatch, conn_id="ft_vertex_fail")
    fake.before_get = lambda job: fake.advance(ident(job["name"]), "JOB_STATE_FAILED")
    op = FineTuningJobOperator(
        task_id="fine_tune", model=MODEL, training_file=TRAIN, finetune_conn_id="ft_vertex_fail", poll_interval=0.01
    )
    with pytest.raises(
        FineTuningJobFailed, match=r"\[INVALID_ARGUMENT\] Invalid training data: line 3 has no model turn"
    ):
        op.execute({"ti": FakeTI(), "task_state_store": FakeStateStore()})


def test_the_deferred_wait_reads_vertex_through_the_shared_poller(
    monkeypatch: pytest.MonkeyPatch, fake: FakeVertex
) -> None:
    try:
        from airflow.sdk.exceptions import TaskDeferred
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import TaskDeferred  # type: ignore[no-redef]

    from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
    from tests.chaos.conftest import run_trigger

    connect_vertex(monkeypatch, conn_id="ft_vertex_deferred")
    steps = ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]

    def step(job: dict[str, Any]) -> None:
        if steps and job["state"] != "JOB_STATE_SUCCEEDED":
            fake.advance(ident(job["name"]), steps.pop(0))

    ti = FakeTI()
    context: dict[str, Any] = {"ti": ti, "task_state_store": FakeStateStore()}
    operator = FineTuningJobOperator(
        task_id="fine_tune",
        model=MODEL,
        training_file=TRAIN,
        finetune_conn_id="ft_vertex_deferred",
        deferrable=True,
        poll_interval=0.05,
    )
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    assert ti.xcoms["job_id"] == fake.jobs[next(iter(fake.jobs))]["name"]  # pushed before the wait
    fake.before_get = step

    (event,) = run_trigger(deferred.value.trigger)
    assert event["status"] == "succeeded"
    model = getattr(operator, deferred.value.method_name)(context, event, **(deferred.value.kwargs or {}))
    assert model == f"{BASE}/models/77@1"
    assert ti.xcoms["tuned_model_endpoint"] == f"{BASE}/endpoints/88"
    assert "ListTuningJobs" in fake.operations  # the poller's one list per round
