"""Airflow's own Bedrock operator (apache-airflow-providers-amazon) runs unchanged against the emulator's dialect.

The tests after the first measure what the README's comparison says of it: botocore fills ``clientRequestToken``
itself (an ``idempotencyToken`` member of the service model) and sends the same token on each of its own retries,
so an answer lost inside one call makes one job; a task that runs again once its job exists sends a new token,
and its create fails on the model name in use, or, with a model name that changes per try, makes a second job;
its wait gives up at ``waiter_delay`` x ``waiter_max_attempts`` and leaves the job running; it has no ``on_kill``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_finetune.emulator import FaultConfig, ManualClock
from tests.bedrock_fixtures import BedrockEmulator, bedrock, conversation_records, make_bedrock, moto_s3

__all__ = ["bedrock", "make_bedrock", "moto_s3"]  # fixtures, used by name

MODEL = "amazon.nova-micro-v1:0:128k"


def amazon_operator(emulator: BedrockEmulator, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Callable[..., Any]:
    """A factory of the amazon provider's ``BedrockCustomizeModelOperator`` on an AWS connection to ``emulator``.

    Its botocore client keeps botocore's own retry settings (the connection sets none).
    """
    from airflow.providers.amazon.aws.operators.bedrock import BedrockCustomizeModelOperator

    connection = {
        "conn_type": "aws",
        "login": emulator.access_key_id,
        "password": emulator.secret_access_key,
        "extra": {"region_name": emulator.region, "endpoint_url": emulator.control_url},
    }
    monkeypatch.setenv("AIRFLOW_CONN_BEDROCK_EMULATOR", json.dumps(connection))
    uri = emulator.put_jsonl("airflow/train.jsonl", conversation_records())

    def make(**more: Any) -> BedrockCustomizeModelOperator:
        arguments: dict[str, Any] = {
            "task_id": "customize",
            "job_name": "airflow-job",
            "custom_model_name": "airflow-model",
            "role_arn": emulator.role_arn,
            "base_model_id": MODEL,
            "training_data_uri": uri,
            "output_data_uri": f"s3://{emulator.bucket}/airflow-output/",
            "hyperparameters": {"epochCount": "1"},
            "aws_conn_id": "bedrock_emulator",
            "wait_for_completion": False,
            "deferrable": False,
            **overrides,
            **more,
        }
        return BedrockCustomizeModelOperator(**arguments)

    return make


def summaries(emulator: BedrockEmulator) -> list[dict[str, Any]]:
    return list(emulator.client().list_model_customization_jobs()["modelCustomizationJobSummaries"])


def test_bedrock_customize_model_operator(bedrock: BedrockEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.amazon.aws.operators.bedrock import BedrockCustomizeModelOperator

    connection = {
        "conn_type": "aws",
        "login": bedrock.access_key_id,
        "password": bedrock.secret_access_key,
        "extra": {"region_name": bedrock.region, "endpoint_url": bedrock.control_url},
    }
    monkeypatch.setenv("AIRFLOW_CONN_BEDROCK_EMULATOR", json.dumps(connection))
    uri = bedrock.put_jsonl("airflow/train.jsonl", conversation_records())

    def operator(model_name: str) -> BedrockCustomizeModelOperator:
        return BedrockCustomizeModelOperator(
            task_id="customize",
            job_name="airflow-job",
            custom_model_name=model_name,
            role_arn=bedrock.role_arn,
            base_model_id="amazon.nova-micro-v1:0:128k",
            training_data_uri=uri,
            output_data_uri=f"s3://{bedrock.bucket}/airflow-output/",
            hyperparameters={"epochCount": "1"},
            aws_conn_id="bedrock_emulator",
            wait_for_completion=True,
            waiter_delay=1,
            waiter_max_attempts=20,
            deferrable=False,
        )

    first = operator("airflow-model").execute({})
    client = bedrock.client()
    assert client.get_model_customization_job(jobIdentifier=first)["status"] == "Completed"
    # The same job name again: the operator recognises the emulator's "name in use" answer and renames its job.
    second = operator("airflow-model-2").execute({})
    assert second != first
    renamed = client.get_model_customization_job(jobIdentifier=second)
    assert renamed["jobName"].startswith("airflow-job-")
    assert renamed["status"] == "Completed"


@pytest.mark.parametrize(
    "lost",
    [
        pytest.param(FaultConfig(seed=3, error_rate=0.5), id="5xx after the job was made"),
        pytest.param(FaultConfig(seed=3, drop_rate=0.5), id="connection dropped after the job was made"),
    ],
)
def test_an_answer_lost_inside_one_call_makes_one_job_for_the_amazon_operator(
    lost: FaultConfig, make_bedrock: Callable[..., BedrockEmulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first create is made and its answer lost (seed 3: the first create draws the fault, the next does not);
    botocore sends the same request again with the ``clientRequestToken`` it made, and Bedrock answers the job
    that token made."""
    fault = FaultConfig(
        seed=lost.seed,
        error_rate=lost.error_rate,
        drop_rate=lost.drop_rate,
        after_processing=True,
        match="POST /bedrock/model-customization-jobs$",
    )
    emulator = make_bedrock(faults=fault)
    arn = amazon_operator(emulator, monkeypatch)().execute({})
    assert sum(emulator.server.emulator.counters.faults.values()) == 1
    assert emulator.server.emulator.counters.jobs_created == 1
    assert [job["jobArn"] for job in summaries(emulator)] == [arn]
    token = emulator.client().get_model_customization_job(jobIdentifier=arn)["clientRequestToken"]
    assert len(token) == 36  # botocore's uuid4, not one the operator chose


