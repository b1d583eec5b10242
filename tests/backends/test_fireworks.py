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
from airflow_provider_finetune.backends.fireworks import FIREWORKS_STATES, FireworksBackend
from airflow_provider_finetune.core.client import ConnectionSettings, RetryPolicy
from airflow_provider_finetune.core.statuses import FineTuningJobStatus
from airflow_provider_finetune.emulator import EmulatorServer, ManualClock
from airflow_provider_finetune.exceptions import InvalidRequestError, NotFoundError, UnsupportedCapabilityError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.models import CreateFineTuningJobRequest, build_request
from tests.backends.test_fireworks_conformance import FireworksConformance
from tests.emulator.conftest import API_KEY, jsonl, training_lines
from tests.hook_doors import async_call, async_items

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
    digest = hashlib.sha256(data).hexdigest()
    return hook.run_flow(hook.backend.dataset_flow(io.BytesIO(data), "train.jsonl", len(data), digest, 12))


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
    return hook.call(backend.create_prepared_job(body, job_id=job_id))


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
    await hook.asettings()
    flow = hook.backend.dataset_flow(
        io.BytesIO(TRAIN), "train.jsonl", len(TRAIN), hashlib.sha256(TRAIN).hexdigest(), 12
    )
    dataset = await hook.arun_flow(flow)
    client = await hook.aclient()
    client.event_hooks["request"].append(checker.acall)
    backend = hook.backend
    body = backend.job_body(request(training_file=dataset), {"epochs": 1})
    job = await hook.acall(backend.create_prepared_job(body, job_id="ft-async-0"))
    clock.advance(20)
    assert (await hook.aget_job(job.id)).status == FineTuningJobStatus.RUNNING
    assert (await hook.alist_events(job.id)).data
    with pytest.raises(UnsupportedCapabilityError):
        await async_call(hook, "pause_job", job.id)
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
    from airflow_provider_finetune.rules.once import JobIdentity

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
    from airflow_provider_finetune.rules.once import JobIdentity

    dataset = upload(hook)
    identity = JobIdentity("dag=d,task=t,run=r2,map=-1")
    first, _ = await async_call(
        hook, "ensure_job", request(training_file=dataset, method={"type": "dpo"}), identity=identity
    )
    assert "/dpoJobs/ft-" in first.id
    await hook.acancel_job(first.id)
    clock.advance(5)
    second, created = await async_call(
        hook, "ensure_job", request(training_file=dataset, method={"type": "dpo"}), identity=identity
    )
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


# -- boolean options are booleans ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize(("option", "wire"), [("early_stop", "earlyStop"), ("eval_auto_carveout", "evalAutoCarveout")])
def test_a_boolean_option_reaches_the_request_as_given(
    hook: Any, server: EmulatorServer, option: str, wire: str, value: bool
) -> None:
    job = create(hook, upload(hook), f"ft-bool-{wire.lower()}-{str(value).lower()}", {option: value})
    sent = next(r["body"] for r in server.emulator.store.records("fw_job").values() if job.id.endswith(r["job_id"]))
    assert sent[wire] is value


@pytest.mark.parametrize("option", ["early_stop", "eval_auto_carveout"])
@pytest.mark.parametrize("value", [0, 1, "false", "true", None, [True]])
def test_a_boolean_option_takes_only_a_boolean(option: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError, match=f"service_options.{option}: must be true or false") as caught:
        backend().job_body(request(training_file="ds-train"), {option: value})
    assert caught.value.field == f"service_options.{option}"


@pytest.mark.parametrize(
    "option", ["lora_rank", "epochs", "batch_size_samples", "learning_rate", "max_context_length", "node_count"]
)
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_a_number(option: str, value: bool) -> None:
    method = {"type": "reinforcement"} if option == "node_count" else {"type": "supervised"}
    options = {option: value, "evaluator": "accounts/acme/evaluators/e"} if option == "node_count" else {option: value}
    with pytest.raises(InvalidRequestError, match=f"service_options.{option}: must be (an integer|a number)") as caught:
        backend().job_body(request(training_file="ds-train", method=method), options)
    assert caught.value.field == f"service_options.{option}"


@pytest.mark.parametrize(("option", "value"), [("lora_rank", 0), ("epochs", -1), ("learning_rate", 0.0)])
def test_a_number_that_must_be_positive_is_refused_naming_the_option(option: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError, match=f"service_options.{option}: must be positive") as caught:
        backend().job_body(request(training_file="ds-train"), {option: value})
    assert caught.value.field == f"service_options.{option}"


# -- the files API: Fireworks has datasets instead -------------------------------------------------------------------


