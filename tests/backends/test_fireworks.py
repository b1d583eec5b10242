"""The Fireworks backend through the hook, sync and async, against the emulator over real HTTP.

Every request the backend sends is checked against the fireworks-ai SDK's routes and request types
(:class:`tests.backends.test_fireworks_conformance.FireworksConformance`).
"""

from __future__ import annotations

import hashlib
import io
import json
import typing
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_finetune.backends import fireworks as fw
from airflow_provider_finetune.backends.fireworks import FIREWORKS_STATES, FireworksBackend, upload_dataset
from airflow_provider_finetune.client import ConnectionSettings, RetryPolicy
from airflow_provider_finetune.emulator import EmulatorServer, ManualClock
from airflow_provider_finetune.exceptions import InvalidRequestError, NotFoundError, UnsupportedCapabilityError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.models import CreateFineTuningJobRequest, build_request
from airflow_provider_finetune.statuses import FineTuningJobStatus
from tests.backends.test_fireworks_conformance import FireworksConformance
from tests.emulator.conftest import API_KEY, jsonl, training_lines

ACCOUNT = "acme"
BASE_MODEL = "accounts/fireworks/models/llama-v3p1-8b-instruct"
TRAIN = jsonl(training_lines(12))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> Iterator[EmulatorServer]:
    from airflow_provider_finetune.emulator import EmulatorConfig

    with EmulatorServer(EmulatorConfig(api_key=API_KEY, clock=clock, seed=7)) as running:
        yield running


@pytest.fixture
def checker() -> Iterator[FireworksConformance]:
    found = FireworksConformance()
    yield found
    assert not found.problems, "requests that do not conform to Fireworks' request types:\n" + "\n".join(found.problems)


