"""The Together backend through the hook, sync and async, against the emulator's Together dialect over HTTP.

Every request the backend sends is checked against Together's published request types (the SDK's, see
``together_conformance``); the price estimate refuses a job before any create; a lost create is found again by
the request's own fields; the crash window that remains is shown exactly.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from airflow_provider_finetune.backends.together import (
    OPTION_FIELDS,
    TOGETHER_STATUSES,
    PriceRefusedError,
    TogetherBackend,
    job_from,
)
from airflow_provider_finetune.core.client import RetryPolicy
from airflow_provider_finetune.core.statuses import FineTuningJobStatus
from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer, ManualClock
from airflow_provider_finetune.exceptions import InvalidRequestError, NotFoundError, UnsupportedCapabilityError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.models import CreateFineTuningJobRequest, build_request
from airflow_provider_finetune.rules.once import JobIdentity
from tests.backends.together_conformance import LAGS, ROUTES, TogetherConformance, operations, sdk_spells
from tests.emulator.conftest import dpo_lines, jsonl, training_lines
from tests.hook_doors import async_call, async_items
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

    store, astore = TogetherBackend.make_storage_client, TogetherBackend.make_async_storage_client

    def make_storage_client(self: TogetherBackend, timeout: Any, **kwargs: Any) -> httpx.Client:
        client = store(self, timeout, **kwargs)
        client.event_hooks["request"].append(sync_hook)
        return client

    def make_async_storage_client(self: TogetherBackend, timeout: Any, **kwargs: Any) -> httpx.AsyncClient:
        client = astore(self, timeout, **kwargs)
        client.event_hooks["request"].append(async_hook)
        return client

    monkeypatch.setattr(TogetherBackend, "make_client", make_client)
    monkeypatch.setattr(TogetherBackend, "make_async_client", make_async_client)
    monkeypatch.setattr(TogetherBackend, "make_storage_client", make_storage_client)
    monkeypatch.setattr(TogetherBackend, "make_async_storage_client", make_async_storage_client)
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
    estimate = hook.run_flow(backend.price_flow(asked, LORA))
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
    # The price the estimate gave, in US dollars (Together reports nano-dollars).
    assert (done.model_extra or {})["total_price"] == pytest.approx(estimate.estimated_total_price)
    assert (done.model_extra or {})["together_total_price"] == round(estimate.estimated_total_price * 1e9)
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
    assert {
        ("POST", "/files"),
        ("POST", "/files/{id}/preprocess"),
        ("GET", "/files/{id}"),
        ("POST", "/fine-tunes/estimate-price"),
        ("POST", "/fine-tunes"),
        ("GET", "/fine-tunes"),
        ("GET", "/fine-tunes/{id}"),
        ("GET", "/fine-tunes/{id}/events"),
        ("GET", "/fine-tunes/{id}/checkpoints"),
        ("POST", "/fine-tunes/{id}/cancel"),
    } <= conformance.described


def test_the_async_hook_drives_a_whole_lifecycle(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, clock: ManualClock, conformance: TogetherConformance
) -> None:
    hook = together_hook(monkeypatch, server, "ft_together_async")

    async def lifecycle() -> None:
        uploaded = await async_call(hook, "upload_file", jsonl(training_lines(20)), filename="train.jsonl")
        assert uploaded.status == "processed"
        backend = hook.backend
        assert isinstance(backend, TogetherBackend)
        asked = request(uploaded.id)
        assert (await hook.arun_flow(backend.price_flow(asked, LORA))).allowed_to_proceed is True
        job, created = await async_call(
            hook, "ensure_job", asked, identity=JobIdentity("tag-async"), state=FakeStateStore(), service_options=LORA
        )
        assert created
        clock.advance(3600)
        assert (await hook.aget_job(job.id)).status == FineTuningJobStatus.SUCCEEDED
        assert (await hook.alist_events(job.id)).data
        assert (await async_call(hook, "list_checkpoints", job.id)).data
        assert [f.id for f in await async_items(hook, "iter_files", purpose="fine-tune")] == [uploaded.id]
        second, _ = await async_call(
            hook, "ensure_job", asked, identity=JobIdentity("tag-async-2"), state=FakeStateStore(), service_options=LORA
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
    from airflow_provider_finetune.rules.once import _same_request_fields

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


# -- what reaches the request as given ----------------------------------------------------------------------

API = "https://api.together.test/v1"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> FineTuningHook:
    """A hook on a Together connection whose HTTP the test answers at the transport (respx)."""
    conn = {"conn_type": "finetune", "host": API, "password": KEY, "extra": {"service": "together"}}
    monkeypatch.setenv("AIRFLOW_CONN_FT_TOGETHER_OFFLINE", json.dumps(conn))
    return FineTuningHook("ft_together_offline", retry_policy=RetryPolicy(initial_delay=0, max_delay=0, jitter=0))


def backend_of(hook: FineTuningHook) -> TogetherBackend:
    backend = hook.backend
    assert isinstance(backend, TogetherBackend)
    return backend


@pytest.mark.parametrize(("given", "sent"), [(False, False), (True, True), ("auto", "auto"), (None, "auto")])
def test_train_on_inputs_reaches_the_create_and_the_estimate_as_given(
    offline: FineTuningHook, given: Any, sent: Any
) -> None:
    backend = backend_of(offline)
    options = LORA if given is None else {**LORA, "train_on_inputs": given}
    body = backend.job_body(request("file-1"), options)
    assert body["training_method"] == {"method": "sft", "train_on_inputs": sent}
    assert backend.price_call(body).json["training_method"] == {"method": "sft", "train_on_inputs": sent}


def test_train_on_inputs_false_reaches_the_job(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, conformance: TogetherConformance
) -> None:
    hook = together_hook(monkeypatch, server)
    uploaded = hook.upload_file(jsonl(training_lines(20)), filename="train.jsonl")
    options = {**LORA, "train_on_inputs": False}
    job, created = hook.ensure_job(
        request(uploaded.id), identity=JobIdentity("tag-inputs"), state=FakeStateStore(), service_options=options
    )
    assert created
    assert (job.model_extra or {})["training_method"] == {"method": "sft", "train_on_inputs": False}


def test_train_on_inputs_is_refused_by_name_for_dpo(offline: FineTuningHook) -> None:
    dpo = request("file-1", method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}})
    with pytest.raises(InvalidRequestError, match=r"service_options\.train_on_inputs: .*supervised") as raised:
        backend_of(offline).job_body(dpo, {**LORA, "train_on_inputs": False})
    assert raised.value.field == "service_options.train_on_inputs"


# -- the price estimate, read as the SDK reads it -----------------------------------------------------------


def answer_estimate(router: respx.MockRouter, answer: Any) -> respx.Route:
    return router.post(f"{API}/fine-tunes/estimate-price").respond(200, json=answer)


def test_an_estimate_in_the_published_shape_is_read(offline: FineTuningHook) -> None:
    # Together's OpenAPI description of the answer: no estimation_available (the SDK reads it as available).
    published = {
        "estimated_total_price": 2.5,
        "allowed_to_proceed": True,
        "user_limit": 100.0,
        "estimated_train_token_count": 5_000_000.0,
        "estimated_eval_token_count": 0.0,
    }
    with respx.mock(assert_all_mocked=True) as router:
        route = answer_estimate(router, published)
        estimate = offline.run_flow(backend_of(offline).price_flow(request("file-1"), LORA))
    assert route.call_count == 1
    assert (estimate.estimated_total_price, estimate.allowed_to_proceed) == (2.5, True)
    assert estimate.to_xcom()["estimated_total_price"] == 2.5


def test_an_estimate_without_estimation_available_refuses_an_account_that_may_not_proceed(
    offline: FineTuningHook,
) -> None:
    with respx.mock(assert_all_mocked=True) as router:
        answer_estimate(router, {"estimated_total_price": 2.5, "allowed_to_proceed": False, "user_limit": 1.0})
        with pytest.raises(PriceRefusedError, match=r"estimated price is \$2\.50 \(the account's limit is \$1\.00\)"):
            offline.run_flow(backend_of(offline).price_flow(request("file-1"), LORA))


@pytest.mark.parametrize(
    "answer",
    [
        {},
        {"user_limit": 5.0, "estimated_train_token_count": 1000.0},
        {"estimation_available": True},
        {"estimated_total_price": "soon", "allowed_to_proceed": "maybe"},
        ["not", "an", "object"],
    ],
    ids=["empty", "no-price-no-verdict", "available-but-nothing", "unreadable", "not-an-object"],
)
def test_an_estimate_that_cannot_price_the_job_is_refused_naming_what_is_missing(
    offline: FineTuningHook, answer: Any
) -> None:
    with respx.mock(assert_all_mocked=True) as router:
        answer_estimate(router, answer)
        with pytest.raises(PriceRefusedError, match=r"no estimated_total_price and no allowed_to_proceed") as raised:
            offline.run_flow(backend_of(offline).price_flow(request("file-1"), LORA))
    assert raised.value.field == "estimated_total_price"


@pytest.mark.parametrize(
    ("answer", "price"),
    [
        ({"estimation_available": False, "unavailable_reason": "multimodal_dataset"}, None),
        ({"allowed_to_proceed": True}, None),
        ({"estimated_total_price": 0.75}, 0.75),
        ({"estimated_total_price": 0.75, "allowed_to_proceed": None, "currency": "USD"}, 0.75),
    ],
    ids=["unavailable", "allowed-price-unknown", "price-no-verdict", "null-and-new-fields"],
)
def test_an_estimate_that_lets_the_job_proceed_is_read_as_the_sdk_reads_it(
    offline: FineTuningHook, answer: Any, price: float | None
) -> None:
    with respx.mock(assert_all_mocked=True) as router:
        answer_estimate(router, answer)
        estimate = offline.run_flow(backend_of(offline).price_flow(request("file-1"), LORA))
    assert estimate.estimated_total_price == price


# -- a job from a checkpoint ----------------------------------------------------------------------------------


def test_full_training_from_a_checkpoint_sends_the_checkpoint_and_no_model(offline: FineTuningHook) -> None:
    from tests.backends.together_conformance import create_problems, description_problems, estimate_problems

    backend = backend_of(offline)
    body = backend.job_body(request("file-1"), {"training_type": "full", "from_checkpoint": "ft-1:10"})
    assert "model" not in body
    assert body["from_checkpoint"] == "ft-1:10"
    assert create_problems(body) == []
    assert description_problems("POST", "/fine-tunes", json_body=body)[1] == []
    estimate = backend.price_call(body).json
    assert estimate["from_checkpoint"] == "ft-1:10"
    assert estimate["model"] == ""  # as the SDK's create asks the price of a job from a checkpoint
    assert estimate_problems(estimate) == []
    assert description_problems("POST", "/fine-tunes/estimate-price", json_body=estimate)[1] == []


def test_a_job_from_a_checkpoint_whose_create_answer_was_lost_is_found_again(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, clock: ManualClock, conformance: TogetherConformance
) -> None:
    hook = together_hook(monkeypatch, server)
    uploaded = hook.upload_file(jsonl(training_lines(20)), filename="train.jsonl")
    base, _ = hook.ensure_job(
        request(uploaded.id), identity=JobIdentity("tag-base"), state=FakeStateStore(), service_options=LORA
    )
    clock.advance(3600)
    step = next(iter(hook.iter_checkpoints(base.id))).step_number
    options = {"training_type": "full", "from_checkpoint": f"{base.id}:{step}"}

    # Try 1 wrote its intent and its create reached Together; the answer was lost before the job id was kept.
    state = FakeStateStore({"intent": {"fingerprint": "try-1", "at": clock()}})
    made = hook.create_job(request(uploaded.id), service_options=options)
    assert made.model == MODEL  # the job names the model its checkpoint was trained from
    job, created = hook.ensure_job(
        request(uploaded.id), identity=JobIdentity("tag-from-checkpoint"), state=state, service_options=options
    )
    assert (job.id, created) == (made.id, False)
    assert len(list(hook.iter_jobs())) == 2

    # A job from another checkpoint of the same data is not taken for it.
    other = {"training_type": "full", "from_checkpoint": base.id}
    state = FakeStateStore({"intent": {"fingerprint": "try-1", "at": clock()}})
    fresh, created = hook.ensure_job(
        request(uploaded.id), identity=JobIdentity("tag-other"), state=state, service_options=other
    )
    assert created
    assert fresh.id != made.id


# -- Together's published OpenAPI description ---------------------------------------------------------------


def _sdk_create_body(**fields: Any) -> dict[str, Any]:
    """The body the SDK's create posts (``create_finetune_request``, dumped without None as ``create`` does it)."""
    from together.lib.resources.fine_tuning import create_finetune_request
    from together.types.finetune_model_limits import FinetuneModelLimits

    from airflow_provider_finetune.emulator.dialects.together import _LIMITS

    limits = FinetuneModelLimits.model_validate({**_LIMITS, "model_name": MODEL})
    made, _, _ = create_finetune_request(limits, training_file="file-1", **fields)
    body: dict[str, Any] = made.model_dump(exclude_none=True)
    return body