FILES_CALLS = {
    "upload_file": lambda h: h.upload_file(TRAIN, filename="train.jsonl"),
    "list_files": lambda h: h.list_files(),
    "iter_files": lambda h: list(h.iter_files()),
    "get_file": lambda h: h.get_file("file-1"),
    "get_file_content": lambda h: h.get_file_content("file-1"),
    "delete_file": lambda h: h.delete_file("file-1"),
}
AFILES_CALLS = {
    "aupload_file": lambda h: async_call(h, "upload_file", TRAIN, filename="train.jsonl"),
    "alist_files": lambda h: async_call(h, "list_files"),
    "aiter_files": lambda h: async_items(h, "iter_files"),
    "aget_file": lambda h: async_call(h, "get_file", "file-1"),
    "aget_file_content": lambda h: async_call(h, "get_file_content", "file-1"),
    "adelete_file": lambda h: async_call(h, "delete_file", "file-1"),
}


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[httpx.Request]]]:
    """A Fireworks hook whose transport records every request and answers each one (it must see none)."""
    import respx

    conn = {
        "conn_type": "finetune",
        "host": "https://api.fireworks.ai",
        "password": "fw-files-key-12345",
        "extra": {"service": "fireworks", "account_id": ACCOUNT},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FT_FIREWORKS_FILES", json.dumps(conn))
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(404, json={"code": 5, "message": "no such route", "details": []})

    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        router.route().mock(side_effect=answer)
        made = FineTuningHook("ft_fireworks_files", max_retries=0)
        yield made, sent
        made.close()


def _assert_refused_naming_datasets(caught: pytest.ExceptionInfo[UnsupportedCapabilityError]) -> None:
    message = str(caught.value)
    assert caught.value.capability == "files"
    assert caught.value.service == "fireworks"
    assert "\n" not in message
    assert message.startswith("Fireworks does not support the files API")
    assert "dataset" in message
    assert "FineTuningFileUploadOperator" in message


@pytest.mark.parametrize("call", list(FILES_CALLS), ids=list(FILES_CALLS))
def test_files_calls_are_refused_before_any_request_naming_datasets(
    recorded: tuple[Any, list[httpx.Request]], call: str
) -> None:
    hook, sent = recorded
    with pytest.raises(UnsupportedCapabilityError) as caught:
        FILES_CALLS[call](hook)
    _assert_refused_naming_datasets(caught)
    assert sent == []


@pytest.mark.parametrize("call", list(AFILES_CALLS), ids=list(AFILES_CALLS))
async def test_async_files_calls_are_refused_before_any_request_naming_datasets(
    recorded: tuple[Any, list[httpx.Request]], call: str
) -> None:
    hook, sent = recorded
    with pytest.raises(UnsupportedCapabilityError) as caught:
        await AFILES_CALLS[call](hook)
    _assert_refused_naming_datasets(caught)
    assert sent == []


def test_fireworks_declares_it_has_no_files_api() -> None:
    assert not backend().supports("files")
    assert "files" not in backend().capabilities.names()


# -- progress lines read jobProgress as Fireworks means it ------------------------------------------------------------


@pytest.mark.parametrize(
    ("progress", "wanted"),
    [
        ({"epoch": 0, "percent": 40}, "epoch 1: 40% done (JOB_STATE_RUNNING)"),
        ({"epoch": 1, "percent": 0}, "epoch 2: 0% done (JOB_STATE_RUNNING)"),
        ({"percent": 60}, "60% done (JOB_STATE_RUNNING)"),
    ],
)
def test_a_progress_line_numbers_epochs_from_one(progress: dict[str, Any], wanted: str) -> None:
    job = backend().job_from(
        {
            "name": f"accounts/{ACCOUNT}/supervisedFineTuningJobs/ft-1",
            "state": "JOB_STATE_RUNNING",
            "dataset": f"accounts/{ACCOUNT}/datasets/ds-1",
            "jobProgress": progress,
        }
    )
    assert [event["message"] for event in fw._progress_events(job)] == [wanted]


@pytest.mark.parametrize(
    ("option", "value", "wire", "instead"),
    [
        ("early_stop", True, "earlyStop", "early_stopping"),
        ("jinja_template", "{{ messages }}", "jinjaTemplate", "chat template"),
        ("batch_size", 4096, "batchSize", "batch_size_samples"),
    ],
)
def test_an_option_fireworks_deprecated_is_sent_with_a_warning_naming_what_to_use(
    option: str, value: Any, wire: str, instead: str
) -> None:
    with pytest.warns(FutureWarning, match=f"service_options.{option}: Fireworks has deprecated {wire}; .*{instead}"):
        body = backend().job_body(request(training_file="ds-train"), {option: value})
    assert body[wire] == value


def test_an_option_fireworks_rejects_when_set_is_refused_before_any_request() -> None:
    with pytest.raises(
        InvalidRequestError, match=r"gradientAccumulationSteps when it is set.*batch_size_samples"
    ) as info:
        backend().job_body(request(training_file="ds-train"), {"gradient_accumulation_steps": 4})
    assert info.value.field == "service_options.gradient_accumulation_steps"


def test_an_option_fireworks_has_not_deprecated_gives_no_warning() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend().job_body(request(training_file="ds-train"), {"batch_size_samples": 8, "learning_rate": 1e-4})