@pytest.fixture
def hook(server: EmulatorServer, checker: FireworksConformance, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    conn = {
        "conn_type": "finetune",
        "host": server.url,
        "password": API_KEY,
        "extra": {"service": "fireworks", "account_id": ACCOUNT},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FT_FIREWORKS", json.dumps(conn))
    made = FineTuningHook("ft_fireworks", retry_policy=RetryPolicy(initial_delay=0, max_delay=0, jitter=0))
    made.client.event_hooks["request"].append(checker)
    yield made
    made.close()


def upload(hook: Any, data: bytes = TRAIN) -> str:
    return upload_dataset(hook, io.BytesIO(data), "train.jsonl", len(data), hashlib.sha256(data).hexdigest(), 12)


def request(**fields: Any) -> CreateFineTuningJobRequest:
    if (fields.get("method") or {}).get("type") == "reinforcement" and "grader" not in str(fields):
        # The canonical request insists on OpenAI's grader; Fireworks grades with an evaluator resource instead.
        from airflow_provider_finetune.models import MethodRequest

        method = MethodRequest.model_construct(type="reinforcement", reinforcement=None)
        return CreateFineTuningJobRequest.model_construct(
            model=BASE_MODEL, method=method, **{k: v for k, v in fields.items() if k != "method"}
        )
    return build_request(CreateFineTuningJobRequest, {"model": BASE_MODEL, **fields})


def create(hook: Any, dataset: str, job_id: str, options: dict[str, Any] | None = None, **fields: Any) -> Any:
    backend = hook.backend
    body = backend.job_body(request(training_file=dataset, **fields), options)
    return hook._call(backend.create_prepared_job(body, job_id=job_id))


# -- the connection --------------------------------------------------------------------------------------------


def test_the_connection_names_the_account(hook: Any, server: EmulatorServer) -> None:
    assert isinstance(hook.backend, FireworksBackend)
    assert hook.backend.settings.base_url == f"{server.url}/v1/accounts/{ACCOUNT}"


def test_a_connection_without_account_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "finetune", "password": "fw-key-12345", "extra": {"service": "fireworks"}}
    monkeypatch.setenv("AIRFLOW_CONN_FT_NO_ACCOUNT", json.dumps(conn))
    with pytest.raises(InvalidRequestError, match="account_id"):
        _ = FineTuningHook("ft_no_account").settings


def test_the_default_host_is_fireworks(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "finetune", "password": "fw-key-12345", "extra": {"service": "fireworks", "account_id": "a1"}}
    monkeypatch.setenv("AIRFLOW_CONN_FT_DEFAULT_HOST", json.dumps(conn))
    assert FineTuningHook("ft_default_host").settings.base_url == "https://api.fireworks.ai/v1/accounts/a1"


# -- datasets --------------------------------------------------------------------------------------------------


def test_a_dataset_is_created_uploaded_validated_and_ready(hook: Any, server: EmulatorServer) -> None:
    name = upload(hook)
    digest = hashlib.sha256(TRAIN).hexdigest()
    assert name == f"accounts/{ACCOUNT}/datasets/ds-{digest[:24]}"
    record = server.emulator.store.get("fw_dataset", f"{ACCOUNT}/ds-{digest[:24]}")
    assert record["state"] == "READY"
    assert server.emulator.files.content(record["file_id"]) == TRAIN
    requests = dict(server.emulator.counters.requests)
    assert upload(hook) == name  # the same content again: the READY dataset is reused, nothing is sent but a GET
    again = server.emulator.counters.requests
    created = "POST /v1/accounts/{account_id}/datasets"
    assert again[created] == requests[created] == 1


def test_a_large_file_goes_through_the_signed_upload_endpoint_without_the_key(
    hook: Any, server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fw, "DIRECT_UPLOAD_LIMIT", 100)
    sent: list[httpx.Request] = []
    real = fw._put_request

    def spy(*args: Any) -> Any:
        built = real(*args)
        sent.append(built)
        return built

    monkeypatch.setattr(fw, "_put_request", spy)
    name = upload(hook)
    assert name.startswith(f"accounts/{ACCOUNT}/datasets/ds-")
    assert len(sent) == 1
    assert "/_emulator/fireworks/signed/" in str(sent[0].url)
    assert "authorization" not in sent[0].headers  # the signed URL is its own credential
    assert API_KEY not in str(sent[0].headers)
    counters = server.emulator.counters.requests
    assert counters["POST /v1/accounts/{account_id}/datasets/{dataset_ref}"] == 2  # getUploadEndpoint, validate


# -- jobs ------------------------------------------------------------------------------------------------------


def test_sync_lifecycle_through_the_hook(hook: Any, clock: ManualClock, server: EmulatorServer) -> None:
    dataset = upload(hook)
    job = create(hook, dataset, "ft-sync-0", {"learning_rate": 1e-4, "lora_rank": 8, "epochs": 2, "early_stop": True})
    assert job.id == f"accounts/{ACCOUNT}/supervisedFineTuningJobs/ft-sync-0"
    assert job.model_extra["client_job_id"] == "supervisedFineTuningJobs/ft-sync-0"
    assert job.status in (FineTuningJobStatus.VALIDATING_FILES, FineTuningJobStatus.QUEUED)
    assert job.training_file == dataset
    record = next(iter(server.emulator.store.records("fw_job").values()))
    assert record["body"]["learningRate"] == 1e-4
    assert record["body"]["loraRank"] == 8

    clock.advance(20)
    running = hook.get_job(job.id)
    assert running.status == FineTuningJobStatus.RUNNING
    assert running.model_extra["fireworks_state"] == "JOB_STATE_RUNNING"
    assert [j.id for j in hook.list_jobs(limit=10).data] == [job.id]
    events = hook.list_events(job.id).data
    assert len(events) == 1
    assert "% done" in events[0].message

    with pytest.raises(UnsupportedCapabilityError, match="Fireworks does not support pausing"):
        hook.pause_job(job.id)
    hook.cancel_job(job.id)
    clock.advance(5)
    cancelled = hook.get_job(job.id)
    assert cancelled.status == FineTuningJobStatus.CANCELLED
    assert cancelled.fine_tuned_model is None


def test_a_finished_job_reports_its_output_model(hook: Any, clock: ManualClock) -> None:
    dataset = upload(hook)
    job = create(hook, dataset, "ft-done-0", {"output_model": "support-v2"})
    clock.advance(100_000)
    done = hook.get_job(job.id)
    assert done.status == FineTuningJobStatus.SUCCEEDED
    assert done.fine_tuned_model == f"accounts/{ACCOUNT}/models/support-v2"
    assert done.finished_at is not None


def test_a_fine_tuned_model_answers_through_fireworks_inference(hook: Any, clock: ManualClock) -> None:
    dataset = upload(hook)
    job = create(hook, dataset, "ft-chat-0", {"output_model": "support-chat"})
    body = {"model": f"accounts/{ACCOUNT}/models/support-chat", "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(NotFoundError, match="not ready"):
        hook.chat_completion(body)
    clock.advance(100_000)
    assert hook.get_job(job.id).fine_tuned_model == body["model"]
    answer = hook.chat_completion(body)
    assert answer["model"] == body["model"]
    assert answer["choices"][0]["message"]["content"]
    assert hook.backend.chat_completion(body).path.endswith("/inference/v1/chat/completions")


def test_resume_of_a_paused_job(hook: Any, clock: ManualClock, server: EmulatorServer) -> None:
    dataset = upload(hook)
    job = create(hook, dataset, "ft-resume-0")
    clock.advance(20)
    sim_id = next(iter(server.emulator.store.records("fw_job").values()))["sim_id"]
    server.emulator.jobs.pause(sim_id)  # Fireworks pauses a job itself; its API has no pause
    clock.advance(30)
    assert hook.get_job(job.id).status == FineTuningJobStatus.PAUSED
    hook.resume_job(job.id)
    clock.advance(100_000)
    assert hook.get_job(job.id).status == FineTuningJobStatus.SUCCEEDED


def test_a_taken_job_id_is_a_conflict_not_a_second_job(hook: Any, server: EmulatorServer) -> None:
    from airflow_provider_finetune.exceptions import ConflictError

    dataset = upload(hook)
    create(hook, dataset, "ft-once-0")
    hook._retry_policy = RetryPolicy(max_retries=0, initial_delay=0, max_delay=0, jitter=0)
    monkey = FineTuningHook(hook.finetune_conn_id, max_retries=0)
    with pytest.raises(ConflictError):
        create(monkey, dataset, "ft-once-0")
    assert len(server.emulator.store.records("fw_job")) == 1


def test_dpo_and_reinforcement_jobs_go_to_their_collections(hook: Any) -> None:
    dataset = upload(hook)
    dpo = create(hook, dataset, "dpo-0", {"epochs": 1}, method={"type": "dpo"})
    assert dpo.id == f"accounts/{ACCOUNT}/dpoJobs/dpo-0"
    assert dpo.method is not None
    assert dpo.method.type == "dpo"
    rft = create(
        hook, dataset, "rft-0", {"evaluator": f"accounts/{ACCOUNT}/evaluators/exact"}, method={"type": "reinforcement"}
    )
    assert rft.id == f"accounts/{ACCOUNT}/reinforcementFineTuningJobs/rft-0"
    hook.cancel_job(dpo.id)
    hook.cancel_job(rft.id)


async def test_async_lifecycle_through_the_hook(hook: Any, clock: ManualClock, checker: FireworksConformance) -> None:
    dataset = await fw.aupload_dataset(
        hook, io.BytesIO(TRAIN), "train.jsonl", len(TRAIN), hashlib.sha256(TRAIN).hexdigest(), 12
    )
    client = await hook.aclient()
    client.event_hooks["request"].append(checker.acall)
    backend = hook.backend
    body = backend.job_body(request(training_file=dataset), {"epochs": 1})
    job = await hook._acall(backend.create_prepared_job(body, job_id="ft-async-0"))
    clock.advance(20)
    assert (await hook.aget_job(job.id)).status == FineTuningJobStatus.RUNNING
    assert (await hook.alist_events(job.id)).data
    with pytest.raises(UnsupportedCapabilityError):
        await hook.apause_job(job.id)
    await hook.acancel_job(job.id)
    clock.advance(5)
    assert (await hook.aget_job(job.id)).status == FineTuningJobStatus.CANCELLED
    assert "supervised_fine_tuning_job.create" in checker.operations


# -- what is refused, before anything is sent ---------------------------------------------------------------------


def backend() -> FireworksBackend:
    return FireworksBackend(ConnectionSettings(base_url=f"https://api.fireworks.ai/v1/accounts/{ACCOUNT}"))


def test_learning_rate_multiplier_is_refused_naming_the_fireworks_option() -> None:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 2.0}}}
    with pytest.raises(InvalidRequestError) as caught:
        backend().job_body(request(training_file="ds-train", method=method))
    assert "learning_rate_multiplier" in str(caught.value)
    assert "learningRate" in str(caught.value)
    assert "service_options={'learning_rate'" in str(caught.value)
    with pytest.raises(InvalidRequestError, match="learning_rate"):
        backend().job_body(request(training_file="ds-train"), {"learning_rate_multiplier": 2.0})


