"""FineTuningHook at the HTTP layer: every endpoint, sync and async, checked against the published spec."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from airflow_provider_finetune.core.client import RetryPolicy
from airflow_provider_finetune.core.digests import request_fingerprint
from airflow_provider_finetune.exceptions import (
    AuthenticationError,
    ChangedRequestError,
    FineTuningConnectionError,
    InvalidRequestError,
    NotFoundError,
    UnsafeToRetryError,
)
from airflow_provider_finetune.hooks.finetune import TASK_TAG_KEY, FineTuningHook
from airflow_provider_finetune.models import (
    CheckpointPermission,
    DeletedCheckpointPermission,
    DeletedFile,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    FineTuningJobStatus,
    GraderRunResult,
    GraderValidation,
    Page,
    Upload,
    UploadPart,
)
from airflow_provider_finetune.rules.once import REQUEST_KEY
from tests.conformance import operation_ids
from tests.hook_doors import async_call, async_items, sync_call
from tests.hooks.conftest import (
    GRADER,
    SECRET,
    FakeAPI,
    checkpoint,
    event,
    file_obj,
    grader_result,
    job,
    page,
    permission,
    upload,
)

CKPT = "ft:gpt-4o-mini-2024-07-18:org:weather:B7R9VjQd"

# name, args, kwargs, method, path (regex relative to the base URL), reply, type of the result
ENDPOINTS: list[tuple[str, tuple[Any, ...], dict[str, Any], str, str, Any, type]] = [
    (
        "create_job",
        ({"model": "gpt-4o-mini", "training_file": "file-abc"},),
        {},
        "POST",
        "fine_tuning/jobs",
        job(),
        FineTuningJob,
    ),
    ("list_jobs", (), {"limit": 2}, "GET", "fine_tuning/jobs", page([job()]), Page),
    ("list_job_states", (), {"limit": 100}, "GET", "fine_tuning/jobs", page([job()]), Page),
    ("get_job", ("ftjob-1",), {}, "GET", "fine_tuning/jobs/ftjob-1", job(status="running"), FineTuningJob),
    (
        "cancel_job",
        ("ftjob-1",),
        {},
        "POST",
        "fine_tuning/jobs/ftjob-1/cancel",
        job(status="cancelled"),
        FineTuningJob,
    ),
    (
        "pause_job",
        ("ftjob-1",),
        {},
        "POST",
        "fine_tuning/jobs/ftjob-1/pause",
        job(status="paused"),
        FineTuningJob,
    ),
    (
        "resume_job",
        ("ftjob-1",),
        {},
        "POST",
        "fine_tuning/jobs/ftjob-1/resume",
        job(status="queued"),
        FineTuningJob,
    ),
    (
        "list_events",
        ("ftjob-1",),
        {"limit": 5},
        "GET",
        "fine_tuning/jobs/ftjob-1/events",
        page([event("ev-1")]),
        Page,
    ),
    (
        "list_checkpoints",
        ("ftjob-1",),
        {},
        "GET",
        "fine_tuning/jobs/ftjob-1/checkpoints",
        page([checkpoint("c1")]),
        Page,
    ),
    (
        "list_checkpoint_permissions",
        (CKPT,),
        {"project_id": "proj-2", "order": "ascending", "limit": 3},
        "GET",
        "fine_tuning/checkpoints/[^/]+/permissions",
        page([permission("cp_1")]),
        Page,
    ),
    (
        "create_checkpoint_permissions",
        (CKPT, ["proj-2"]),
        {},
        "POST",
        "fine_tuning/checkpoints/[^/]+/permissions",
        page([permission("cp_1")]),
        Page,
    ),
    (
        "delete_checkpoint_permission",
        (CKPT, "cp_1"),
        {},
        "DELETE",
        "fine_tuning/checkpoints/[^/]+/permissions/cp_1",
        {"object": "checkpoint.permission", "id": "cp_1", "deleted": True},
        DeletedCheckpointPermission,
    ),
    (
        "run_grader",
        (GRADER, "yes"),
        {"item": {"label": "yes"}},
        "POST",
        "fine_tuning/alpha/graders/run",
        grader_result(),
        GraderRunResult,
    ),
    (
        "validate_grader",
        (GRADER,),
        {},
        "POST",
        "fine_tuning/alpha/graders/validate",
        {"grader": GRADER},
        GraderValidation,
    ),
    (
        "list_files",
        (),
        {"purpose": "fine-tune"},
        "GET",
        "files",
        page([file_obj()], first_id="file-1", last_id="file-1"),
        Page,
    ),
    ("get_file", ("file-1",), {}, "GET", "files/file-1", file_obj(), FileObject),
    (
        "delete_file",
        ("file-1",),
        {},
        "DELETE",
        "files/file-1",
        {"object": "file", "id": "file-1", "deleted": True},
        DeletedFile,
    ),
    ("upload_file", (b'{"a": 1}\n',), {"filename": "t.jsonl"}, "POST", "files", file_obj(), FileObject),
    ("create_upload", ("big.jsonl", 100), {}, "POST", "uploads", upload(), Upload),
    (
        "add_upload_part",
        ("upload_1", b"abc"),
        {},
        "POST",
        "uploads/upload_1/parts",
        {"object": "upload.part", "id": "part_1", "created_at": 1, "upload_id": "upload_1"},
        UploadPart,
    ),
    (
        "complete_upload",
        ("upload_1", ["part_1"]),
        {"md5": "0" * 32},
        "POST",
        "uploads/upload_1/complete",
        upload(status="completed", file=file_obj()),
        Upload,
    ),
    (
        "cancel_upload",
        ("upload_1",),
        {},
        "POST",
        "uploads/upload_1/cancel",
        upload(status="cancelled"),
        Upload,
    ),
]


async def call(hook: FineTuningHook, mode: str, name: str, *args: Any, **kwargs: Any) -> Any:
    if mode == "sync":
        return sync_call(hook, name, *args, **kwargs)
    return await async_call(hook, name, *args, **kwargs)


async def collect(hook: FineTuningHook, mode: str, name: str, *args: Any, **kwargs: Any) -> list[Any]:
    if mode == "sync":
        return list(getattr(hook, name)(*args, **kwargs))
    return await async_items(hook, name, *args, **kwargs)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "method", "path", "reply", "result_type"),
    ENDPOINTS,
    ids=[e[0] for e in ENDPOINTS],
)
async def test_every_endpoint(
    hook: FineTuningHook,
    api: FakeAPI,
    mode: str,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    method: str,
    path: str,
    reply: Any,
    result_type: type,
) -> None:
    api.on(method, path, reply)
    result = await call(hook, mode, name, *args, **kwargs)
    assert isinstance(result, result_type)
    assert len(api.requests) == 1
    sent = api.requests[0]
    assert sent.headers["Authorization"] == f"Bearer {SECRET}"
    assert sent.headers["OpenAI-Organization"] == "org-1"
    assert sent.headers["OpenAI-Project"] == "proj-1"


def test_endpoints_cover_every_operation_of_the_spec(hook: FineTuningHook, api: FakeAPI) -> None:
    covered = set()
    for name, args, kwargs, method, path, reply, _ in ENDPOINTS:
        api.on(method, path, reply)
        sync_call(hook, name, *args, **kwargs)
    covered = set(api.operations)
    api.on("GET", "files/file-1/content", httpx.Response(200, content=b"step,loss\n1,0.5\n"))
    assert hook.get_file_content("file-1") == b"step,loss\n1,0.5\n"
    covered |= set(api.operations)
    assert covered == set(operation_ids())


async def test_file_content(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on("GET", "files/file-9/content", httpx.Response(200, content=b"a,b\n"))
    assert await call(hook, mode, "get_file_content", "file-9") == b"a,b\n"


async def test_create_job_body_is_what_the_user_asked(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on("POST", "fine_tuning/jobs", job())
    await call(
        hook,
        mode,
        "create_job",
        {
            "model": "gpt-4o-mini",
            "training_file": "file-abc",
            "hyperparameters": {"n_epochs": 3},
            "suffix": "weekly",
            "seed": 7,
            "metadata": {"team": "ml"},
        },
    )
    body = json.loads(api.requests[0].content)
    assert body == {
        "model": "gpt-4o-mini",
        "training_file": "file-abc",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        "suffix": "weekly",
        "seed": 7,
        "metadata": {"team": "ml"},
    }


async def test_invalid_request_sends_nothing(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await call(hook, mode, "create_job", {"model": "gpt-4o-mini", "training_file": "file-abc", "seed": -1})
    assert info.value.field == "seed"
    with pytest.raises(InvalidRequestError) as info:
        await call(hook, mode, "get_job", "  ")
    assert info.value.field == "job_id"
    with pytest.raises(InvalidRequestError):
        await call(hook, mode, "list_jobs", limit=0)
    with pytest.raises(InvalidRequestError):
        await call(hook, mode, "list_checkpoint_permissions", CKPT, order="newest")
    assert api.requests == []


async def test_jobs_pagination_follows_after(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on(
        "GET",
        "fine_tuning/jobs",
        page([job("ftjob-3"), job("ftjob-2")], has_more=True),
        page([job("ftjob-1")], has_more=False),
    )
    jobs = await collect(hook, mode, "iter_jobs", limit=2)
    assert [j.id for j in jobs] == ["ftjob-3", "ftjob-2", "ftjob-1"]
    queries = [parse_qs(urlsplit(str(r.url)).query) for r in api.requests]
    assert queries == [{"limit": ["2"]}, {"limit": ["2"], "after": ["ftjob-2"]}]


async def test_events_pagination_goes_back_in_time(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on(
        "GET",
        "fine_tuning/jobs/ftjob-1/events",
        page([event("ev-9"), event("ev-8")], has_more=True),
        page([event("ev-7")], has_more=False),
    )
    events = await collect(hook, mode, "iter_events", "ftjob-1", limit=2)
    assert [e.id for e in events] == ["ev-9", "ev-8", "ev-7"]
    assert isinstance(events[0], FineTuningJobEvent)
    assert parse_qs(urlsplit(str(api.requests[1].url)).query)["after"] == ["ev-8"]


@pytest.mark.parametrize(
    ("name", "args", "path", "items", "item_type"),
    [
        (
            "iter_checkpoints",
            ("ftjob-1",),
            "fine_tuning/jobs/ftjob-1/checkpoints",
            [checkpoint("c2", 20), checkpoint("c1", 10)],
            FineTuningJobCheckpoint,
        ),
        (
            "iter_checkpoint_permissions",
            (CKPT,),
            "fine_tuning/checkpoints/[^/]+/permissions",
            [permission("cp_2"), permission("cp_1")],
            CheckpointPermission,
        ),
        ("iter_files", (), "files", [file_obj("file-2"), file_obj("file-1")], FileObject),
    ],
)
async def test_other_lists_paginate(
    hook: FineTuningHook,
    api: FakeAPI,
    mode: str,
    name: str,
    args: tuple[Any, ...],
    path: str,
    items: list[Any],
    item_type: type,
) -> None:
    api.on("GET", path, page(items[:1], has_more=True), page(items[1:], has_more=False))
    got = await collect(hook, mode, name, *args, limit=1)
    assert [type(i) for i in got] == [item_type, item_type]
    assert [i.id for i in got] == [i["id"] for i in items]
    assert parse_qs(urlsplit(str(api.requests[1].url)).query)["after"] == [items[0]["id"]]


async def test_metadata_filter_is_sent_as_deep_object(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on("GET", "fine_tuning/jobs", page([job()]))
    await call(hook, mode, "list_jobs", metadata={"team": "ml", TASK_TAG_KEY: "abc"})
    query = parse_qs(urlsplit(str(api.requests[0].url)).query)
    assert query == {"metadata[team]": ["ml"], f"metadata[{TASK_TAG_KEY}]": ["abc"]}


async def test_unknown_status_and_fields_survive(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on("GET", "fine_tuning/jobs/ftjob-1", job(status="pausing", shiny_new_field={"x": 1}))
    result = await call(hook, mode, "get_job", "ftjob-1")
    assert result.status == FineTuningJobStatus.PAUSING
    assert not result.status.is_terminal()
    assert result.model_extra["shiny_new_field"] == {"x": 1}


# -- retries at the hook level ------------------------------------------------------


async def test_transient_errors_are_retried(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on(
        "GET",
        "fine_tuning/jobs/ftjob-1",
        httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"message": "slow down"}}),
        httpx.Response(503),
        httpx.ReadTimeout("slow"),
        job(status="running"),
    )
    result = await call(hook, mode, "get_job", "ftjob-1")
    assert result.status == FineTuningJobStatus.RUNNING
    assert len(api.requests) == 4


async def test_retries_are_bounded_by_the_connection(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on("GET", "fine_tuning/jobs/ftjob-1", httpx.Response(500, json={"error": {"message": "down"}}))
    with pytest.raises(Exception, match="down"):
        await call(hook, mode, "get_job", "ftjob-1")
    assert len(api.requests) == 4  # max_retries 3 in the connection


async def test_create_is_not_resent_after_an_ambiguous_failure(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on("POST", "fine_tuning/jobs", httpx.Response(502), job())
    with pytest.raises(UnsafeToRetryError):
        await call(hook, mode, "create_job", {"model": "gpt-4o-mini", "training_file": "file-abc"})
    assert len(api.sent("POST")) == 1


async def test_errors_are_typed_with_request_id(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on(
        "GET",
        "fine_tuning/jobs/ftjob-x",
        httpx.Response(
            404,
            headers={"x-request-id": "req_42"},
            json={
                "error": {
                    "message": "Job not found",
                    "type": "invalid_request_error",
                    "param": "id",
                    "code": "not_found",
                }
            },
        ),
    )
    with pytest.raises(NotFoundError) as info:
        await call(hook, mode, "get_job", "ftjob-x")
    assert (info.value.code, info.value.param, info.value.request_id) == ("not_found", "id", "req_42")
    assert len(api.requests) == 1


# -- at most one job per tag ------------------------------------------------------

REQUEST = {"model": "gpt-4o-mini", "training_file": "file-abc", "metadata": {"team": "ml"}}
FINGERPRINT = request_fingerprint(REQUEST, ignore_metadata=frozenset({TASK_TAG_KEY, REQUEST_KEY}))
TAGGED = {"team": "ml", TASK_TAG_KEY: "t-1", REQUEST_KEY: FINGERPRINT}


async def test_ensure_job_reattaches_to_a_tagged_job(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on("GET", "fine_tuning/jobs", page([job("ftjob-old", status="running", metadata=TAGGED)]))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1")
    assert (result.id, created) == ("ftjob-old", False)
    assert api.sent("POST") == []
    assert parse_qs(urlsplit(str(api.requests[0].url)).query)[f"metadata[{TASK_TAG_KEY}]"] == ["t-1"]


@pytest.mark.parametrize("status", ["failed", "cancelled"])
async def test_ensure_job_creates_anew_after_a_failed_or_cancelled_job(
    hook: FineTuningHook, api: FakeAPI, mode: str, status: str
) -> None:
    api.on("GET", "fine_tuning/jobs", page([job("ftjob-old", status=status, metadata=TAGGED)]))
    api.on("POST", "fine_tuning/jobs", job("ftjob-new"))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1")
    assert (result.id, created) == ("ftjob-new", True)
    assert len(api.sent("POST")) == 1


async def test_ensure_job_returns_a_succeeded_job(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on("GET", "fine_tuning/jobs", page([job("ftjob-done", status="succeeded", metadata=TAGGED)]))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1")
    assert (result.id, created) == ("ftjob-done", False)
    assert api.sent("POST") == []


async def test_ensure_job_creates_with_the_tag(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on("GET", "fine_tuning/jobs", page([]))
    api.on("POST", "fine_tuning/jobs", job("ftjob-new"))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1")
    assert (result.id, created) == ("ftjob-new", True)
    body = json.loads(api.sent("POST")[0].content)
    assert body["metadata"] == {"team": "ml", TASK_TAG_KEY: "t-1", REQUEST_KEY: FINGERPRINT}


async def test_ensure_job_after_ambiguous_failure_finds_the_job(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    api.on("GET", "fine_tuning/jobs", page([]), page([job("ftjob-made", metadata=TAGGED)]))
    api.on("POST", "fine_tuning/jobs", httpx.Response(500), job("ftjob-second"))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1")
    assert (result.id, created) == ("ftjob-made", False)
    assert len(api.sent("POST")) == 1


async def test_ensure_job_after_ambiguous_failure_with_no_job_sends_once_more(
    hook: FineTuningHook, api: FakeAPI, mode: str
) -> None:
    api.on("GET", "fine_tuning/jobs", page([]))
    api.on("POST", "fine_tuning/jobs", httpx.ReadTimeout("lost"), job("ftjob-second"))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1")
    assert (result.id, created) == ("ftjob-second", True)
    assert len(api.sent("POST")) == 2
    assert len(api.sent("GET")) == 2


async def test_after_a_failed_job_a_lost_create_is_found_by_listing_not_sent_again(
    hook: FineTuningHook, api: FakeAPI, mode: str
) -> None:
    """The state store names the failed job of the try before; the lookup after a lost answer lists the jobs."""
    from tests.operators.conftest import FakeStateStore

    state = FakeStateStore({"job_id": "ftjob-failed"})
    failed = job("ftjob-failed", status="failed", metadata=TAGGED)
    api.on("GET", "fine_tuning/jobs/ftjob-failed", failed)
    api.on("GET", "fine_tuning/jobs", page([job("ftjob-made", metadata=TAGGED), failed]))
    api.on("POST", "fine_tuning/jobs", httpx.ReadTimeout("lost"), job("ftjob-second"))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1", state=state)
    assert (result.id, created) == ("ftjob-made", False)
    assert len(api.sent("POST")) == 1  # the job the lost answer made is adopted: no second job
    assert state.values["job_id"] == "ftjob-made"


async def test_a_changed_request_s_job_that_ends_before_the_cancel_is_replaced(
    hook: FineTuningHook, api: FakeAPI, mode: str
) -> None:
    old = job("ftjob-old", status="running", metadata={TASK_TAG_KEY: "t-1", REQUEST_KEY: "rq-other"})
    api.on("GET", "fine_tuning/jobs", page([old]))
    refused = {"error": {"message": "Job has already succeeded", "type": "invalid_request_error"}}
    api.on(
        "POST",
        "fine_tuning/jobs/ftjob-old/cancel",
        httpx.Response(409, headers={"x-should-retry": "false"}, json=refused),
    )
    api.on("POST", "fine_tuning/jobs", job("ftjob-new", metadata=TAGGED))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1")
    assert (result.id, created) == ("ftjob-new", True)


async def test_ensure_job_never_adopts_a_listed_job_without_its_tag(
    hook: FineTuningHook, api: FakeAPI, mode: str
) -> None:
    # A service that ignores the metadata filter answers with its newest jobs: another team's among them.
    theirs = job("ftjob-theirs", status="running", metadata={"team": "other"})
    untagged = job("ftjob-untagged", status="succeeded")
    api.on("GET", "fine_tuning/jobs", page([theirs, untagged]))
    api.on("POST", "fine_tuning/jobs", job("ftjob-new", metadata=TAGGED))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1")
    assert (result.id, created) == ("ftjob-new", True)
    assert len(api.sent("POST")) == 1


async def test_ensure_job_finds_its_tag_beyond_the_first_listed_job(
    hook: FineTuningHook, api: FakeAPI, mode: str
) -> None:
    theirs = job("ftjob-theirs", status="running", metadata={"team": "other"})
    api.on("GET", "fine_tuning/jobs", page([theirs, job("ftjob-mine", status="running", metadata=TAGGED)]))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1")
    assert (result.id, created) == ("ftjob-mine", False)
    assert api.sent("POST") == []


async def test_changed_request_cancels_and_creates_by_default(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    old = job("ftjob-old", status="running", metadata={TASK_TAG_KEY: "t-1", REQUEST_KEY: "rq-other"})
    api.on("GET", "fine_tuning/jobs", page([old]))
    api.on("POST", "fine_tuning/jobs/ftjob-old/cancel", job("ftjob-old", status="cancelled"))
    api.on("POST", "fine_tuning/jobs", job("ftjob-new", metadata=TAGGED))
    result, created = await call(hook, mode, "ensure_job", REQUEST, tag="t-1")
    assert (result.id, created) == ("ftjob-new", True)
    assert [urlsplit(str(r.url)).path for r in api.sent("POST")] == [
        "/v1/fine_tuning/jobs/ftjob-old/cancel",
        "/v1/fine_tuning/jobs",
    ]


async def test_changed_request_fails_when_asked(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    old = job("ftjob-old", status="succeeded", metadata={TASK_TAG_KEY: "t-1", REQUEST_KEY: "rq-other"})
    api.on("GET", "fine_tuning/jobs", page([old]))
    with pytest.raises(ChangedRequestError, match="ftjob-old"):
        await call(hook, mode, "ensure_job", REQUEST, tag="t-1", on_changed_request="fail")
    assert api.sent("POST") == []


async def test_ensure_job_refuses_too_much_metadata(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    crowded = {**REQUEST, "metadata": {f"k{i}": "v" for i in range(15)}}
    api.on("GET", "fine_tuning/jobs", page([]))
    with pytest.raises(InvalidRequestError) as info:
        await call(hook, mode, "ensure_job", crowded, tag="t-1")
    assert info.value.field is not None
    assert info.value.field.startswith("metadata")
    assert api.sent("POST") == []


# -- uploads ------------------------------------------------------


async def test_small_file_goes_through_files_api(hook: FineTuningHook, api: FakeAPI, mode: str, tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"messages": []}\n' * 3)
    api.on("POST", "files", file_obj("file-9", "train.jsonl"))
    result = await call(hook, mode, "upload_file", path)
    assert result.id == "file-9"
    sent = api.requests[0]
    assert b'name="purpose"' in sent.content
    assert b"fine-tune" in sent.content
    assert b'filename="train.jsonl"' in sent.content


async def test_retried_file_upload_sends_the_whole_file_again(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    data = b'{"messages": []}\n' * 50
    # A 429 proves the file was not made: sent again, from the first byte.
    api.on("POST", "files", httpx.Response(429), file_obj())
    await call(hook, mode, "upload_file", io.BytesIO(data), filename="t.jsonl")
    assert len(api.requests) == 2
    assert all(data in r.content for r in api.requests)


async def test_file_upload_that_may_have_been_made_is_not_sent_again(
    hook: FineTuningHook, api: FakeAPI, mode: str
) -> None:
    api.on("POST", "files", httpx.Response(503), file_obj())
    with pytest.raises(UnsafeToRetryError):
        await call(hook, mode, "upload_file", io.BytesIO(b'{"messages": []}\n'), filename="t.jsonl")
    assert len(api.requests) == 1


async def test_large_file_goes_through_uploads_api_in_parts(
    connection: dict[str, Any], api: FakeAPI, mode: str, tmp_path
) -> None:
    hook = FineTuningHook(upload_threshold=1000, part_size=400, retry_policy=RetryPolicy(initial_delay=0, jitter=0))
    data = bytes(range(256)) * 5  # 1280 bytes: parts of 400, 400, 400, 80
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    api.on("POST", "uploads", upload())
    parts = iter(range(10))
    api.router.route(method="POST", path="/v1/uploads/upload_1/parts").mock(
        side_effect=lambda request: (
            api.requests.append(request),
            api.operations.append("addUploadPart"),
            httpx.Response(
                200,
                json={
                    "object": "upload.part",
                    "id": f"part_{next(parts)}",
                    "created_at": 1,
                    "upload_id": "upload_1",
                },
            ),
        )[-1]
    )
    api.on(
        "POST",
        "uploads/upload_1/complete",
        upload(status="completed", file=file_obj("file-big", "big.jsonl", 1280)),
    )
    result = await call(hook, mode, "upload_file", path)
    assert result.id == "file-big"
    create = json.loads(api.requests[0].content)
    assert create == {
        "filename": "big.jsonl",
        "purpose": "fine-tune",
        "bytes": 1280,
        "mime_type": "application/jsonl",
    }
    part_bodies = [r for r in api.requests if r.url.path.endswith("/parts")]
    assert len(part_bodies) == 4
    complete = json.loads(api.requests[-1].content)
    assert complete == {
        "part_ids": ["part_0", "part_1", "part_2", "part_3"],
        "md5": hashlib.md5(data).hexdigest(),
    }


async def test_failed_upload_is_cancelled(connection: dict[str, Any], api: FakeAPI, mode: str) -> None:
    hook = FineTuningHook(upload_threshold=10, part_size=10, retry_policy=RetryPolicy(initial_delay=0, jitter=0))
    api.on("POST", "uploads", upload())
    api.on("POST", "uploads/upload_1/parts", httpx.Response(400, json={"error": {"message": "bad part"}}))
    cancel = api.on("POST", "uploads/upload_1/cancel", upload(status="cancelled"))
    with pytest.raises(Exception, match="bad part"):
        await call(hook, mode, "upload_file", b"x" * 25, filename="big.jsonl")
    assert cancel.called


async def test_empty_file_is_refused_before_sending(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        await call(hook, mode, "upload_file", b"", filename="t.jsonl")
    assert api.requests == []


# -- connection ------------------------------------------------------


async def test_async_client_is_shared_per_connection(connection: dict[str, Any]) -> None:
    first, second = FineTuningHook(), FineTuningHook()
    assert await first.aclient() is await second.aclient()


def test_uri_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FT_URI",
        "finetune://:sk-uri-secret-123@localhost:8089/v1?scheme=http&organization=org-9&timeout=12&max_retries=1",
    )
    settings = FineTuningHook("ft_uri").settings
    assert settings.base_url == "http://localhost:8089/v1"
    assert settings.api_key == "sk-uri-secret-123"
    assert (settings.organization, settings.timeout, settings.max_retries) == ("org-9", 12.0, 1)


def test_json_connection_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FT_MIN", json.dumps({"conn_type": "finetune", "password": "sk-min-secret"}))
    settings = FineTuningHook("ft_min").settings
    assert settings.base_url == "https://api.openai.com/v1"
    assert settings.service == "openai"


def test_gateway_extra_headers(monkeypatch: pytest.MonkeyPatch, api: FakeAPI) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FT_GW",
        json.dumps(
            {
                "conn_type": "finetune",
                "host": "https://api.test/v1",
                "password": "gw-secret",
                "extra": {"extra_headers": json.dumps({"x-portkey-provider": "openai"})},
            }
        ),
    )
    api.on("GET", "fine_tuning/jobs/ftjob-1", job())
    FineTuningHook("ft_gw").get_job("ftjob-1")
    assert api.requests[0].headers["x-portkey-provider"] == "openai"


def test_bad_extra_headers_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FT_BAD", json.dumps({"conn_type": "finetune", "extra": {"extra_headers": "{not json"}})
    )
    with pytest.raises(InvalidRequestError) as info:
        FineTuningHook("ft_bad").settings  # noqa: B018
    assert info.value.field == "extra_headers"


def test_test_connection_ok(hook: FineTuningHook, api: FakeAPI) -> None:
    api.on("GET", "fine_tuning/jobs", page([]))
    assert hook.test_connection() == (True, "Connected to https://api.test/v1")
    assert parse_qs(urlsplit(str(api.requests[0].url)).query) == {"limit": ["1"]}


def test_test_connection_bad_key(hook: FineTuningHook, api: FakeAPI) -> None:
    api.on(
        "GET",
        "fine_tuning/jobs",
        httpx.Response(
            401,
            json={"error": {"message": f"Incorrect API key provided: {SECRET}", "code": "invalid_api_key"}},
        ),
    )
    ok, message = hook.test_connection()
    assert not ok
    assert "API key was refused" in message
    assert SECRET not in message


def test_test_connection_wrong_base_url(hook: FineTuningHook, api: FakeAPI) -> None:
    api.on("GET", "fine_tuning/jobs", httpx.Response(404, text="Not Found"))
    ok, message = hook.test_connection()
    assert not ok
    assert "base URL looks wrong" in message


def test_test_connection_unreachable(hook: FineTuningHook, api: FakeAPI) -> None:
    hook._max_retries = 0
    api.on("GET", "fine_tuning/jobs", httpx.ConnectError("Name or service not known"))
    ok, message = hook.test_connection()
    assert not ok
    assert "Could not reach https://api.test/v1" in message


def test_key_never_in_repr_or_logs(hook: FineTuningHook, api: FakeAPI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api.on("GET", "fine_tuning/jobs/ftjob-1", httpx.Response(500), job())
    hook.get_job("ftjob-1")
    assert SECRET not in repr(hook)
    assert SECRET not in repr(hook.settings)
    assert SECRET not in caplog.text


def test_connection_error_is_typed(hook: FineTuningHook, api: FakeAPI) -> None:
    hook._max_retries = 1
    api.on("GET", "fine_tuning/jobs/ftjob-1", httpx.ConnectError("refused"))
    with pytest.raises(FineTuningConnectionError):
        hook.get_job("ftjob-1")
    assert len(api.requests) == 2


def test_authentication_error_not_retried(hook: FineTuningHook, api: FakeAPI) -> None:
    api.on("GET", "fine_tuning/jobs/ftjob-1", httpx.Response(401, json={"error": {"message": "bad key"}}))
    with pytest.raises(AuthenticationError):
        hook.get_job("ftjob-1")
    assert len(api.requests) == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_job_states_are_lean_and_parsed_from_the_json(hook: FineTuningHook, api: FakeAPI, mode: str) -> None:
    failed = job("ftjob-2", "failed", error={"code": "invalid_training_file", "message": "Line 3", "param": "x"})
    api.on("GET", "fine_tuning/jobs", page([job("ftjob-1", "running", estimated_finish=1721768400, error={}), failed]))
    states = (await call(hook, mode, "list_job_states", after="ftjob-0", limit=100)).data
    assert [(s.id, s.status.value, s.estimated_finish, s.error) for s in states[:1]] == [
        ("ftjob-1", "running", 1721768400, None)  # an empty error is no error
    ]
    assert states[1].error is not None
    assert states[1].error.describe() == "[invalid_training_file] Line 3 (param: x)"
    assert not hasattr(states[0], "hyperparameters")  # nothing but the state is built
    assert api.sent()[0].url.params["after"] == "ftjob-0"
