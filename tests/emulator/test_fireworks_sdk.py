"""The official fireworks-ai SDK drives a whole lifecycle against the emulator: datasets, jobs, cancel, resume."""

from __future__ import annotations

import httpx
import pytest
from fireworks import AuthenticationError, ConflictError, Fireworks, NotFoundError

from airflow_provider_finetune.emulator import EmulatorServer, ManualClock
from tests.emulator.conftest import API_KEY, jsonl, training_lines

pytestmark = pytest.mark.integration

ACCOUNT = "acme"
BASE_MODEL = "accounts/fireworks/models/llama-v3p1-8b-instruct"


def sdk(server: EmulatorServer) -> Fireworks:
    return Fireworks(api_key=API_KEY, account_id=ACCOUNT, base_url=server.url, max_retries=0)


def ready_dataset(client: Fireworks, dataset_id: str, count: int = 12) -> str:
    client.datasets.create(dataset_id=dataset_id, dataset={"userUploaded": {}, "exampleCount": str(count)})
    client.datasets.upload(dataset_id, file=("train.jsonl", jsonl(training_lines(count))))
    client.datasets.validate_upload(dataset_id, body={})
    dataset = client.datasets.get(dataset_id)
    assert dataset.state == "READY"
    assert dataset.example_count == str(count)
    assert dataset.name == f"accounts/{ACCOUNT}/datasets/{dataset_id}"
    return dataset.name


def test_sdk_lifecycle_dataset_job_list_cancel(server: EmulatorServer, clock: ManualClock) -> None:
    client = sdk(server)
    name = ready_dataset(client, "support-train")
    with pytest.raises(ConflictError):
        client.datasets.create(dataset_id="support-train", dataset={"userUploaded": {}})

    job = client.supervised_fine_tuning_jobs.create(
        dataset=name,
        base_model=BASE_MODEL,
        supervised_fine_tuning_job_id="ft-sdk-0",
        epochs=2,
        learning_rate=1e-4,
        lora_rank=16,
        early_stop=True,
        output_model="support-assistant",
    )
    assert job.name == f"accounts/{ACCOUNT}/supervisedFineTuningJobs/ft-sdk-0"
    assert job.state in ("JOB_STATE_VALIDATING", "JOB_STATE_PENDING")
    assert job.learning_rate == 1e-4
    assert job.lora_rank == 16
    assert job.epochs == 2
    assert job.output_model == f"accounts/{ACCOUNT}/models/support-assistant"
    with pytest.raises(ConflictError):  # the id chosen by the client is taken: no second job
        client.supervised_fine_tuning_jobs.create(
            dataset=name, base_model=BASE_MODEL, supervised_fine_tuning_job_id="ft-sdk-0"
        )

    clock.advance(20)  # validated (3 s) and queued (5 s): training for 30 to 120 s
    running = client.supervised_fine_tuning_jobs.get("ft-sdk-0")
    assert running.state == "JOB_STATE_RUNNING"
    assert running.job_progress is not None
    assert 0 <= (running.job_progress.percent or 0) <= 100

    listed = list(client.supervised_fine_tuning_jobs.list(page_size=1))
    assert [j.name for j in listed] == [running.name]

    client.supervised_fine_tuning_jobs.cancel("ft-sdk-0", body={})
    clock.advance(5)
    assert client.supervised_fine_tuning_jobs.get("ft-sdk-0").state == "JOB_STATE_CANCELLED"
    client.supervised_fine_tuning_jobs.delete("ft-sdk-0")
    with pytest.raises(NotFoundError):
        client.supervised_fine_tuning_jobs.get("ft-sdk-0")