def test_learning_rate_multiplier_is_refused_through_the_hook_before_any_request(
    hook: Any, server: EmulatorServer
) -> None:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 2.0}}}
    before = sum(server.emulator.counters.requests.values())
    with pytest.raises(InvalidRequestError, match="learning_rate"):
        hook.create_job({"model": BASE_MODEL, "training_file": "ds-train", "method": method})
    assert sum(server.emulator.counters.requests.values()) == before


@pytest.mark.parametrize(
    ("fields", "options", "wanted"),
    [
        ({"suffix": "weekly"}, None, "output_model"),
        ({"seed": 3}, None, "seed"),
        ({"metadata": {"team": "support"}}, None, "metadata"),
        ({}, {"lora_rank": "8"}, "must be an integer"),
        ({}, {"epochs": True}, "must be an integer"),
        ({}, {"learnig_rate": 1e-4}, "not a Fireworks option"),
        ({}, {"evaluator": "x"}, "supervised jobs do not take evaluator"),
        ({"method": {"type": "reinforcement"}}, None, "need an evaluator"),
        (
            {
                "method": {
                    "type": "reinforcement",
                    "reinforcement": {
                        "grader": {
                            "type": "string_check",
                            "name": "g",
                            "input": "{{sample.output_text}}",
                            "reference": "x",
                            "operation": "eq",
                        }
                    },
                }
            },
            {"evaluator": "accounts/acme/evaluators/e"},
            "evaluator resource, not a grader",
        ),
        ({"validation_file": "ds-valid", "method": {"type": "dpo"}}, None, "DPO jobs take no evaluation dataset"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}}, None, "lossConfig"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}},
            {"epochs": 4},
            "contradicts",
        ),
        ({"validation_file": "ds-valid"}, {"evaluation_dataset": "ds-other"}, "contradicts the request"),
    ],
)
def test_what_fireworks_cannot_take_as_meant_is_refused(
    fields: dict[str, Any], options: dict[str, Any] | None, wanted: str
) -> None:
    with pytest.raises(InvalidRequestError, match=wanted):
        backend().job_body(request(training_file="ds-train", **fields), options)


