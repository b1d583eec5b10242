"""The emulator's Azure OpenAI dialects over real HTTP: the authoring surface (``/openai``, 2024-10-21 and
2025-04-01-preview) and v1 (``/openai/v1``), every answer checked against ../shared/azure-spec."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator import EmulatorServer, ManualClock
from airflow_provider_finetune.emulator.__main__ import build_parser, config_from_args
from tests.emulator.azure_spec import AzureChecker, validate_azure_error
from tests.emulator.conftest import API_KEY, AUTH, jsonl, training_lines

STABLE, PREVIEW = "2024-10-21", "2025-04-01-preview"
AUTHORING = (STABLE, PREVIEW)
BAD_KEY = "sk-bad-key-9z7"
EXPIRES = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "1209600"}


@pytest.fixture
def azure_checker() -> AzureChecker:
    return AzureChecker()


@pytest.fixture
def authoring(server: EmulatorServer, azure_checker: AzureChecker) -> Callable[..., httpx.Client]:
    """Clients of the authoring surface for an api-version, authenticated by the api-key header."""
    clients: list[httpx.Client] = []

    def make(version: str | None, headers: dict[str, str] | None = None) -> httpx.Client:
        client = httpx.Client(
            base_url=server.url + "/openai",
            headers={"api-key": API_KEY} if headers is None else headers,
            params={"api-version": version} if version is not None else None,
            event_hooks={"response": [azure_checker]},
            timeout=10,
        )
        clients.append(client)
        return client

    yield make  # type: ignore[misc]
    for client in clients:
        client.close()


@pytest.fixture
def v1(server: EmulatorServer, azure_checker: AzureChecker) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url + "/openai/v1", headers=AUTH, event_hooks={"response": [azure_checker]}, timeout=10
    ) as client:
        yield client


def authoring_upload(client: httpx.Client, lines: list[Any] | None = None, name: str = "train.jsonl") -> str:
    response = client.post(
        "/files", files={"file": (name, jsonl(lines or training_lines()))}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 201, response.text
    file_id = str(response.json()["id"])
    assert f"/openai/files/{file_id}?api-version=" in response.headers["location"]
    return file_id


def authoring_create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "gpt-4o-mini")
    response = client.post("/fine_tuning/jobs", json=body)
    assert response.status_code == 201, response.text
    job = dict(response.json())
    assert response.headers["location"].startswith(f"{client.base_url.scheme}://")
    assert f"/openai/fine_tuning/jobs/{job['id']}?api-version=" in response.headers["location"]
    return job


def v1_upload(client: httpx.Client, name: str = "train.jsonl") -> str:
    response = client.post(
        "/files", files={"file": (name, jsonl(training_lines()))}, data={"purpose": "fine-tune", **EXPIRES}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def azure_error(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json()["error"])


def add_warning(server: EmulatorServer, job_id: str, clock: ManualClock) -> None:
    """Give a job an event of level ``warn`` (the trainer makes none; real services do, e.g. on data quality)."""
    job = server.emulator.jobs.get(job_id)
    job.record["events"].append([clock(), "warn", "Some training examples were truncated"])


# ---------------------------------------------------------------------------------------------------------
# Authoring: whole lifecycle
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", AUTHORING)
def test_authoring_job_lifecycle(
    version: str,
    authoring: Callable[..., httpx.Client],
    server: EmulatorServer,
    clock: ManualClock,
    azure_checker: AzureChecker,
) -> None:
    client = authoring(version)
    file_id = authoring_upload(client)
    listed = client.get("/files").json()
    assert [item["id"] for item in listed["data"]] == [file_id]
    assert "has_more" not in listed
    assert client.get(f"/files/{file_id}").json()["status"] == "processed"
    assert client.get(f"/files/{file_id}/content").content == jsonl(training_lines())

    job = authoring_create(client, training_file=file_id, suffix="azure-lifecycle", hyperparameters={"n_epochs": 2})
    assert job["status"] == "pending"
    assert job["organisation_id"] == "org-emulator"
    assert "organization_id" not in job
    assert "metadata" not in job
    assert "user_provided_suffix" not in job
    assert job["suffix"] == "azure-lifecycle"
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": -1, "learning_rate_multiplier": -1}
    assert ("method" in job) is (version == PREVIEW)
    statuses = [job["status"]]
    for seconds in (4, 5, 1000):
        clock.advance(seconds)
        statuses.append(client.get(f"/fine_tuning/jobs/{job['id']}").json()["status"])
    assert statuses == ["pending", "pending", "running", "succeeded"]
    done = client.get(f"/fine_tuning/jobs/{job['id']}").json()
    assert done["fine_tuned_model"].startswith("ft:gpt-4o-mini")
    assert done["result_files"]
    assert done["hyperparameters"]["batch_size"] > 0

    add_warning(server, job["id"], clock)
    events = client.get(f"/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()
    levels = {event["level"] for event in events["data"]}
    assert "warning" in levels
    assert "warn" not in levels
    checkpoints = client.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert checkpoints["data"]
    assert set(checkpoints) == {"object", "data", "has_more"}
    assert [item["id"] for item in client.get("/fine_tuning/jobs").json()["data"]] == [job["id"]]

    # Cancel, then delete (204); a job that is still going cannot be deleted.
    other = authoring_create(client, training_file=file_id)
    refused = client.delete(f"/fine_tuning/jobs/{other['id']}")
    assert refused.status_code == 409
    assert azure_error(refused)["code"] == "unexpectedEntityState"
    cancelled = client.post(f"/fine_tuning/jobs/{other['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"/fine_tuning/jobs/{other['id']}/cancel")
    assert again.status_code == 409
    assert azure_error(again)["code"] == "unexpectedEntityState"
    deleted = client.delete(f"/fine_tuning/jobs/{other['id']}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    gone = client.get(f"/fine_tuning/jobs/{other['id']}")
    assert gone.status_code == 404
    assert azure_error(gone)["code"] == "notFound"
    assert [item["id"] for item in client.get("/fine_tuning/jobs").json()["data"]] == [job["id"]]

    deleted_file = client.delete(f"/files/{file_id}")
    assert deleted_file.json() == {"id": file_id, "object": "file", "deleted": True}
    operations = {operation for _, operation, _ in azure_checker.checked}
    assert {"FineTuning_Create", "FineTuning_Get", "FineTuning_GetEvents", "FineTuning_Delete"} <= operations
    assert {"Files_Upload", "Files_List", "Files_GetContent", "FineTuning_GetCheckpoints"} <= operations


def test_authoring_pause_and_resume_exist_only_in_the_preview(
    authoring: Callable[..., httpx.Client], clock: ManualClock
) -> None:
    preview, stable = authoring(PREVIEW), authoring(STABLE)
    job = authoring_create(preview, training_file=authoring_upload(preview))
    clock.advance(10)
    assert preview.get(f"/fine_tuning/jobs/{job['id']}").json()["status"] == "running"

    missing = stable.post(f"/fine_tuning/jobs/{job['id']}/pause")
    assert missing.status_code == 404
    assert azure_error(missing)["code"] == "notFound"
    assert stable.post(f"/fine_tuning/jobs/{job['id']}/resume").status_code == 404

    paused = preview.post(f"/fine_tuning/jobs/{job['id']}/pause")
    assert paused.status_code == 200
    assert paused.json()["status"] == "paused"
    # 2024-10-21 has no word for paused: the job waits.
    assert stable.get(f"/fine_tuning/jobs/{job['id']}").json()["status"] == "pending"
    clock.advance(100)
    assert preview.get(f"/fine_tuning/jobs/{job['id']}").json()["status"] == "paused"
    resumed = preview.post(f"/fine_tuning/jobs/{job['id']}/resume")
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "resuming"
    clock.advance(3)
    assert preview.get(f"/fine_tuning/jobs/{job['id']}").json()["status"] == "running"
    clock.advance(1000)
    assert preview.get(f"/fine_tuning/jobs/{job['id']}").json()["status"] == "succeeded"


@pytest.mark.parametrize("version", AUTHORING)
def test_authoring_uploads(version: str, authoring: Callable[..., httpx.Client]) -> None:
    client = authoring(version)
    data = jsonl(training_lines())
    start = {"purpose": "fine-tune", "filename": "big.jsonl", "bytes": len(data), "mime_type": "text/jsonl"}
    response = client.post("/uploads", json=start)
    assert response.status_code == 200, response.text
    upload = response.json()
    assert upload["status"] == "pending"
    assert "file" not in upload
    assert f"/openai/uploads/{upload['id']}?api-version={version}" in response.headers["location"]
    parts = []
    for chunk in (data[:100], data[100:]):
        part = client.post(f"/uploads/{upload['id']}/parts", files={"data": ("part", chunk)})
        assert part.status_code == 200
        assert part.json()["azure_block_id"]
        parts.append(part.json()["id"])
    completed = client.post(f"/uploads/{upload['id']}/complete", json={"part_ids": parts}).json()
    assert completed["status"] == "completed"
    assert completed["file"]["bytes"] == len(data)
    authoring_create(client, training_file=completed["file"]["id"])

    other = client.post("/uploads", json=start).json()
    assert client.post(f"/uploads/{other['id']}/cancel").json()["status"] == "cancelled"


# ---------------------------------------------------------------------------------------------------------
# Authoring: what a request may hold
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "field", "body"),
    [
        (STABLE, "metadata", {"metadata": {"team": "ml"}}),
        (PREVIEW, "metadata", {"metadata": {"team": "ml"}}),
        (STABLE, "integrations", {"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}),
        (STABLE, "method", {"method": {"type": "supervised"}}),
        (PREVIEW, "suffix", {"suffix": "x" * 41}),
        (PREVIEW, "suffix", {"suffix": "has space"}),
        (STABLE, "hyperparameters.n_epochs", {"hyperparameters": {"n_epochs": "auto"}}),
        (PREVIEW, "method.type", {"method": {"type": "reinforcement"}}),
        (
            PREVIEW,
            "method.supervised.hyperparameters.batch_size",
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": "auto"}}}},
        ),
    ],
)
def test_authoring_create_takes_only_the_fields_of_its_version(
    version: str, field: str, body: dict[str, Any], authoring: Callable[..., httpx.Client], server: EmulatorServer
) -> None:
    client = authoring(version)
    file_id = authoring_upload(client)
    response = client.post("/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": file_id, **body})
    assert response.status_code == 400, response.text
    error = azure_error(response)
    assert error["code"] == "invalidPayload"
    assert error["target"] == field
    assert error["details"] == []
    assert error["innererror"] == {"code": "invalidPayload"}
    assert server.emulator.counters.jobs_created == 0


def test_authoring_preview_takes_method_integrations_and_minus_one(authoring: Callable[..., httpx.Client]) -> None:
    client = authoring(PREVIEW)
    method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": -1, "l2_multiplier": 0.1}}}
    job = authoring_create(
        client,
        training_file=authoring_upload(client, [_dpo(i) for i in range(10)]),
        method=method,
        suffix="x" * 40,
        integrations=[{"type": "wandb", "wandb": {"project": "demo"}}],
        seed=42,
    )
    assert job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["n_epochs"] == -1
    assert job["integrations"][0]["wandb"]["project"] == "demo"
    assert job["seed"] == 42


def _dpo(i: int) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Say hello to {i}"}]},
        "preferred_output": [{"role": "assistant", "content": f"Hello, {i}!"}],
        "non_preferred_output": [{"role": "assistant", "content": f"Go away, {i}."}],
    }


# ---------------------------------------------------------------------------------------------------------
# Authoring: api-version and authentication
# ---------------------------------------------------------------------------------------------------------


def test_authoring_api_version_is_required_and_must_be_known(authoring: Callable[..., httpx.Client]) -> None:
    missing = authoring(None).get("/fine_tuning/jobs")
    assert missing.status_code == 400
    assert azure_error(missing)["code"] == "invalidPayload"
    assert azure_error(missing)["target"] == "api-version"
    unknown = authoring("2023-05-15").get("/fine_tuning/jobs")
    assert unknown.status_code == 404
    assert azure_error(unknown)["code"] == "notFound"
    validate_azure_error(STABLE, missing.json())
    validate_azure_error(STABLE, unknown.json())


@pytest.mark.parametrize(
    ("version", "headers", "status"),
    [
        (STABLE, {"api-key": API_KEY}, 200),
        (STABLE, {"Authorization": f"Bearer {API_KEY}"}, 401),  # 2024-10-21 declares only api-key
        (STABLE, {}, 401),
        (STABLE, {"api-key": BAD_KEY}, 401),
        (PREVIEW, {"api-key": API_KEY}, 200),
        (PREVIEW, {"Authorization": f"Bearer {API_KEY}"}, 200),  # stands in for an Entra ID token
        (PREVIEW, {"Authorization": f"Bearer {BAD_KEY}"}, 401),
        (PREVIEW, {}, 401),
    ],
)
def test_authoring_authentication(
    version: str, headers: dict[str, str], status: int, authoring: Callable[..., httpx.Client]
) -> None:
    response = authoring(version, headers).get("/fine_tuning/jobs")
    assert response.status_code == status, response.text
    if status == 401:
        assert azure_error(response)["code"] == "unauthorized"
        assert BAD_KEY not in response.text
        assert API_KEY not in response.text


# ---------------------------------------------------------------------------------------------------------
# v1
# ---------------------------------------------------------------------------------------------------------


def test_v1_job_lifecycle(
    v1: httpx.Client, server: EmulatorServer, clock: ManualClock, azure_checker: AzureChecker
) -> None:
    missing = v1.post("/files", files={"file": ("train.jsonl", jsonl(training_lines()))}, data={"purpose": "fine-tune"})
    assert missing.status_code == 400
    assert azure_error(missing)["param"] == "expires_after"
    assert azure_error(missing)["type"] == "error"
    file_id = v1_upload(v1)
    listed = v1.get("/files").json()
    assert listed["data"][0]["expires_at"] == listed["data"][0]["created_at"] + 1209600
    assert "has_more" in listed

    response = v1.post(
        "/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": file_id, "metadata": {"run": "a"}}
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["metadata"] == {"run": "a"}
    assert job["status"] == "validating_files"
    other = v1.post(
        "/fine_tuning/jobs", json={"model": "gpt-4o-mini", "training_file": file_id, "metadata": {"run": "b"}}
    ).json()
    # v1's list has no metadata filter: the parameter is ignored.
    listed_jobs = v1.get("/fine_tuning/jobs", params={"metadata[run]": "a"}).json()["data"]
    assert [item["id"] for item in listed_jobs] == [other["id"], job["id"]]

    statuses = [job["status"]]
    for seconds in (4, 5):
        clock.advance(seconds)
        statuses.append(v1.get(f"/fine_tuning/jobs/{job['id']}").json()["status"])
    assert statuses == ["validating_files", "queued", "running"]
    paused = v1.post(f"/fine_tuning/jobs/{job['id']}/pause")
    assert paused.status_code == 200
    assert paused.json()["status"] == "paused"
    assert v1.post(f"/fine_tuning/jobs/{job['id']}/resume").json()["status"] == "queued"
    assert v1.post(f"/fine_tuning/jobs/{other['id']}/cancel").json()["status"] == "cancelled"
    clock.advance(1000)
    assert v1.get(f"/fine_tuning/jobs/{job['id']}").json()["status"] == "succeeded"
    add_warning(server, job["id"], clock)
    levels = {
        event["level"]
        for event in v1.get(f"/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
    }
    assert "warn" in levels
    checkpoints = v1.get(f"/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert checkpoints["data"]
    assert checkpoints["first_id"] == checkpoints["data"][0]["id"]
    conflict = v1.post(f"/fine_tuning/jobs/{job['id']}/cancel")
    assert conflict.status_code == 409
    assert azure_error(conflict)["code"] == "invalid_job_state"

    # No job DELETE, no uploads on v1.
    not_allowed = v1.delete(f"/fine_tuning/jobs/{job['id']}")
    assert not_allowed.status_code == 405
    assert azure_error(not_allowed)["type"] == "error"
    no_uploads = v1.post("/uploads", json={"purpose": "fine-tune", "filename": "a.jsonl", "bytes": 1, "mime_type": "x"})
    assert no_uploads.status_code == 404
    assert azure_error(no_uploads)["type"] == "error"
    operations = {operation for _, operation, _ in azure_checker.checked}
    assert {"createFile", "createFineTuningJob", "pauseFineTuningJob", "listFineTuningJobCheckpoints"} <= operations


@pytest.mark.parametrize(
    ("version", "status"), [(None, 200), ("v1", 200), ("preview", 200), (STABLE, 400), ("v2", 400)]
)
def test_v1_api_version_is_optional(version: str | None, status: int, v1: httpx.Client) -> None:
    response = v1.get("/fine_tuning/jobs", params={"api-version": version} if version else None)
    assert response.status_code == status, response.text
    if status == 400:
        assert azure_error(response)["param"] == "api-version"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"api-key": API_KEY}, 200),
        ({"Authorization": f"Bearer {API_KEY}"}, 200),
        ({}, 401),
        ({"Authorization": f"Bearer {BAD_KEY}"}, 401),
    ],
)
def test_v1_authentication(
    headers: dict[str, str], status: int, server: EmulatorServer, azure_checker: AzureChecker
) -> None:
    with httpx.Client(
        base_url=server.url + "/openai/v1", headers=headers, event_hooks={"response": [azure_checker]}
    ) as client:
        response = client.get("/fine_tuning/jobs")
    assert response.status_code == status
    if status == 401:
        assert azure_error(response)["code"] == "unauthorized"
        assert azure_error(response)["type"] == "error"


# ---------------------------------------------------------------------------------------------------------
# Faults and counters on the Azure routes
# ---------------------------------------------------------------------------------------------------------


def test_faults_and_counters_cover_the_azure_routes(
    authoring: Callable[..., httpx.Client], v1: httpx.Client, server: EmulatorServer
) -> None:
    client = authoring(STABLE)
    job = authoring_create(client, training_file=authoring_upload(client))
    v1.get(f"/fine_tuning/jobs/{job['id']}")
    with httpx.Client(base_url=server.url, headers=AUTH) as admin:
        counters = admin.get("/_emulator/counters").json()
        assert counters["requests"]["POST /openai/fine_tuning/jobs"] == 1
        assert counters["requests"]["GET /openai/v1/fine_tuning/jobs/{fine_tuning_job_id}"] == 1
        assert counters["statuses"]["201"] == 2
        admin.post("/_emulator/faults", json={"error_rate": 1.0, "match": "/openai/"}).raise_for_status()
    failed = client.get(f"/fine_tuning/jobs/{job['id']}")
    assert failed.status_code in (500, 502, 503)
    assert azure_error(failed)["code"] in ("internalFailure", "serviceUnavailable")
    failed_v1 = v1.get(f"/fine_tuning/jobs/{job['id']}")
    assert failed_v1.status_code in (500, 502, 503)
    assert azure_error(failed_v1)["type"] == "error"
    assert sum(server.emulator.counters.faults.values()) == 2


# ---------------------------------------------------------------------------------------------------------
# The OpenAI surface's metadata filter, and ignoring it
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ignore", [False, True])
def test_openai_list_metadata_filter_can_be_ignored(ignore: bool, make_server: Callable[..., EmulatorServer]) -> None:
    server = make_server(ignore_metadata_filter=ignore)
    with httpx.Client(base_url=server.base_url, headers=AUTH) as client:
        upload = client.post(
            "/files", files={"file": ("t.jsonl", jsonl(training_lines()))}, data={"purpose": "fine-tune"}
        )
        ids = []
        for run in ("a", "b"):
            body = {"model": "gpt-4o-mini", "training_file": upload.json()["id"], "metadata": {"run": run}}
            ids.append(client.post("/fine_tuning/jobs", json=body).json()["id"])
        listed = [item["id"] for item in client.get("/fine_tuning/jobs", params={"metadata[run]": "a"}).json()["data"]]
    assert listed == ([ids[1], ids[0]] if ignore else [ids[0]])


def test_cli_flag_ignore_metadata_filter() -> None:
    parser = build_parser()
    assert config_from_args(parser.parse_args(["--ignore-metadata-filter"])).ignore_metadata_filter is True
    assert config_from_args(parser.parse_args([])).ignore_metadata_filter is False


# ---------------------------------------------------------------------------------------------------------
# The openai SDK against both surfaces
# ---------------------------------------------------------------------------------------------------------


def test_openai_sdk_against_v1(server: EmulatorServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/openai/v1", api_key=API_KEY, max_retries=0)
    uploaded = client.files.create(
        file=("train.jsonl", jsonl(training_lines())),
        purpose="fine-tune",
        expires_after={"anchor": "created_at", "seconds": 1209600},
    )
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=uploaded.id, metadata={"k": "v"})
    assert client.fine_tuning.jobs.retrieve(job.id).metadata == {"k": "v"}


def test_azure_openai_sdk_against_authoring(server: EmulatorServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AzureOpenAI(azure_endpoint=server.url, api_key=API_KEY, api_version=STABLE, max_retries=0)
    uploaded = client.files.create(file=("train.jsonl", jsonl(training_lines())), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=uploaded.id, suffix="sdk")
    fetched = client.fine_tuning.jobs.retrieve(job.id)
    assert fetched.id == job.id
    assert fetched.status == "pending"
    assert fetched.model_extra is not None
    assert fetched.model_extra["organisation_id"] == "org-emulator"