#: For each lag of the description, a request the SDK sends: (method, path, JSON body or form).
LAG_EXAMPLES: dict[str, tuple[str, str, Any]] = {
    "model_or_checkpoint": (
        "POST",
        "/fine-tunes",
        lambda: _sdk_create_body(from_checkpoint="ft-1:10", lora=False, train_on_inputs=True),
    ),
    "sdk_only_fields": (
        "POST",
        "/fine-tunes",
        lambda: _sdk_create_body(model=MODEL, lora=True, train_on_inputs=False, gradient_accumulation_steps=2),
    ),
    "train_on_inputs_auto": ("POST", "/fine-tunes/estimate-price", lambda: {
        "training_file": "file-1", "model": MODEL, "training_method": {"method": "sft", "train_on_inputs": "auto"}
    }),
    "sdk_upload": ("POST", "/files", lambda: {
        "purpose": "fine-tune", "file_name": "train.jsonl", "file_type": "jsonl", "checksum": "0" * 64
    }),
    "sdk_multipart": ("POST", "/files/multipart/abort", lambda: {"upload_id": "upload-1", "file_id": "file-1"}),
}  # fmt: skip


@pytest.mark.parametrize("lag", sorted(LAGS))
def test_each_lag_of_the_description_is_still_one(lag: str) -> None:
    """What the SDK sends fails the description as published and passes it once the lag is patched in."""
    from tests.backends.together_conformance import description_problems

    method, path, make = LAG_EXAMPLES[lag]
    sent = make()
    given = {"form": sent} if path == "/files" else {"json_body": sent}
    others = tuple(name for name in LAGS if name != lag)
    _, without = description_problems(method, path, lags=others, **given)
    assert without, f"the description no longer lags the SDK here: remove {lag!r} ({LAGS[lag].note})"
    assert description_problems(method, path, **given)[1] == []