def test_options_are_sent_as_the_api_takes_them() -> None:
    body = backend().job_body(
        request(training_file="ds-train", validation_file="ds-valid"),
        {"learning_rate": 2e-4, "lora_rank": 16, "epochs": 3, "batch_size_samples": 8, "early_stop": True},
    )
    assert body == {
        "collection": "supervisedFineTuningJobs",
        "dataset": f"accounts/{ACCOUNT}/datasets/ds-train",
        "evaluationDataset": f"accounts/{ACCOUNT}/datasets/ds-valid",
        "baseModel": BASE_MODEL,
        "learningRate": 2e-4,
        "loraRank": 16,
        "epochs": 3,
        "batchSizeSamples": 8,
        "earlyStop": True,
    }
    dpo = backend().job_body(request(training_file="ds-train", method={"type": "dpo"}), {"learning_rate": 1e-5})
    assert dpo["trainingConfig"] == {"baseModel": BASE_MODEL, "learningRate": 1e-5}


def test_hyperparameters_that_mean_the_same_are_sent_under_fireworks_names() -> None:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 8}}}
    body = backend().job_body(request(training_file="ds-train", method=method), {"learning_rate": 1e-4})
    assert body["epochs"] == 3
    assert body["batchSizeSamples"] == 8  # examples per batch, as OpenAI's batch_size; batchSize counts tokens
    assert "batchSize" not in body
    auto = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": "auto"}}}
    assert backend().job_body(request(training_file="ds-train", method=auto))["trainingConfig"] == {
        "baseModel": BASE_MODEL
    }


