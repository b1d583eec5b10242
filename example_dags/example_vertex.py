"""Weekly retraining of the support assistant on Google Vertex AI: tune Gemini, check its checkpoints, evaluate the
tuned model's endpoint, publish it.

What this DAG shows:

* Gemini tuning data read where it already is: the training and validation JSONL files are in Cloud Storage, in
  Vertex's Gemini format (one example a line: ``{"systemInstruction": {"parts": [{"text": ...}]}, "contents":
  [{"role": "user", "parts": [{"text": ...}]}, {"role": "model", "parts": [{"text": ...}]}]}``), and their
  ``gs://`` URIs are the DAG params ``training_file`` and ``validation_file``; Vertex has no files API, so nothing
  is uploaded;
* the same ``FineTuningJobOperator`` as every other service, on a Vertex connection, tuning ``gemini-2.5-flash``
  with ``n_epochs`` (sent as ``epochCount``) and the options only Vertex has in ``service_options``: the LoRA
  adapter size, the tuned model's display name (templated by the run), a description and labels (which Vertex puts
  on the job, the tuned model and its endpoint); the task's tag rides in the job's labels too, so that a retry or a
  crash never makes a second, billed job; the wait is deferred (no worker slot held while Gemini tunes) and bounded
  by ``timeout``, and a killed task cancels its job;
* the checkpoints the job made (the operator's ``checkpoints`` XCom, one an epoch, each served by an endpoint of
  its own), recorded with the model;
* an evaluation gate (``FineTuningEvaluateOperator``): the tuned model's endpoint (the operator's
  ``tuned_model_endpoint`` XCom) and the base model answer the held-out prompts of ``data/support_eval.jsonl``
  through the connection's chat completions, which the Vertex backend sends as ``generateContent``; the tuned model
  must reach ``min_score`` and beat the base model, or the task fails and nothing is published;
* the tuned model and its endpoint published as an event of the ``vertex_support_assistant`` Asset, with the job,
  the checkpoints and the scores in its ``extra``, for a serving DAG scheduled on it.

Connection ``finetune_vertex`` (type ``finetune``): extras ``{"service": "vertex", "project": "my-gcp-project",
"location": "us-central1", "gcp_conn_id": "google_cloud_default"}``, the credentials being those of the Airflow
Google connection it names (or an OAuth 2 access token as the password). Waits poll every
``FINETUNE_EXAMPLE_POLL_INTERVAL`` seconds (60 by default).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, XComArg, task

from airflow_provider_finetune.operators.evaluate import FineTuningEvaluateOperator
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator

DATA = Path(__file__).parent / "data"
POLL_INTERVAL = float(os.environ.get("FINETUNE_EXAMPLE_POLL_INTERVAL", "60"))
BASE_MODEL = "gemini-2.5-flash"
CONN_ID = "finetune_vertex"
BUCKET = "brightwave-fine-tuning"
log = logging.getLogger(__name__)

VERTEX_MODEL_ASSET = Asset(name="vertex_support_assistant", uri="finetune://brightwave/vertex-support-assistant")

with DAG(
    dag_id="example_vertex",
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 4, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "training_file": Param(
            f"gs://{BUCKET}/support/gemini/train.jsonl",
            type="string",
            pattern=r"^gs://[^/]+/.+",
            description="The training set in Cloud Storage, JSONL in Vertex's Gemini format.",
        ),
        "validation_file": Param(
            f"gs://{BUCKET}/support/gemini/valid.jsonl",
            type="string",
            pattern=r"^gs://[^/]+/.+",
            description="The validation set in Cloud Storage, JSONL in Vertex's Gemini format.",
        ),
        "min_score": Param(
            0.7,
            type="number",
            minimum=0,
            maximum=1,
            description="Share of held-out prompts the tuned model must answer right to be published.",
        ),
    },
    tags=["example", "finetune", "vertex", "evaluation", "asset"],
    doc_md=__doc__,
) as dag:
    fine_tune = FineTuningJobOperator(
        task_id="fine_tune",
        model=BASE_MODEL,
        training_file="{{ params.training_file }}",
        validation_file="{{ params.validation_file }}",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        service_options={
            "adapter_size": 4,
            # run_after, unlike ds, exists in every run, manual runs without a logical date included.
            "tuned_model_display_name": "support-assistant-{{ dag_run.run_after | ds_nodash }}",
            "description": "Brightwave support assistant, weekly retraining",
            "labels": {"pipeline": "support-assistant"},
        },
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=24),
    )

    @task
    def record_checkpoints(checkpoints: list[dict[str, Any]], endpoint: str) -> list[dict[str, Any]]:
        """The job's checkpoints, newest first: the step each was taken at and the endpoint that serves it."""
        recorded = [
            {"step": c["step_number"], "endpoint": c["fine_tuned_model_checkpoint"]}
            for c in sorted(checkpoints, key=lambda c: c["step_number"] or 0, reverse=True)
        ]
        for c in recorded:
            default = " (the tuned model's)" if c["endpoint"] == endpoint else ""
            log.info("Checkpoint at step %s: endpoint %s%s", c["step"], c["endpoint"], default)
        return recorded

    endpoint = XComArg(fine_tune, key="tuned_model_endpoint")
    checkpoints = record_checkpoints(XComArg(fine_tune, key="checkpoints"), endpoint)

    evaluation_gate = FineTuningEvaluateOperator(
        task_id="evaluation_gate",
        model=endpoint,
        baseline=BASE_MODEL,
        eval_file=DATA / "support_eval.jsonl",
        min_score="{{ params.min_score }}",
        finetune_conn_id=CONN_ID,
    )

    @task(outlets=[VERTEX_MODEL_ASSET])
    def publish(
        model: str,
        endpoint: str,
        job_id: str,
        checkpoints: list[dict[str, Any]],
        evaluation: dict[str, Any],
        outlet_events: Any = None,
    ) -> dict[str, Any]:
        """Record an event of the asset: the tuned model, the endpoint that serves it, and what was measured."""
        extra = {
            "tuned_model": model,
            "endpoint": endpoint,
            "job_id": job_id,
            "base_model": BASE_MODEL,
            "checkpoints": checkpoints,
            "score": evaluation["score"],
            "baseline_score": evaluation["baseline_score"],
        }
        outlet_events[VERTEX_MODEL_ASSET].extra = extra
        log.info("Published %s, served by %s: %s", model, endpoint, extra)
        return extra

    publish(fine_tune.output, endpoint, XComArg(fine_tune, key="job_id"), checkpoints, evaluation_gate.output)