@pytest.mark.parametrize("first_job", ["InProgress", "Completed"])
def test_a_task_that_runs_again_after_its_job_exists_fails_on_the_model_name_in_use(
    first_job: str, make_bedrock: Callable[..., BedrockEmulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cleared task, a killed worker, answers lost past botocore's attempts: the task's next run sends a new
    token; the job name in use is renamed with a timestamp, and the create is refused on the custom model name,
    which the first job (running, or completed with its model) holds."""
    from botocore.exceptions import ClientError

    clock = ManualClock(start=time.time())
    emulator = make_bedrock(clock=clock, speed=1.0)
    make = amazon_operator(emulator, monkeypatch)
    first = make().execute({})
    if first_job == "Completed":
        clock.advance(600.0)
    assert emulator.client().get_model_customization_job(jobIdentifier=first)["status"] == first_job
    with pytest.raises(ClientError) as caught:
        make().execute({})
    assert caught.value.response["Error"]["Message"] == "The provided model name is currently in use."
    assert [job["jobArn"] for job in summaries(emulator)] == [first]


def test_a_task_that_runs_again_with_a_model_name_per_try_makes_a_second_billed_job(
    make_bedrock: Callable[..., BedrockEmulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a model name that changes per try (templated from the try number, or a time), the next run of the task
    makes a second job beside the first, which still runs: both are billed."""
    clock = ManualClock(start=time.time())
    emulator = make_bedrock(clock=clock, speed=1.0)
    make = amazon_operator(emulator, monkeypatch)
    first = make(custom_model_name="airflow-model-try1").execute({})
    second = make(custom_model_name="airflow-model-try2").execute({})
    assert second != first
    jobs = summaries(emulator)
    assert {job["jobArn"] for job in jobs} == {first, second}
    assert {job["status"] for job in jobs} == {"InProgress"}
    renamed = next(job for job in jobs if job["jobArn"] == second)
    assert renamed["jobName"].startswith("airflow-job-")


def test_the_amazon_operator_gives_up_its_wait_and_leaves_the_job_running(
    make_bedrock: Callable[..., BedrockEmulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its wait (on the worker, and the trigger's when deferred) is ``waiter_delay`` x ``waiter_max_attempts``,
    120 s x 75 = 2.5 hours by default; past it the task fails, nothing stops the job, and it has no ``on_kill``."""
    from airflow.providers.amazon.aws.operators.bedrock import BedrockCustomizeModelOperator
    from botocore.exceptions import WaiterError

    clock = ManualClock(start=time.time())
    emulator = make_bedrock(clock=clock, speed=1.0)
    make = amazon_operator(emulator, monkeypatch)
    defaults = make()
    assert defaults.waiter_delay * defaults.waiter_max_attempts == 9_000
    with pytest.raises(WaiterError):
        make(wait_for_completion=True, waiter_delay=1, waiter_max_attempts=2).execute({})
    (job,) = summaries(emulator)
    assert job["status"] == "InProgress"
    assert BedrockCustomizeModelOperator.on_kill.__qualname__ == "BaseOperator.on_kill"  # Airflow's, which does nothing
