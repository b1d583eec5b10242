"""The Bedrock example DAG runs to success against the emulator's Bedrock dialect and moto's S3.

And the same fine-tuning task runs on OpenAI and on Bedrock with only its connection and the Bedrock options changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.bedrock_fixtures import BedrockEmulator, make_bedrock, moto_s3
from tests.example_dags.conftest import emulator_server, serialized_example_dags
from tests.example_dags.test_example_dags import run, task_states, xcoms

__all__ = ["emulator_server", "make_bedrock", "moto_s3", "serialized_example_dags"]  # fixtures, used by name

BUCKET = "brightwave-fine-tuning"  # the example's default bucket, as the DAG was parsed


def bedrock_connections(patch: pytest.MonkeyPatch, emulator: BedrockEmulator) -> None:
    """``finetune_bedrock`` at the emulator, and ``aws_default`` with its keys, S3 at moto and its runtime."""
    aws_extra = {
        "region_name": emulator.region,
        "service_config": {
            "s3": {"endpoint_url": emulator.s3_endpoint_url},
            "bedrock-runtime": {"endpoint_url": emulator.runtime_url},
        },
        "config_kwargs": {"s3": {"addressing_style": "path"}, "retries": {"total_max_attempts": 2}},
    }
    patch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": emulator.access_key_id,
                "password": emulator.secret_access_key,
                "extra": aws_extra,
            }
        ),
    )
    finetune = {
        "conn_type": "finetune",
        "host": emulator.control_url,
        "extra": {"service": "bedrock", "region_name": emulator.region, "aws_conn_id": "aws_default"},
    }
    patch.setenv("AIRFLOW_CONN_FINETUNE_BEDROCK", json.dumps(finetune))


@pytest.mark.integration
def test_the_bedrock_example_runs_to_success(serialized_example_dags: Any, make_bedrock: Any) -> None:
    emulator = make_bedrock()
    emulator.client("s3").create_bucket(Bucket=BUCKET)
    with pytest.MonkeyPatch.context() as patch:
        bedrock_connections(patch, emulator)
        dag_run = run(serialized_example_dags, "example_bedrock")
    dag_id, run_id = "example_bedrock", dag_run.run_id
    assert set(task_states(run_id, dag_id).values()) == {"success"}
    fine_tune = xcoms(run_id, dag_id, "fine_tune")
    assert ":custom-model/" in fine_tune["return_value"]
    assert fine_tune["training_metrics"]
    jobs = emulator.client("bedrock").list_model_customization_jobs()["modelCustomizationJobSummaries"]
    assert [j["jobArn"] for j in jobs] == [fine_tune["job_id"]]
    deployment = xcoms(run_id, dag_id, "deploy")["return_value"]
    assert (
        emulator.client("bedrock").get_custom_model_deployment(customModelDeploymentIdentifier=deployment)["status"]
        == "Active"
    )
    evaluation = xcoms(run_id, dag_id, "evaluate")["return_value"]
    assert evaluation["deployment_arn"] == deployment
    assert 0.5 <= evaluation["score"] <= 1.0
    published = xcoms(run_id, dag_id, "publish")["return_value"]
    assert published["custom_model_arn"] == fine_tune["return_value"]
    print(f"\n[example_bedrock] job {fine_tune['job_id']}, deployment {deployment}, score {evaluation['score']:.2f}")


def _retraining_fine_tune(conn_id: str, model: str, train: str, valid: str, **service: Any) -> Any:
    """The retraining example's fine-tuning task, as its DAG writes it; only the connection, the data references and
    (on Bedrock) ``service_options`` differ between the services."""
    from datetime import timedelta

    from airflow_provider_finetune.operators.finetune import FineTuningJobOperator

    return FineTuningJobOperator(
        task_id="fine_tune",
        model=model,
        training_file=train,
        validation_file=valid,
        finetune_conn_id=conn_id,
        deferrable=False,
        poll_interval=0.05,
        timeout=timedelta(hours=12),
        **service,
    )


@pytest.mark.integration
def test_the_same_fine_tuning_task_runs_on_openai_and_on_bedrock(make_bedrock: Any, emulator_server: Any) -> None:
    from airflow_provider_finetune.hooks.finetune import FineTuningHook
    from tests.bedrock_fixtures import conversation_records
    from tests.integration.conftest import API_KEY
    from tests.operators.conftest import FakeStateStore, FakeTI

    bedrock = make_bedrock()
    data = Path(__file__).resolve().parents[2] / "example_dags" / "data"
    pushed: dict[str, dict[str, Any]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "AIRFLOW_CONN_FINETUNE_OPENAI",
            json.dumps({"conn_type": "finetune", "host": emulator_server.base_url, "password": API_KEY}),
        )
        bedrock_connections(patch, bedrock)
        openai = FineTuningHook("finetune_openai")
        runs = {
            "openai": _retraining_fine_tune(
                "finetune_openai",
                "gpt-4o-mini-2024-07-18",
                openai.upload_file(data / "support_train.jsonl").id,
                openai.upload_file(data / "support_valid.jsonl").id,
            ),
            "bedrock": _retraining_fine_tune(
                "finetune_bedrock",
                "amazon.nova-micro-v1:0:128k",
                bedrock.put_jsonl("same/train.jsonl", conversation_records(12)),
                bedrock.put_jsonl("same/valid.jsonl", conversation_records(4, start=50)),
                service_options={"role_arn": bedrock.role_arn, "output_s3_uri": f"s3://{bedrock.bucket}/out/"},
            ),
        }
        for service, op in runs.items():
            ti = FakeTI()
            model = op.execute({"ti": ti, "task_state_store": FakeStateStore()})
            assert model, service
            assert ti.xcoms["fine_tuned_model"] == model
            assert ti.xcoms["status"] == "succeeded"
            pushed[service] = ti.xcoms
    shared = {
        "job_id",
        "finetune_conn_id",
        "status",
        "trained_tokens",
        "result_files",
        "checkpoints",
        "fine_tuned_model",
    }
    assert shared <= set(pushed["openai"])
    assert shared <= set(pushed["bedrock"])
    assert {"training_metrics", "validation_metrics"} <= set(pushed["bedrock"])