def test_the_conformance_check_refuses_what_the_description_does_not_declare() -> None:
    from tests.backends.together_conformance import description_problems

    body = {"training_file": "file-1", "model": MODEL, "training_type": {"type": "Lora", "lora_r": 8, "lora_alpha": 16}}
    assert description_problems("POST", "/fine-tunes", json_body=body)[1] == []
    assert description_problems("POST", "/fine-tunes", json_body={**body, "lora_r": 8})[1]
    assert description_problems("POST", "/fine-tunes", json_body={**body, "from_checkpoint": "ft-1"})[1]
    assert description_problems("POST", "/fine-tunes", json_body={"training_file": "file-1"})[1]
    lora_in_full = {**body, "training_type": {"type": "Full", "lora_r": 8}}
    assert description_problems("POST", "/fine-tunes", json_body=lora_in_full)[1]
    assert description_problems("GET", "/fine-tunes", query={"limit": "10"})[1]
    assert description_problems("POST", "/fine-tunes/ft-1/pause")[1]


EVERY_SFT_OPTION: dict[str, Any] = {
    "training_type": "lora",
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_trainable_modules": "q_proj,v_proj",
    "learning_rate": 0.0002,
    "n_checkpoints": 3,
    "n_evals": 5,
    "max_seq_length": 4096,
    "packing": False,
    "warmup_ratio": 0.1,
    "max_grad_norm": 0.5,
    "weight_decay": 0.01,
    "gradient_accumulation_steps": 2,
    "train_on_inputs": False,
    "early_stopping_enabled": True,
    "early_stopping_patience": 2,
    "early_stopping_min_delta": 0.001,
    "early_stopping_warmup_evals": 1,
}
EVERY_DPO_OPTION: dict[str, Any] = {
    "training_type": "full",
    "learning_rate": 0.00005,
    "n_checkpoints": 2,
    "dpo_normalize_logratios_by_length": True,
    "rpo_alpha": 0.5,
    "simpo_gamma": 0.2,
}


