"""The Together backend through the hook, sync and async, against the emulator's Together dialect over HTTP.

Every request the backend sends is checked against Together's published request types (the SDK's, see
``together_conformance``); the price estimate refuses a job before any create; a lost create is found again by
the request's own fields; the crash window that remains is shown exactly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.backends.together import (
    TOGETHER_STATUSES,
    TogetherBackend,
    job_from,
)
from airflow_provider_finetune.client import RetryPolicy
from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer, ManualClock
from airflow_provider_finetune.exceptions import InvalidRequestError, NotFoundError, UnsupportedCapabilityError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.models import CreateFineTuningJobRequest, build_request
from airflow_provider_finetune.once import JobIdentity
from airflow_provider_finetune.statuses import FineTuningJobStatus
from tests.backends.together_conformance import ROUTES, TogetherConformance, sdk_spells
from tests.emulator.conftest import dpo_lines, jsonl, training_lines
from tests.operators.conftest import FakeStateStore

KEY = "together-emulator-key-5ecret"
MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
LORA = {"lora_r": 8, "lora_alpha": 16, "n_checkpoints": 2, "learning_rate": 0.0001}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> Iterator[EmulatorServer]:
    server = EmulatorServer(EmulatorConfig(api_key=KEY, clock=clock, seed=7)).start()
    yield server
    server.stop()


@pytest.fixture
def conformance(server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[TogetherConformance]:
    """Every client the Together backend makes checks each request it sends; problems fail the test."""
    checker = TogetherConformance("/together/v1", server.url)
    sync_hook, async_hook = checker.hooks()
    make, amake = TogetherBackend.make_client, TogetherBackend.make_async_client

    def make_client(self: TogetherBackend) -> httpx.Client:
        client = make(self)
        client.event_hooks["request"].append(sync_hook)
        return client

    def make_async_client(self: TogetherBackend) -> httpx.AsyncClient:
        client = amake(self)
        client.event_hooks["request"].append(async_hook)
        return client

    monkeypatch.setattr(TogetherBackend, "make_client", make_client)
    monkeypatch.setattr(TogetherBackend, "make_async_client", make_async_client)
    yield checker
    assert checker.problems == []


def together_hook(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, conn_id: str = "ft_together"
) -> FineTuningHook:
    conn = {
        "conn_type": "finetune",
        "host": server.url + "/together/v1",
        "password": KEY,
        "extra": {"service": "together"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return FineTuningHook(conn_id, retry_policy=RetryPolicy(initial_delay=0, max_delay=0, jitter=0))


def request(training_file: str, **fields: Any) -> CreateFineTuningJobRequest:
    return build_request(CreateFineTuningJobRequest, {"model": MODEL, "training_file": training_file, **fields})


def counters(server: EmulatorServer) -> dict[str, int]:
    return dict(server.emulator.counters.requests)


def test_every_route_checked_is_one_the_sdk_spells() -> None:
    assert all(sdk_spells(template, where) for _, template, where in ROUTES)


@pytest.mark.parametrize(("status", "canonical"), list(TOGETHER_STATUSES.items()))
def test_each_together_status_maps_onto_a_canonical_one(status: str, canonical: FineTuningJobStatus) -> None:
    job = job_from({"id": "ft-1", "status": status, "created_at": "2026-11-30T10:00:00Z", "model_output_name": "m"})
    assert job["status"] == canonical.value
    assert job["together_status"] == status


def test_a_connection_without_host_reaches_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FT_T", json.dumps({"conn_type": "finetune", "password": KEY, "extra": {"service": "together"}})
    )
    backend = FineTuningHook("ft_t").backend
    assert isinstance(backend, TogetherBackend)
    assert backend.settings.base_url == "https://api.together.ai/v1"


def test_the_hook_drives_a_whole_lifecycle(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, clock: ManualClock, conformance: TogetherConformance
) -> None:
    hook = together_hook(monkeypatch, server)
    uploaded = hook.upload_file(jsonl(training_lines(20)), filename="train.jsonl")
    assert uploaded.status == "processed"
    assert uploaded.filename == "train.jsonl"
    assert hook.get_file(uploaded.id).bytes == len(jsonl(training_lines(20)))

    backend = hook.backend
    assert isinstance(backend, TogetherBackend)
    asked = request(
        uploaded.id, suffix="weekly", method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
    )
    estimate = backend.check_price(hook, asked, LORA)
    assert estimate.allowed_to_proceed is True
    assert estimate.estimated_total_price is not None
    assert estimate.estimated_total_price > 0

    state = FakeStateStore()
    identity = JobIdentity("tag-lifecycle", since=clock() - 60)
    job, created = hook.ensure_job(asked, identity=identity, state=state, service_options=LORA)
    assert created
    assert job.status == FineTuningJobStatus.QUEUED
    assert state.values["job_id"] == job.id
    again, created_again = hook.ensure_job(asked, identity=identity, state=state, service_options=LORA)
    assert (again.id, created_again) == (job.id, False)

    assert [item.id for item in hook.iter_jobs()] == [job.id]
    clock.advance(3600)
    done = hook.get_job(job.id)
    assert done.status == FineTuningJobStatus.SUCCEEDED
    assert done.fine_tuned_model is not None
    assert done.fine_tuned_model.startswith("emulator/")
    assert (done.model_extra or {})["total_price"] >= 0
    events = list(hook.iter_events(job.id))
    assert events[0].message.startswith("The job has successfully completed")
    assert events[-1].created_at is not None
    assert events[-1].created_at <= events[0].created_at
    newer = hook.list_events(job.id, after=events[1].id).data
    assert [e.id for e in newer] == [e.id for e in events[2:]]
    checkpoints = list(hook.iter_checkpoints(job.id))
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.id}:{checkpoints[0].step_number}"

    # DPO with full training, continued from a checkpoint; cancelled.
    prefs = hook.upload_file(jsonl(dpo_lines(12)), filename="prefs.jsonl")
    follow, _ = hook.ensure_job(
        request(prefs.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}),
        identity=JobIdentity("tag-follow"),
        state=FakeStateStore(),
        service_options={"training_type": "full", "from_checkpoint": checkpoints[0].fine_tuned_model_checkpoint},
    )
    assert follow.model_extra["from_checkpoint"] == checkpoints[0].fine_tuned_model_checkpoint
    assert follow.method_type == "dpo"
    assert hook.cancel_job(follow.id).status == FineTuningJobStatus.CANCELLING
    assert hook.get_job(follow.id).status == FineTuningJobStatus.CANCELLED
    with pytest.raises(UnsupportedCapabilityError):
        hook.pause_job(follow.id)
    expected = {(m, t) for m, t, _ in ROUTES if not t.startswith("/files/multipart/")} - {  # test_together_multipart
        ("DELETE", "/files/{id}"),
        ("GET", "/files/{id}/content"),
        ("GET", "/files"),
    }
    assert expected <= conformance.seen
    assert ("PUT", "presigned") in conformance.seen


def test_the_async_hook_drives_a_whole_lifecycle(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, clock: ManualClock, conformance: TogetherConformance
) -> None:
    hook = together_hook(monkeypatch, server, "ft_together_async")

    async def lifecycle() -> None:
        uploaded = await hook.aupload_file(jsonl(training_lines(20)), filename="train.jsonl")
        assert uploaded.status == "processed"
        backend = hook.backend
        assert isinstance(backend, TogetherBackend)
        asked = request(uploaded.id)
        assert (await backend.acheck_price(hook, asked, LORA)).allowed_to_proceed is True
        job, created = await hook.aensure_job(
            asked, identity=JobIdentity("tag-async"), state=FakeStateStore(), service_options=LORA
        )
        assert created
        clock.advance(3600)
        assert (await hook.aget_job(job.id)).status == FineTuningJobStatus.SUCCEEDED
        assert (await hook.alist_events(job.id)).data
        assert (await hook.alist_checkpoints(job.id)).data
        assert [f.id async for f in hook.aiter_files(purpose="fine-tune")] == [uploaded.id]
        second, _ = await hook.aensure_job(
            asked, identity=JobIdentity("tag-async-2"), state=FakeStateStore(), service_options=LORA
        )
        assert (await hook.acancel_job(second.id)).status == FineTuningJobStatus.CANCELLING

    asyncio.run(lifecycle())
    assert ("POST", "/fine-tunes") in conformance.seen


def test_bad_input_is_refused_by_name_before_anything_is_sent(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer
) -> None:
    hook = together_hook(monkeypatch, server)
    backend = hook.backend
    assert isinstance(backend, TogetherBackend)
    with pytest.raises(InvalidRequestError, match=r"service_options\.lora_r"):
        backend.job_body(request("file-1"), {"lora_r": "eight"})
    with pytest.raises(InvalidRequestError, match=r"service_options\.lora_rank"):
        hook.ensure_job(request("file-1"), identity=JobIdentity("tag-bad"), service_options={"lora_rank": 8})
    with pytest.raises(InvalidRequestError, match="lora_r and lora_alpha"):
        backend.job_body(request("file-1"))
    multiplier = {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 2.0}}}
    with pytest.raises(InvalidRequestError, match="absolute learning rate"):
        backend.job_body(request("file-1", method=multiplier), LORA)
    with pytest.raises(InvalidRequestError, match="metadata"):
        backend.job_body(request("file-1", metadata={"team": "ml"}), LORA)
    with pytest.raises(InvalidRequestError, match="suffix"):
        backend.job_body(request("file-1", suffix="x" * 41), LORA)
    with pytest.raises(InvalidRequestError, match="reinforcement"):
        backend.job_body(
            request(
                "file-1",
                method={
                    "type": "reinforcement",
                    "reinforcement": {
                        "grader": {
                            "type": "string_check",
                            "name": "g",
                            "input": "a",
                            "reference": "b",
                            "operation": "eq",
                        }
                    },
                },
            ),
            LORA,
        )
    with pytest.raises(InvalidRequestError, match=r"\.parquet or \.csv"):
        hook.upload_file(b"{}", filename="train.txt")
    assert counters(server) == {}


def test_a_file_the_service_finds_invalid_is_refused_after_its_check(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer
) -> None:
    hook = together_hook(monkeypatch, server)
    with pytest.raises(InvalidRequestError, match=r"Together's check of bad\.jsonl"):
        hook.upload_file(jsonl([{"nothing": "useful"}] * 3), filename="bad.jsonl")


def test_the_conformance_check_catches_what_the_sdk_would_not_send() -> None:
    from tests.backends.together_conformance import create_problems, estimate_problems

    good = {
        "training_file": "file-1",
        "model": MODEL,
        "n_epochs": 1,
        "learning_rate": 1e-5,
        "warmup_ratio": 0.0,
        "max_grad_norm": 1.0,
        "weight_decay": 0.0,
        "training_method": {"method": "sft", "train_on_inputs": "auto"},
        "training_type": {"type": "Lora", "lora_r": 8, "lora_alpha": 16},
    }
    assert create_problems(good) == []
    assert create_problems({**good, "learning_rate_multiplier": 2.0})
    assert create_problems({k: v for k, v in good.items() if k != "learning_rate"})
    assert estimate_problems({"training_file": "file-1", "training_type": {"type": "Lora"}})
    assert estimate_problems({"training_file": "file-1", "suffix": "x"})


def test_a_found_job_is_matched_on_the_fields_it_echoes_and_jobs_that_echo_none_as_before() -> None:
    from airflow_provider_finetune.models import FineTuningJob
    from airflow_provider_finetune.once import _same_request_fields

    body = {"model": MODEL, "training_file": "file-1", "n_epochs": 3, "training_type": {"type": "Lora", "lora_r": 8}}
    azure_like = FineTuningJob.model_validate(
        {"id": "j", "status": "running", "model": MODEL, "training_file": "file-1"}
    )
    assert _same_request_fields(azure_like, body)  # nothing more echoed: model, files and seed decide, as before

    def together_job(**echoed: Any) -> FineTuningJob:
        data = {"id": "j", "status": "running", "model": MODEL, "training_file": "file-1", **echoed}
        return FineTuningJob.model_validate(job_from({**data, "created_at": "2026-11-30T10:00:00Z"}))

    reported = {"type": "Lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
    assert _same_request_fields(together_job(n_epochs=3, training_type=reported), body)
    assert not _same_request_fields(together_job(n_epochs=4, training_type=reported), body)
    assert not _same_request_fields(together_job(n_epochs=3, training_type={**reported, "lora_r": 16}), body)
    assert not _same_request_fields(together_job(n_epochs=3, suffix="other"), {**body, "suffix": "weekly"})


def test_a_client_chosen_job_id_is_refused(monkeypatch: pytest.MonkeyPatch, server: EmulatorServer) -> None:
    backend = together_hook(monkeypatch, server).backend
    with pytest.raises(UnsupportedCapabilityError, match="job ids chosen by the client"):
        backend.create_prepared_job({"model": MODEL, "training_file": "file-1"}, job_id="ft-mine")


def test_no_job_page_is_linked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_FT_T", json.dumps({"conn_type": "finetune", "password": KEY, "extra": {"service": "together"}})
    )
    assert FineTuningHook("ft_t").job_url("ft-123") is None


def test_a_completed_job_s_model_answers_chat_completions(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, clock: ManualClock
) -> None:
    hook = together_hook(monkeypatch, server)
    uploaded = hook.upload_file(jsonl(training_lines(20)), filename="train.jsonl")
    job, _ = hook.ensure_job(
        request(uploaded.id), identity=JobIdentity("tag-chat"), state=FakeStateStore(), service_options=LORA
    )
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    running = hook.get_job(job.id).fine_tuned_model
    assert running is not None
    with pytest.raises(NotFoundError):  # named from the start, served once the job completed
        hook.chat_completion({"model": running, "messages": messages})
    clock.advance(3600)
    answer = hook.chat_completion({"model": running, "messages": messages})
    assert answer["model"] == running
    assert answer["choices"][0]["message"]["content"]
    assert hook.chat_completion({"model": MODEL, "messages": messages})["model"] == MODEL
