"""Airflow's own Bedrock operator (apache-airflow-providers-amazon) runs unchanged against the emulator's dialect."""

from __future__ import annotations

import json

import pytest

from tests.bedrock_fixtures import BedrockEmulator, bedrock, conversation_records, make_bedrock, moto_s3

__all__ = ["bedrock", "make_bedrock", "moto_s3"]  # fixtures, used by name


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