def every_call(backend: TogetherBackend) -> list[tuple[str, Any]]:
    """Every call the backend makes of Together's API, with every option a create takes."""
    sft = request(
        "file-1",
        validation_file="file-2",
        suffix="weekly",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 16}}},
    )
    dpo = request("file-1", method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}})
    assert set(EVERY_SFT_OPTION) | set(EVERY_DPO_OPTION) | {"from_checkpoint"} == set(OPTION_FIELDS)
    bodies = [
        backend.job_body(sft, EVERY_SFT_OPTION),
        backend.job_body(dpo, EVERY_DPO_OPTION),
        backend.job_body(dpo, {**EVERY_DPO_OPTION, "from_checkpoint": "ft-1"}),
        backend.job_body(request("file-1"), {"training_type": "full", "from_checkpoint": "ft-1:10"}),
        backend.job_body(request("file-1"), {**LORA, "train_on_inputs": "auto"}),
    ]
    calls: list[tuple[str, Any]] = []
    for body in bodies:
        calls += [("create", backend.create_prepared_job(body)), ("estimate", backend.price_call(body))]
    calls += [
        ("list", backend.list_jobs(None, 100, None)),
        ("list states", backend.list_job_states(None, 100)),
        ("retrieve", backend.job_call("GET", "ft-1")),
        ("cancel", backend.job_call("POST", "ft-1", "cancel")),
        ("events", backend.events("ft-1", None, 100)),
        ("checkpoints", backend.checkpoints("ft-1", None, None)),
        ("upload", backend.create_file(io.BytesIO(b'{"text": "a"}\n'), "train.jsonl", "fine-tune")),
        ("file", backend.get_file("file-1")),
        ("files", backend.list_files("fine-tune", None, 100)),
        ("file content", backend.file_content("file-1")),
        ("file delete", backend.delete_file("file-1")),
        ("multipart initiate", backend.multipart_initiate({
            "file_name": "big.jsonl", "file_size": 6 * 2**30, "num_parts": 25, "purpose": "fine-tune",
            "file_type": "jsonl", "checksum": "0" * 64,
        })),
        ("multipart complete", backend.multipart_complete({
            "upload_id": "upload-1", "file_id": "file-1", "parts": [{"part_number": 1, "etag": "e1"}],
        })),
        ("multipart abort", backend.multipart_abort({"upload_id": "upload-1", "file_id": "file-1"})),
    ]  # fmt: skip
    return calls