def test_cancel_is_a_custom_method_never_a_delete() -> None:
    call = backend().job_call("POST", f"accounts/{ACCOUNT}/dpoJobs/dpo-1", "cancel")
    assert (call.method, call.path) == ("POST", "dpoJobs/dpo-1:cancel")
    resume = backend().job_call("POST", f"accounts/{ACCOUNT}/supervisedFineTuningJobs/ft-1", "resume")
    assert (resume.method, resume.path) == ("POST", "supervisedFineTuningJobs/ft-1:resume")
    with pytest.raises(UnsupportedCapabilityError):
        backend().job_call("POST", f"accounts/{ACCOUNT}/supervisedFineTuningJobs/ft-1", "pause")
    with pytest.raises(InvalidRequestError, match="account"):
        backend().job_call("GET", "accounts/someone-else/supervisedFineTuningJobs/ft-1")


# -- states ------------------------------------------------------------------------------------------------------


def test_every_published_state_is_mapped_one_by_one() -> None:
    from fireworks.types.supervised_fine_tuning_job import SupervisedFineTuningJob

    hint = SupervisedFineTuningJob.model_fields["state"].annotation
    literal = next(arg for arg in typing.get_args(hint) if typing.get_origin(arg) is typing.Literal)
    assert set(typing.get_args(literal)) == set(FIREWORKS_STATES)
    S = FineTuningJobStatus
    assert FIREWORKS_STATES["JOB_STATE_EARLY_STOPPED"] == S.SUCCEEDED
    assert FIREWORKS_STATES["JOB_STATE_EXPIRED"] == S.FAILED
    assert FIREWORKS_STATES["JOB_STATE_PAUSED"] == S.PAUSED
    assert FIREWORKS_STATES["JOB_STATE_WRITING_RESULTS"] == S.RUNNING
    assert FIREWORKS_STATES["JOB_STATE_CANCELLING"] == S.CANCELLING
    assert FIREWORKS_STATES["JOB_STATE_VALIDATING"] == S.VALIDATING_FILES
    # Only states that wait for compute are "queued": not paused, expired, early-stopped or writing results.
    queued = {state for state, status in FIREWORKS_STATES.items() if status == S.QUEUED}
    assert queued == {"JOB_STATE_CREATING", "JOB_STATE_PENDING", "JOB_STATE_RE_QUEUEING"}


@pytest.mark.parametrize(
    ("state", "status", "terminal"),
    [
        ("JOB_STATE_EARLY_STOPPED", "succeeded", True),
        ("JOB_STATE_EXPIRED", "failed", True),
        ("JOB_STATE_IDLE", "idle", False),
        ("JOB_STATE_DELETING", "deleting", False),
        ("JOB_STATE_SOMETHING_NEW", "JOB_STATE_SOMETHING_NEW", False),
    ],
)
def test_a_job_reads_its_state(state: str, status: str, terminal: bool) -> None:
    from airflow_provider_finetune.models import FineTuningJob

    data = {
        "name": f"accounts/{ACCOUNT}/supervisedFineTuningJobs/ft-1",
        "state": state,
        "dataset": f"accounts/{ACCOUNT}/datasets/ds-1",
        "baseModel": BASE_MODEL,
        "outputModel": f"accounts/{ACCOUNT}/models/ft-1",
        "createTime": "2026-01-04T10:00:00.123456789Z",
    }
    job = FineTuningJob.model_validate(backend().job_from(data))
    assert job.status.value == status
    assert job.status.is_terminal() is terminal
    assert job.created_at == 1767520800
    assert job.fine_tuned_model == (f"accounts/{ACCOUNT}/models/ft-1" if status == "succeeded" else None)
    if state == "JOB_STATE_EXPIRED":
        assert job.error is not None
        assert job.error.code == "EXPIRED"


# -- once-only by the id the client chooses ---------------------------------------------------------------------


