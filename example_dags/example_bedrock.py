"""Weekly retraining of the support assistant on AWS Bedrock: customize, deploy, evaluate, publish.

What this DAG shows:

* training data in S3, checked where it is (``BedrockTrainingDataOperator`` streams it line by line in the Amazon
  Nova conversation format, ``bedrock-conversation-2024``) before anything is billed;
* the same ``FineTuningJobOperator`` as every other service, with a Bedrock connection and the options only Bedrock
  has (``service_options``: the role, the output location, hyperparameters as Bedrock takes them); the job is named by
  the task instance with a ``clientRequestToken`` derived from that name, so that a retry or a crash never makes a
  second, billed job; the deferred wait has no cap of its own (the task's ``timeout`` bounds it), and a killed task
  stops its job;
* a custom model deployment for on-demand inference (``BedrockCustomModelDeploymentOperator``, deferrable);
* evaluation through Bedrock Runtime's Converse with the deployment's ARN, and the model published as an Asset event.

Connections: ``finetune_bedrock`` (type ``finetune``, extras ``{"service": "bedrock", "region_name": ...,
"aws_conn_id": "aws_default"}``) and the Airflow AWS connection it names. The role and bucket come from
``FINETUNE_BEDROCK_ROLE_ARN`` and ``FINETUNE_BEDROCK_BUCKET``. Waits poll every ``FINETUNE_EXAMPLE_POLL_INTERVAL``
seconds (60 by default).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, XComArg, task

from airflow_provider_finetune.operators.bedrock import (
    BedrockCustomModelDeploymentOperator,
    BedrockTrainingDataOperator,
)
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator

DATA = Path(__file__).parent / "data"
POLL_INTERVAL = float(os.environ.get("FINETUNE_EXAMPLE_POLL_INTERVAL", "60"))
BASE_MODEL = "amazon.nova-micro-v1:0:128k"
CONN_ID = "finetune_bedrock"
AWS_CONN_ID = "aws_default"
ROLE_ARN = os.environ.get("FINETUNE_BEDROCK_ROLE_ARN", "arn:aws:iam::123456789012:role/BedrockFineTuning")
BUCKET = os.environ.get("FINETUNE_BEDROCK_BUCKET", "brightwave-fine-tuning")
log = logging.getLogger(__name__)

BEDROCK_MODEL_ASSET = Asset(name="bedrock_support_assistant", uri="finetune://brightwave/bedrock-support-assistant")


def to_conversation(record: dict[str, Any]) -> dict[str, Any]:
    """A chat-format record in Bedrock's conversation format: the system turn apart, content as text blocks."""
    system = [{"text": m["content"]} for m in record["messages"] if m["role"] == "system"]
    turns = [
        {"role": m["role"], "content": [{"text": m["content"]}]} for m in record["messages"] if m["role"] != "system"
    ]
    return {"schemaVersion": "bedrock-conversation-2024", "system": system, "messages": turns}


with DAG(
    dag_id="example_bedrock",
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 4, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "min_score": Param(0.5, type="number", minimum=0, maximum=1, description="Share of held-out prompts to pass."),
    },
    tags=["example", "finetune", "bedrock", "asset"],
    doc_md=__doc__,
) as dag:

    @task
    def stage_training_data(name: str) -> str:
        """Write the week's support conversations to S3 in the conversation format (the data team's export step)."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        lines = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line]
        body = "".join(json.dumps(to_conversation(r)) + "\n" for r in lines)
        key = f"support/{name}"
        S3Hook(aws_conn_id=AWS_CONN_ID).load_string(body, key, bucket_name=BUCKET, replace=True)
        return f"s3://{BUCKET}/{key}"

    check_train = BedrockTrainingDataOperator(
        task_id="check_train",
        source=stage_training_data("support_train.jsonl"),
        model=BASE_MODEL,
        finetune_conn_id=CONN_ID,
        min_records=8,
    )
    check_valid = BedrockTrainingDataOperator(
        task_id="check_valid",
        source=stage_training_data.override(task_id="stage_validation_data")("support_valid.jsonl"),
        model=BASE_MODEL,
        finetune_conn_id=CONN_ID,
    )

    fine_tune = FineTuningJobOperator(
        task_id="fine_tune",
        model=BASE_MODEL,
        training_file=check_train.output,
        validation_file=check_valid.output,
        service_options={
            "role_arn": ROLE_ARN,
            "output_s3_uri": f"s3://{BUCKET}/output/",
            "hyperparameters": {"epochCount": 2, "learningRate": 0.00001},
            "job_tags": {"pipeline": "support-assistant"},
        },
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=24),
    )

    deploy = BedrockCustomModelDeploymentOperator(
        task_id="deploy",
        model_arn=fine_tune.output,
        description="Support assistant, {{ dag_run.run_after | ds }}",
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
    )

    @task
    def evaluate(deployment_arn: str, params: Any = None) -> dict[str, Any]:
        """Ask the deployed model the held-out prompts through Converse; the score is the share answered right."""
        from airflow.providers.amazon.aws.hooks.bedrock import BedrockRuntimeHook

        runtime = BedrockRuntimeHook(aws_conn_id=AWS_CONN_ID).conn
        rows = [json.loads(line) for line in (DATA / "support_eval.jsonl").read_text().splitlines() if line]
        hits = 0
        for row in rows:
            turn = to_conversation(row)
            answer = runtime.converse(
                modelId=deployment_arn,
                system=turn["system"],
                messages=turn["messages"],
                inferenceConfig={"maxTokens": 200, "temperature": 0},
            )["output"]["message"]["content"][0]["text"]
            hit = row["expected"].lower() in answer.lower()
            hits += hit
            log.info("%s %s: expected %r, got %r", row["id"], "PASS" if hit else "MISS", row["expected"], answer)
        score = hits / len(rows)
        if score < float(params["min_score"]):
            raise ValueError(f"{deployment_arn} scored {score:.2f}, below min_score {params['min_score']}")
        return {"deployment_arn": deployment_arn, "score": score, "prompts": len(rows)}

    @task(outlets=[BEDROCK_MODEL_ASSET])
    def publish(model: str, job_id: str, metrics: Any, evaluation: dict[str, Any], outlet_events: Any = None) -> dict:
        """Record an event of the asset with the custom model, its deployment and its scores."""
        extra = {
            "custom_model_arn": model,
            "job_arn": job_id,
            "deployment_arn": evaluation["deployment_arn"],
            "training_metrics": metrics,
            "score": evaluation["score"],
        }
        outlet_events[BEDROCK_MODEL_ASSET].extra = extra
        log.info("Published %s: %s", model, extra)
        return extra

    evaluation = evaluate(deploy.output)
    publish(fine_tune.output, XComArg(fine_tune, key="job_id"), XComArg(fine_tune, key="training_metrics"), evaluation)