def test_every_request_of_every_call_conforms_to_the_description_and_the_sdk(offline: FineTuningHook) -> None:
    backend = backend_of(offline)
    checker = TogetherConformance("/v1", "https://api.together.test")
    with httpx.Client(base_url=API + "/", headers={"Authorization": "Bearer k"}) as client:
        for name, call in every_call(backend):
            built = call.build(client)
            checker.check(built)
            assert not checker.problems, f"{name}: {checker.problems}"
    unused = {("POST", "/files/upload"), ("DELETE", "/fine-tunes/{id}")}  # the content goes by PUT; jobs are kept
    sent_in_the_upload = {("POST", "/files/{id}/preprocess")}  # by the upload's auth flow (the lifecycle tests)
    assert checker.described == {(op.method, op.template) for op in operations()} - unused - sent_in_the_upload


def test_the_price_of_a_model_together_does_not_fine_tune_is_refused_before_any_create(
    monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, conformance: TogetherConformance
) -> None:
    hook = together_hook(monkeypatch, server)
    uploaded = hook.upload_file(jsonl(training_lines(20)), filename="train.jsonl")
    asked = build_request(CreateFineTuningJobRequest, {"model": "no-such/model", "training_file": uploaded.id})
    with pytest.raises(NotFoundError, match="no-such/model"):
        hook.run_flow(backend_of(hook).price_flow(asked, LORA))
    assert counters(server)["POST /together/v1/fine-tunes/estimate-price"] == 1
    assert counters(server).get("POST /together/v1/fine-tunes", 0) == 0