def test_ensure_job_creates_once_under_a_client_chosen_id(hook: Any, server: EmulatorServer) -> None:
    from airflow_provider_finetune.once import JobIdentity

    dataset = upload(hook)
    options = {"epochs": 1, "learning_rate": 1e-4}
    identity = JobIdentity("dag=d,task=t,run=r,map=-1")
    job, created = hook.ensure_job(request(training_file=dataset), identity=identity, service_options=options)
    assert created
    assert job.id.startswith(f"accounts/{ACCOUNT}/supervisedFineTuningJobs/ft-")
    assert job.id.endswith("-0")
    again, created_again = hook.ensure_job(request(training_file=dataset), identity=identity, service_options=options)
    assert (again.id, created_again) == (job.id, False)
    assert len(server.emulator.store.records("fw_job")) == 1
    record = next(iter(server.emulator.store.records("fw_job").values()))
    assert record["body"]["learningRate"] == 1e-4


def test_the_options_of_a_create_are_its_own_not_the_next_one_s(hook: Any, server: EmulatorServer) -> None:
    """A backend holds no options between calls: a create without them sends none, whatever came before."""
    dataset = upload(hook)
    first = hook.create_job(request(training_file=dataset), service_options={"learning_rate": 1e-4, "epochs": 2})
    second = hook.create_job(request(training_file=dataset))
    sent = {record["id"]: record["body"] for record in server.emulator.store.records("fw_job").values()}
    bodies = [next(b for i, b in sent.items() if job.id.endswith(i)) for job in (first, second)]
    assert (bodies[0]["learningRate"], bodies[0]["epochs"]) == (1e-4, 2)
    assert "learningRate" not in bodies[1]
    assert "epochs" not in bodies[1]


async def test_async_ensure_job_after_a_cancelled_job_makes_the_next_generation(
    hook: Any, server: EmulatorServer, clock: ManualClock
) -> None:
    from airflow_provider_finetune.once import JobIdentity

    dataset = upload(hook)
    identity = JobIdentity("dag=d,task=t,run=r2,map=-1")
    first, _ = await hook.aensure_job(request(training_file=dataset, method={"type": "dpo"}), identity=identity)
    assert "/dpoJobs/ft-" in first.id
    await hook.acancel_job(first.id)
    clock.advance(5)
    second, created = await hook.aensure_job(request(training_file=dataset, method={"type": "dpo"}), identity=identity)
    assert created
    assert second.id == first.id[: -len("0")] + "1"
    assert len(server.emulator.store.records("fw_job")) == 2


def test_resume_through_the_operator_while_pause_is_refused_before_any_request(
    hook: Any, clock: ManualClock, server: EmulatorServer
) -> None:
    from airflow_provider_finetune.operators.finetune import FineTuningJobPauseOperator, FineTuningJobResumeOperator
    from tests.operators.conftest import FakeTI

    assert hook.backend.supports("resume")
    assert not hook.backend.supports("pause")
    job = create(hook, upload(hook), "ft-resume-op-0")
    clock.advance(20)
    sim_id = next(iter(server.emulator.store.records("fw_job").values()))["sim_id"]
    server.emulator.jobs.pause(sim_id)
    clock.advance(30)
    before = sum(server.emulator.counters.requests.values())

    pause = FineTuningJobPauseOperator(task_id="pause", job_id=job.id, finetune_conn_id="ft_fireworks")
    with pytest.raises(UnsupportedCapabilityError) as info:
        pause.execute({"ti": FakeTI()})
    assert info.value.capability == "pause"
    assert "\n" not in str(info.value)
    assert "Fireworks" in str(info.value)
    assert sum(server.emulator.counters.requests.values()) == before

    resume = FineTuningJobResumeOperator(task_id="resume", job_id=job.id, finetune_conn_id="ft_fireworks")
    resume.hook.client.event_hooks["request"].append(hook.client.event_hooks["request"][-1])
    assert resume.execute({"ti": FakeTI()}) in ("queued", "running")
    clock.advance(100_000)
    assert hook.get_job(job.id).status == FineTuningJobStatus.SUCCEEDED
