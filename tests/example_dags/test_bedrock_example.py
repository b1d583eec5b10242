"""The Bedrock example DAG runs to success against the emulator's Bedrock dialect and moto's S3.

And the same fine-tuning task runs on OpenAI and on Bedrock with only its connection and the Bedrock options changed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.bedrock_fixtures import BedrockEmulator, make_bedrock, moto_s3
from tests.example_dags.conftest import serialized_example_dags
from tests.example_dags.test_example_dags import run, task_states, xcoms

__all__ = ["make_bedrock", "moto_s3", "serialized_example_dags"]  # fixtures, used by name

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