def test_sdk_job_completes_with_output_model(server: EmulatorServer, clock: ManualClock) -> None:
    client = sdk(server)
    name = ready_dataset(client, "done-train")
    client.supervised_fine_tuning_jobs.create(
        dataset=name, base_model=BASE_MODEL, supervised_fine_tuning_job_id="ft-done"
    )
    clock.advance(100_000)
    job = client.supervised_fine_tuning_jobs.get("ft-done")
    assert job.state == "JOB_STATE_COMPLETED"
    assert job.job_progress is not None
    assert job.job_progress.percent == 100
    assert job.output_model == f"accounts/{ACCOUNT}/models/ft-done"
    assert job.completed_time is not None


def test_sdk_resume_of_a_paused_job(server: EmulatorServer, clock: ManualClock) -> None:
    client = sdk(server)
    name = ready_dataset(client, "pause-train")
    client.supervised_fine_tuning_jobs.create(dataset=name, base_model=BASE_MODEL, supervised_fine_tuning_job_id="ft-p")
    clock.advance(20)
    sim_id = next(r["sim_id"] for r in server.emulator.store.records("fw_job").values() if r["job_id"] == "ft-p")
    server.emulator.jobs.pause(sim_id)  # Fireworks pauses a job itself (an account suspended...); the API cannot
    clock.advance(30)
    assert client.supervised_fine_tuning_jobs.get("ft-p").state == "JOB_STATE_PAUSED"
    client.supervised_fine_tuning_jobs.resume("ft-p", body={})
    clock.advance(100_000)
    assert client.supervised_fine_tuning_jobs.get("ft-p").state == "JOB_STATE_COMPLETED"


def test_sdk_large_file_through_the_signed_upload_endpoint(server: EmulatorServer) -> None:
    client = sdk(server)
    data = jsonl(training_lines(12))
    client.datasets.create(dataset_id="big-train", dataset={"userUploaded": {}})
    urls = client.datasets.get_upload_endpoint("big-train", filename_to_size={"train.jsonl": str(len(data))})
    url = (urls.filename_to_signed_urls or {})["train.jsonl"]
    assert url.startswith(server.url)
    put = httpx.put(url, content=data, headers={"Content-Type": "application/octet-stream"})  # no API key
    assert put.status_code == 200
    client.datasets.validate_upload("big-train", body={})
    assert client.datasets.get("big-train").state == "READY"


def test_sdk_dpo_and_reinforcement_jobs(server: EmulatorServer) -> None:
    client = sdk(server)
    name = ready_dataset(client, "pref-train")
    dpo = client.dpo_jobs.create(
        dataset=name, dpo_job_id="dpo-1", training_config={"baseModel": BASE_MODEL, "epochs": 1}
    )
    assert dpo.name == f"accounts/{ACCOUNT}/dpoJobs/dpo-1"
    assert dpo.training_config is not None
    assert dpo.training_config.output_model == f"accounts/{ACCOUNT}/models/dpo-1"


def test_sdk_refusals(server: EmulatorServer) -> None:
    client = sdk(server)
    client.datasets.create(dataset_id="not-ready", dataset={"userUploaded": {}})
    with pytest.raises(Exception, match="not READY"):
        client.supervised_fine_tuning_jobs.create(
            dataset=f"accounts/{ACCOUNT}/datasets/not-ready", base_model=BASE_MODEL
        )
    with pytest.raises(Exception, match="evaluator"):
        client.reinforcement_fine_tuning_jobs.create(
            dataset=f"accounts/{ACCOUNT}/datasets/not-ready", evaluator="", training_config={"baseModel": BASE_MODEL}
        )


def test_sdk_errors_have_fireworks_shape_and_need_the_key(server: EmulatorServer) -> None:
    wrong = Fireworks(api_key="fw-wrong-key-123", account_id=ACCOUNT, base_url=server.url, max_retries=0)
    with pytest.raises(AuthenticationError):
        wrong.datasets.get("anything")
    answer = httpx.get(
        f"{server.url}/v1/accounts/{ACCOUNT}/supervisedFineTuningJobs/nope",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert answer.status_code == 404
    assert answer.json() == {
        "code": 5,
        "message": f"Job accounts/{ACCOUNT}/supervisedFineTuningJobs/nope not found",
        "details": [],
    }
