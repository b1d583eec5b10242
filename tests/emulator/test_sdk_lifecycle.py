"""A whole lifecycle with the official openai SDK; every request and answer is checked against the spec."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from airflow_provider_finetune.emulator import EmulatorServer, ManualClock
from tests.conformance import operation_ids, validate_request, validate_response
from tests.emulator.conftest import ADMIN_KEY, API_KEY, GRADER, jsonl, training_lines

pytestmark = pytest.mark.integration


class Recorder:
    """An SDK response hook: checks each request and answer against the spec, remembers the operations."""

    def __init__(self) -> None:
        self.operations: set[str] = set()
        self.problems: list[str] = []

    def __call__(self, response: Any) -> None:
        response.read()
        sent = response.request
        with contextlib.suppress(Exception):  # a body that is not a stream is there already
            sent.read()
        # The SDK may use httpx or its successor httpx2; the checker takes an httpx request.
        request = httpx.Request(
            sent.method, str(sent.url), headers=list(sent.headers.multi_items()), content=sent.content
        )
        if not request.url.path.startswith("/v1/") or request.url.path.split("/")[2] in ("models", "chat"):
            return
        try:
            operation = validate_request(request)
            payload = response.content if operation == "downloadFile" else response.json()
            validate_response(operation, response.status_code, payload)
        except AssertionError as exc:
            self.problems.append(str(exc))
            return
        assert response.headers.get("x-request-id", "").startswith("req_")
        self.operations.add(operation)


def sdk(server: EmulatorServer, key: str, recorder: Recorder) -> openai.OpenAI:
    http_client = openai.DefaultHttpxClient(event_hooks={"response": [recorder]})
    return openai.OpenAI(base_url=server.base_url, api_key=key, http_client=http_client, max_retries=0)


def list_permissions(client: openai.OpenAI, checkpoint: str, **params: Any) -> Any:
    permissions = client.fine_tuning.checkpoints.permissions
    # openai 2.x has retrieve() only; 3.x adds list() (and keeps retrieve()).
    method: Callable[..., Any] = getattr(permissions, "list", None) or permissions.retrieve
    return method(checkpoint, **params)


def test_whole_lifecycle_with_the_openai_sdk(make_server: Callable[..., EmulatorServer], clock: ManualClock) -> None:
    server = make_server()
    recorder = Recorder()
    client = sdk(server, API_KEY, recorder)
    admin = sdk(server, ADMIN_KEY, recorder)

    # Files: upload, retrieve, list, content.
    training_bytes = jsonl(training_lines(20))
    training = client.files.create(file=("train.jsonl", training_bytes), purpose="fine-tune")
    assert training.purpose == "fine-tune"
    assert training.bytes == len(training_bytes)
    assert client.files.retrieve(training.id).filename == "train.jsonl"
    assert training.id in [item.id for item in client.files.list(purpose="fine-tune")]
    assert client.files.content(training.id).read() == training_bytes

    # Uploads: a validation file in two parts with its md5; another upload cancelled.
    validation_bytes = jsonl(training_lines(5, start=100))
    upload = client.uploads.create(
        bytes=len(validation_bytes), filename="valid.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    half = len(validation_bytes) // 2
    parts = [
        client.uploads.parts.create(upload.id, data=chunk)
        for chunk in (validation_bytes[:half], validation_bytes[half:])
    ]
    done = client.uploads.complete(
        upload.id, part_ids=[part.id for part in parts], md5=hashlib.md5(validation_bytes).hexdigest()
    )
    assert done.status == "completed"
    assert done.file is not None
    validation_id = done.file.id
    assert client.files.content(validation_id).read() == validation_bytes
    spare = client.uploads.create(bytes=10, filename="spare.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    assert client.uploads.cancel(spare.id).status == "cancelled"

    # A job: created validating, listed by metadata, running after validation and the queue.
    job = client.fine_tuning.jobs.create(
        model="gpt-4o-mini",
        training_file=training.id,
        validation_file=validation_id,
        suffix="lifecycle",
        metadata={"dag": "weekly"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
    )
    assert job.status == "validating_files"
    assert job.model == "gpt-4o-mini-2024-07-18"
    assert [found.id for found in client.fine_tuning.jobs.list(metadata={"dag": "weekly"})] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"dag": "other"}).data == []
    clock.advance(10)  # validating 3 s, queued 5 s: 2 s into training
    running = client.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running"
    assert running.estimated_finish is not None
    assert running.hyperparameters.n_epochs == 3
    assert running.hyperparameters.batch_size == 1

    # Pause and resume: progress stops while paused, the resumed job waits in the queue briefly.
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    clock.advance(600)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(job.id)
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    clock.advance(3)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"

    # Events, newest first, paged with after.
    first = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(first.data) == 3
    assert first.has_more
    second = client.fine_tuning.jobs.list_events(job.id, limit=3, after=first.data[-1].id)
    assert second.data[0].created_at <= first.data[-1].created_at
    messages = [event.message for event in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert "Fine-tuning job paused" in messages
    assert "Fine-tuning job resumed" in messages

    # Success: model name, results file, checkpoints of the last three epochs.
    clock.advance(60)
    finished = client.fine_tuning.jobs.retrieve(job.id)
    assert finished.status == "succeeded"
    assert finished.fine_tuned_model is not None
    assert finished.fine_tuned_model.startswith("ft:gpt-4o-mini-2024-07-18:emulator:lifecycle:")
    assert finished.trained_tokens
    assert finished.result_files
    results = client.files.content(finished.result_files[0]).read().decode()
    assert results.startswith("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy")
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert [checkpoint.step_number for checkpoint in checkpoints.data] == [60, 40, 20]
    checkpoint = checkpoints.data[0].fine_tuned_model_checkpoint

    # Checkpoint permissions: the admin key shares, lists and revokes; the API key may not.
    with pytest.raises(openai.PermissionDeniedError):
        client.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=["proj_a"])
    granted = admin.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=["proj_a", "proj_b"])
    assert [permission.project_id for permission in granted.data] == ["proj_a", "proj_b"]
    listed = list_permissions(admin, checkpoint, order="ascending")
    assert [permission.project_id for permission in listed.data] == ["proj_a", "proj_b"]
    deleted = admin.fine_tuning.checkpoints.permissions.delete(
        granted.data[0].id, fine_tuned_model_checkpoint=checkpoint
    )
    assert deleted.deleted
    assert [p.project_id for p in list_permissions(admin, checkpoint, project_id="proj_b").data] == ["proj_b"]

    # Graders.
    grader: Any = GRADER
    graded = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="yes", item={"label": "yes"})
    assert graded.reward == 1.0
    assert client.fine_tuning.alpha.graders.validate(grader=grader).grader is not None

    # The model it trained answers from its training data.
    answer = client.chat.completions.create(
        model=finished.fine_tuned_model, messages=[{"role": "user", "content": "What is 3 + 3?"}]
    )
    assert answer.choices[0].message.content == "6"
    assert finished.fine_tuned_model in [model.id for model in client.models.list()]

    # Cancel: from running, then not again.
    other = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training.id)
    assert client.fine_tuning.jobs.cancel(other.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(other.id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0).files.list()

    assert client.files.delete(training.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(training.id)

    assert recorder.problems == []
    assert recorder.operations == set(operation_ids())
