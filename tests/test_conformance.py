"""Self-tests of the spec-driven request/response validator in tests/conformance.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests import conformance
from tests.conformance import load_spec, operation_ids, validate_request, validate_response

BASE = "https://api.openai.com/v1"
AUTH = {"Authorization": "Bearer sk-test-123"}
CHECKPOINT = "ft:gpt-4o-mini:org:sfx:abc"
CHECKPOINT_ENCODED = "ft%3Agpt-4o-mini%3Aorg%3Asfx%3Aabc"
STRING_CHECK_GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}


def get(path: str, **kwargs: Any) -> httpx.Request:
    return httpx.Request("GET", BASE + path, headers=kwargs.pop("headers", AUTH), **kwargs)


def post(path: str, **kwargs: Any) -> httpx.Request:
    return httpx.Request("POST", BASE + path, headers=kwargs.pop("headers", AUTH), **kwargs)


def delete(path: str, **kwargs: Any) -> httpx.Request:
    return httpx.Request("DELETE", BASE + path, headers=kwargs.pop("headers", AUTH), **kwargs)


def job_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini-2024-07-18",
        "training_file": "file-abc123",
        "validation_file": None,
        "suffix": None,
        "seed": 42,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 1.0}},
        },
        "metadata": {"team": "ml"},
    }
    body.update(overrides)
    return body


def create_file(data: dict[str, str] | None = None, **kwargs: Any) -> httpx.Request:
    form = {"purpose": "fine-tune"} if data is None else data
    files = kwargs.pop("files", {"file": ("train.jsonl", b'{"messages": []}\n')})
    return post("/files", files=files, data=form, **kwargs)


# One valid request per operation of the spec.
VALID: dict[str, Callable[[], httpx.Request]] = {
    "listFiles": lambda: get("/files", params={"purpose": "fine-tune", "limit": 100, "order": "asc", "after": "f-1"}),
    "createFile": lambda: create_file(
        {"purpose": "fine-tune", "expires_after[anchor]": "created_at", "expires_after[seconds]": "2592000"}
    ),
    "deleteFile": lambda: delete("/files/file-abc123"),
    "retrieveFile": lambda: get("/files/file-abc123"),
    "downloadFile": lambda: get("/files/file-abc123/content"),
    "runGrader": lambda: post(
        "/fine_tuning/alpha/graders/run",
        json={"grader": STRING_CHECK_GRADER, "item": {"label": "yes"}, "model_sample": "yes"},
    ),
    "validateGrader": lambda: post("/fine_tuning/alpha/graders/validate", json={"grader": STRING_CHECK_GRADER}),
    "listFineTuningCheckpointPermissions": lambda: get(
        f"/fine_tuning/checkpoints/{CHECKPOINT}/permissions",
        params={"project_id": "proj_1", "after": "cp_1", "limit": 10, "order": "ascending"},
    ),
    "createFineTuningCheckpointPermission": lambda: post(
        f"/fine_tuning/checkpoints/{CHECKPOINT_ENCODED}/permissions", json={"project_ids": ["proj_1"]}
    ),
    "deleteFineTuningCheckpointPermission": lambda: delete(
        f"/fine_tuning/checkpoints/{CHECKPOINT}/permissions/cp_zc4Q7MP6XxulcVzj4MZdwsAB"
    ),
    "createFineTuningJob": lambda: post("/fine_tuning/jobs", json=job_body()),
    "listPaginatedFineTuningJobs": lambda: get(
        "/fine_tuning/jobs",
        params={"after": "ftjob-1", "limit": 5, "metadata[team]": "ml", "metadata[env]": "ci"},
    ),
    "retrieveFineTuningJob": lambda: get("/fine_tuning/jobs/ftjob-abc123"),
    "cancelFineTuningJob": lambda: post("/fine_tuning/jobs/ftjob-abc123/cancel"),
    "listFineTuningJobCheckpoints": lambda: get(
        "/fine_tuning/jobs/ftjob-abc123/checkpoints", params={"after": "ftckpt_1", "limit": 10}
    ),
    "listFineTuningEvents": lambda: get("/fine_tuning/jobs/ftjob-abc123/events", params={"limit": 20}),
    "pauseFineTuningJob": lambda: post("/fine_tuning/jobs/ftjob-abc123/pause"),
    "resumeFineTuningJob": lambda: post("/fine_tuning/jobs/ftjob-abc123/resume"),
    "createUpload": lambda: post(
        "/uploads",
        json={
            "filename": "train.jsonl",
            "purpose": "fine-tune",
            "bytes": 2147483648,
            "mime_type": "text/jsonl",
            "expires_after": {"anchor": "created_at", "seconds": 3600},
        },
    ),
    "cancelUpload": lambda: post("/uploads/upload_abc123/cancel"),
    "completeUpload": lambda: post(
        "/uploads/upload_abc123/complete", json={"part_ids": ["part_def456", "part_ghi789"], "md5": "0" * 32}
    ),
    "addUploadPart": lambda: post("/uploads/upload_abc123/parts", files={"data": ("part", b"\x00\xffchunk")}),
}


def test_every_spec_operation_has_a_valid_example() -> None:
    spec_ids = operation_ids()
    assert spec_ids, "the spec declares no operations"
    uncovered = sorted(set(spec_ids) - set(VALID))
    stale = sorted(set(VALID) - set(spec_ids))
    assert not uncovered, f"operations in the spec without a valid example in VALID: {uncovered}"
    assert not stale, f"examples for operations the spec no longer declares: {stale}"


@pytest.mark.parametrize("operation_id", operation_ids())
def test_valid_request_is_accepted(operation_id: str) -> None:
    if operation_id not in VALID:
        pytest.fail(f"new operation {operation_id!r} in the spec has no valid example in VALID")
    assert validate_request(VALID[operation_id]()) == operation_id


def test_spec_operation_ids_come_from_the_document() -> None:
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    from_document = [
        op["operationId"] for item in load_spec()["paths"].values() for method, op in item.items() if method in methods
    ]
    assert sorted(from_document) == sorted(operation_ids())


# --------------------------------------------------------------------------------------------------
# Accepted variants


@pytest.mark.parametrize(
    ("request_", "operation_id"),
    [
        pytest.param(
            get(f"/fine_tuning/checkpoints/{CHECKPOINT}/permissions"),
            "listFineTuningCheckpointPermissions",
            id="checkpoint-raw-colons",
        ),
        pytest.param(
            get(f"/fine_tuning/checkpoints/{CHECKPOINT_ENCODED}/permissions"),
            "listFineTuningCheckpointPermissions",
            id="checkpoint-percent-encoded",
        ),
        pytest.param(
            delete(f"/fine_tuning/checkpoints/{CHECKPOINT_ENCODED}/permissions/cp_1"),
            "deleteFineTuningCheckpointPermission",
            id="delete-permission-encoded",
        ),
        pytest.param(
            post("/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": "file-1"}),
            "createFineTuningJob",
            id="minimal-job",
        ),
        pytest.param(
            post(
                "/fine_tuning/jobs",
                json=job_body(integrations=None, seed=None, metadata=None, suffix="my-model"),
            ),
            "createFineTuningJob",
            id="nullable-fields-null",
        ),
        pytest.param(
            post(
                "/fine_tuning/jobs",
                json=job_body(
                    hyperparameters={"n_epochs": "auto", "batch_size": 8, "learning_rate_multiplier": 0.5},
                    integrations=[{"type": "wandb", "wandb": {"project": "p", "name": None, "tags": ["a"]}}],
                ),
            ),
            "createFineTuningJob",
            id="deprecated-hyperparameters-and-wandb",
        ),
        pytest.param(
            post(
                "/fine_tuning/jobs",
                json=job_body(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 2}}}),
            ),
            "createFineTuningJob",
            id="dpo-method",
        ),
        pytest.param(
            post(
                "/fine_tuning/jobs",
                json=job_body(
                    method={
                        "type": "reinforcement",
                        "reinforcement": {
                            "grader": STRING_CHECK_GRADER,
                            "hyperparameters": {"reasoning_effort": "low", "compute_multiplier": 1.0},
                        },
                    }
                ),
            ),
            "createFineTuningJob",
            id="reinforcement-method",
        ),
        pytest.param(
            post(
                "/fine_tuning/jobs",
                content=json.dumps(job_body()).encode(),
                headers={**AUTH, "Content-Type": "application/json; charset=utf-8"},
            ),
            "createFineTuningJob",
            id="json-with-charset",
        ),
        pytest.param(
            httpx.Request("GET", BASE + "/fine_tuning/jobs/ftjob-1", headers={"api-key": "azure-key"}),
            "retrieveFineTuningJob",
            id="azure-api-key",
        ),
        pytest.param(create_file(), "createFile", id="file-without-expiry"),
        pytest.param(
            post(
                "/uploads/upload_1/parts",
                files={"data": (None, "aHR0cHM6Ly9hcGkub3BlbmFpLmNvbS92MS91cGxvYWRz")},
            ),
            "addUploadPart",
            id="part-as-plain-field-like-the-curl-example",
        ),
        pytest.param(get("/fine_tuning/jobs"), "listPaginatedFineTuningJobs", id="no-query"),
    ],
)
def test_accepted_variants(request_: httpx.Request, operation_id: str) -> None:
    assert validate_request(request_) == operation_id


def test_other_base_path_and_extra_query_params() -> None:
    azure = httpx.Request(
        "POST",
        "https://res.openai.azure.com/openai/fine_tuning/jobs/ftjob-1/cancel",
        params={"api-version": "2024-10-21"},
        headers={"api-key": "k"},
    )
    assert validate_request(azure, base_path="/openai", extra_query_params={"api-version"}) == "cancelFineTuningJob"
    assert validate_request(azure, base_path="/openai") == "cancelFineTuningJob"  # api-key: Azure style
    entra = httpx.Request(
        "POST",
        "https://res.openai.azure.com/openai/fine_tuning/jobs/ftjob-1/cancel",
        params={"api-version": "2024-10-21"},
        headers=AUTH,
    )
    with pytest.raises(AssertionError, match="'api-version' is not declared"):
        validate_request(entra, base_path="/openai")
    accepted = validate_request(entra, base_path="/openai", extra_query_params=["api-version"])
    assert accepted == "cancelFineTuningJob"
    empty_version = httpx.Request(
        "GET", BASE + "/fine_tuning/jobs", params={"api-version": ""}, headers={"api-key": "k"}
    )
    with pytest.raises(AssertionError, match="'api-version' is empty"):
        validate_request(empty_version)
    with pytest.raises(AssertionError, match="'api_version' is not declared"):
        validate_request(
            httpx.Request("GET", BASE + "/fine_tuning/jobs", params={"api_version": "1"}, headers={"api-key": "k"})
        )
    with pytest.raises(AssertionError, match="not under the base path"):
        validate_request(azure)
    bare = httpx.Request("GET", "http://127.0.0.1:8089/files", headers=AUTH)
    assert validate_request(bare, base_path="") == "listFiles"
    assert validate_request(bare, base_path="/") == "listFiles"


def test_spec_directory_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv(conformance.SPEC_DIR_ENV, str(tmp_path))
    assert conformance.spec_path() == tmp_path.resolve() / conformance.SPEC_FILENAME
    monkeypatch.delenv(conformance.SPEC_DIR_ENV)
    assert conformance.spec_path().is_file()


# --------------------------------------------------------------------------------------------------
# Refused requests


def _json_post(path: str, body: Any) -> httpx.Request:
    return post(path, json=body)


REFUSED: list[Any] = [
    # operation lookup
    pytest.param(get("/fine_tuning/job"), "no operation in the spec matches", id="unknown-path"),
    pytest.param(get("/fine_tuning/jobs/ftjob-1/logs"), "no operation in the spec matches", id="unknown-subpath"),
    pytest.param(
        httpx.Request("GET", "https://api.openai.com/files", headers=AUTH),
        "not under the base path",
        id="no-base",
    ),
    pytest.param(get("/fine_tuning/jobs/"), "path parameter|no operation", id="trailing-slash"),
    pytest.param(delete("/fine_tuning/jobs/ftjob-1"), r"method DELETE is not declared", id="wrong-method-delete"),
    pytest.param(get("/fine_tuning/jobs/ftjob-1/cancel"), r"method GET is not declared", id="wrong-method-get"),
    pytest.param(httpx.Request("PUT", BASE + "/files", headers=AUTH), r"declared: GET, POST", id="wrong-method-put"),
    pytest.param(post("/fine_tuning/jobs//cancel"), "'fine_tuning_job_id' is empty", id="empty-path-param"),
    pytest.param(post("/fine_tuning/jobs/ftjob%2F1/cancel"), "contains '/'", id="encoded-slash-in-param"),
    # query
    pytest.param(get("/fine_tuning/jobs", params={"order": "asc"}), "'order' is not declared", id="undeclared-order"),
    pytest.param(
        get("/fine_tuning/jobs/ftjob-1", params={"expand": "events"}),
        r"'expand' is not declared .*declared: none",
        id="undeclared-on-paramless",
    ),
    pytest.param(get("/files", params={"order": "ascending"}), "is not one of", id="bad-order-enum-files"),
    pytest.param(
        get(f"/fine_tuning/checkpoints/{CHECKPOINT}/permissions", params={"order": "asc"}),
        "is not one of",
        id="bad-order-enum-permissions",
    ),
    pytest.param(get("/fine_tuning/jobs", params={"limit": "ten"}), "is not of type 'integer'", id="limit-word"),
    pytest.param(
        get("/fine_tuning/jobs/ftjob-1/events", params={"limit": "1.5"}),
        "is not of type 'integer'",
        id="limit-float",
    ),
    pytest.param(get("/fine_tuning/jobs", params={"after": None}), "'after' is empty", id="after-none"),
    pytest.param(get("/files", params={"limit": ["1", "2"]}), "'limit' is repeated", id="repeated-param"),
    pytest.param(get("/fine_tuning/jobs", params={"metadata": "team"}), "deepObject parameter", id="metadata-not-deep"),
    pytest.param(
        get("/fine_tuning/jobs", params={"metadata[a][b]": "x"}), "deepObject parameter", id="metadata-nested"
    ),
    pytest.param(get("/files", params={"purpose[x]": "y"}), "is not a deepObject parameter", id="brackets-on-simple"),
    # JSON bodies
    pytest.param(
        _json_post("/uploads/upload_1/complete", {"part_ids": ["p1"], "parts": ["p2"]}),
        r"Additional properties are not allowed \('parts' was unexpected\)",
        id="complete-upload-unknown-field",
    ),
    pytest.param(
        _json_post(
            "/uploads",
            {"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 1, "mime_type": "text/jsonl", "size": 1},
        ),
        "'size' was unexpected",
        id="create-upload-unknown-field",
    ),
    pytest.param(
        _json_post(f"/fine_tuning/checkpoints/{CHECKPOINT}/permissions", {"project_ids": "proj_1"}),
        "is not of type 'array'",
        id="permission-project-ids-not-array",
    ),
    pytest.param(
        _json_post("/fine_tuning/jobs", {"model": "gpt-4o-mini"}),
        "'training_file' is a required property",
        id="job-missing-training-file",
    ),
    pytest.param(
        _json_post("/fine_tuning/jobs", job_body(seed="42")),
        r"\$\.seed: '42' is not of type",
        id="seed-string",
    ),
    pytest.param(
        _json_post(
            "/fine_tuning/jobs",
            job_body(method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}),
        ),
        r"n_epochs: 0 is not valid under any of the given schemas "
        r"\(closest: .*0 is less than the minimum of 1\)",
        id="method-n-epochs-0",
    ),
    pytest.param(
        _json_post("/fine_tuning/jobs", job_body(hyperparameters={"n_epochs": 0})),
        r"\$\.hyperparameters\.n_epochs",
        id="deprecated-n-epochs-0",
    ),
    pytest.param(
        _json_post(
            "/fine_tuning/jobs",
            job_body(
                method={
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"learning_rate_multiplier": 0}},
                }
            ),
        ),
        "learning_rate_multiplier",
        id="learning-rate-0-exclusive-minimum",
    ),
    pytest.param(
        _json_post("/fine_tuning/jobs", job_body(method={"type": "lora"})),
        "'lora' is not one of",
        id="method-type",
    ),
    pytest.param(_json_post("/fine_tuning/jobs", job_body(suffix="x" * 65)), "is too long", id="suffix-too-long"),
    pytest.param(
        _json_post("/fine_tuning/jobs", job_body(metadata={"k": 1})), r"\$\.metadata", id="metadata-value-int"
    ),
    pytest.param(
        _json_post("/fine_tuning/alpha/graders/validate", {"grader": {"type": "string_check", "name": "x"}}),
        r"\$\.grader",
        id="grader-incomplete",
    ),
    pytest.param(
        post("/fine_tuning/jobs", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}),
        "not valid JSON",
        id="invalid-json",
    ),
    pytest.param(
        post(
            "/fine_tuning/jobs",
            content=b'{"model": "a", "training_file": "f", "model": "b"}',
            headers={**AUTH, "Content-Type": "application/json"},
        ),
        "duplicate keys",
        id="duplicate-json-keys",
    ),
    pytest.param(post("/fine_tuning/jobs"), "required but empty", id="missing-body"),
    pytest.param(
        post("/fine_tuning/jobs", content=json.dumps(job_body()).encode(), headers=AUTH),
        "without a Content-Type",
        id="json-without-content-type",
    ),
    pytest.param(
        post(
            "/fine_tuning/jobs",
            content=json.dumps(job_body()).encode(),
            headers={**AUTH, "Content-Type": "text/plain"},
        ),
        "does not match the declared media types",
        id="json-as-text-plain",
    ),
    pytest.param(
        post("/files", json={"purpose": "fine-tune", "file": "abc"}),
        "does not match the declared media types: multipart/form-data",
        id="create-file-as-json",
    ),
    # multipart bodies
    pytest.param(create_file({}), "'purpose' is a required property", id="multipart-without-purpose"),
    pytest.param(
        post("/files", files={"purpose": (None, "fine-tune")}),
        "'file' is a required property",
        id="multipart-without-file",
    ),
    pytest.param(
        post("/files", data={"purpose": "fine-tune", "file": "abc"}),
        "'application/x-www-form-urlencoded' does not match the declared media types: multipart/form-data",
        id="urlencoded-instead-of-multipart",
    ),
    pytest.param(create_file({"purpose": "fine_tune"}), "'fine_tune' is not one of", id="multipart-bad-purpose"),
    pytest.param(
        create_file({"purpose": "fine-tune", "filename": "x.jsonl"}),
        "'filename' was unexpected",
        id="multipart-unknown-field",
    ),
    pytest.param(
        create_file({"purpose": "fine-tune", "expires_after[anchor]": "created_at"}),
        "'seconds' is a required property",
        id="multipart-expiry-without-seconds",
    ),
    pytest.param(
        create_file({"purpose": "fine-tune", "expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}),
        "60 is less than the minimum of 3600",
        id="multipart-expiry-too-short",
    ),
    pytest.param(
        create_file({"purpose": "fine-tune", "expires_after[anchor]": "created_at", "expires_after[seconds]": "a day"}),
        "'a day' is not of type 'integer'",
        id="multipart-expiry-not-integer",
    ),
    pytest.param(
        create_file({"purpose": "fine-tune", "expires_after": '{"anchor": "created_at", "seconds": 3600}'}),
        r"\$\.expires_after: .* is not of type 'object'",
        id="multipart-expiry-as-json-string",
    ),
    pytest.param(
        post("/uploads/upload_1/parts", files={"chunk": ("part", b"abc")}),
        "'data' is a required property",
        id="upload-part-without-data",
    ),
    pytest.param(
        post("/files", content=b"purpose=fine-tune", headers={**AUTH, "Content-Type": "multipart/form-data"}),
        "no boundary",
        id="multipart-without-boundary",
    ),
    # bodies on body-less operations
    pytest.param(post("/fine_tuning/jobs/ftjob-1/cancel", json={}), "takes no request body", id="body-on-cancel"),
    pytest.param(
        httpx.Request("GET", BASE + "/fine_tuning/jobs", headers=AUTH, content=b"x"),
        "takes no request body",
        id="body-on-get",
    ),
    # credentials
    pytest.param(get("/fine_tuning/jobs", headers={}), "no credentials", id="missing-auth"),
    pytest.param(
        get("/fine_tuning/jobs", headers={"Authorization": "Bearer "}),
        "no usable bearer token",
        id="empty-bearer",
    ),
    pytest.param(
        get("/fine_tuning/jobs", headers={"Authorization": "Bearer None"}),
        "no usable bearer token",
        id="bearer-none",
    ),
    pytest.param(
        get("/fine_tuning/jobs", headers={"Authorization": "Basic dXNlcjpwYXNz"}),
        "Bearer scheme",
        id="basic-auth",
    ),
    pytest.param(get("/fine_tuning/jobs", headers={"api-key": ""}), "no usable key", id="empty-api-key"),
]


@pytest.mark.parametrize(("request_", "message"), REFUSED)
def test_refused(request_: httpx.Request, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        validate_request(request_)


def test_all_problems_are_reported_together() -> None:
    request = httpx.Request("POST", BASE + "/uploads/u1/complete", params={"x": "1"}, json={"md5": "a", "y": 1})
    with pytest.raises(AssertionError) as info:
        validate_request(request)
    message = str(info.value)
    assert "completeUpload" in message
    for fragment in ("'x' is not declared", "no credentials", "'part_ids' is a required property", "'y'"):
        assert fragment in message


# --------------------------------------------------------------------------------------------------
# Responses


def job(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "object": "fine_tuning.job",
        "id": "ftjob-abc123",
        "model": "gpt-4o-mini-2024-07-18",
        "created_at": 1721764800,
        "finished_at": None,
        "fine_tuned_model": None,
        "organization_id": "org-123",
        "result_files": [],
        "status": "running",
        "validation_file": None,
        "training_file": "file-abc123",
        "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0},
        "trained_tokens": None,
        "error": None,
        "seed": 42,
        "estimated_finish": None,
        "integrations": [],
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        "metadata": None,
    }
    payload.update(overrides)
    return payload


def test_valid_job_response() -> None:
    validate_response("retrieveFineTuningJob", 200, job())
    validate_response("createFineTuningJob", 201, job(status="validating_files"))  # Azure answers 201


def test_paused_status_is_accepted_by_default_only() -> None:
    validate_response("pauseFineTuningJob", 200, job(status="paused"))
    validate_response("retrieveFineTuningJob", 200, job(status="pausing"))
    listing = {"object": "list", "data": [job(status="paused")], "has_more": False}
    validate_response("listPaginatedFineTuningJobs", 200, listing)
    with pytest.raises(AssertionError, match="'paused' is not one of"):
        validate_response("pauseFineTuningJob", 200, job(status="paused"), allow_extra_statuses=False)
    with pytest.raises(AssertionError, match="'exploded' is not one of"):
        validate_response("retrieveFineTuningJob", 200, job(status="exploded"))


def test_job_missing_id_is_refused() -> None:
    payload = job()
    del payload["id"]
    with pytest.raises(AssertionError, match="'id' is a required property"):
        validate_response("retrieveFineTuningJob", 200, payload)


def test_other_responses() -> None:
    validate_response("downloadFile", 200, b'{"messages": []}\n')
    upload = {
        "id": "upload_abc123",
        "object": "upload",
        "bytes": 10,
        "created_at": 1,
        "expires_at": 2,
        "filename": "a.jsonl",
        "purpose": "fine-tune",
        "status": "pending",
        "file": None,
    }
    validate_response("createUpload", 200, upload)
    validate_response("createFineTuningJob", 429, {"error": {"message": "slow down", "type": "rate_limit"}})
    with pytest.raises(AssertionError, match="'message' is a required property"):
        validate_response("createFineTuningJob", 400, {"error": {"code": "invalid"}})
    with pytest.raises(AssertionError, match="unknown operationId"):
        validate_response("createFineTune", 200, {})
    with pytest.raises(AssertionError, match="no response for status 302"):
        validate_response("retrieveFineTuningJob", 302, None)
