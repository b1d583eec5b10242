"""Weekly retraining of a customer-support assistant, published as an Airflow Asset.

What this DAG shows:

* checking training data before anything is billed, then uploading it (``FineTuningFileUploadOperator``);
* fine-tuning without holding a worker slot for the hours a job takes (``deferrable=True``); a retry or a
  crash never starts a second job for the same run;
* choosing the best checkpoint by its validation loss from the operator's ``checkpoints`` XCom, with
  ``airflow_provider_finetune.rules.checkpoints.best_checkpoint``; where the service lists no checkpoints (Fireworks)
  or none reports a validation loss (Together), the job's final model is used, and the log says so;
* evaluating the fine-tuned model on held-out prompts through chat completions, with the hook's client,
  and refusing to publish a model that scores below ``min_score``;
* publishing the model as an event of the ``FINE_TUNED_MODEL_ASSET`` Asset, its name and metrics in the
  event's ``extra``, so that downstream DAGs (``example_finetune_deploy``) are scheduled by it.

The service-specific parts are DAG params: ``base_model``, ``suffix`` (``null`` where the service names the
model otherwise) and ``service_options`` (the service's own create fields). Their defaults are OpenAI's (and
Azure OpenAI's); a run on Fireworks or Together changes only the connection and these params, e.g.
``{"base_model": "accounts/fireworks/models/llama-v3p1-8b-instruct", "suffix": null,
"service_options": {"output_model": "support-2026w02"}}``.

Waits poll every ``FINETUNE_EXAMPLE_POLL_INTERVAL`` seconds (60 by default; the tests and the demo set it
lower). The data is the Brightwave Home support set of ``data/`` (see ``data/generate.py``).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, XComArg, task

from airflow_provider_finetune.operators.finetune import FineTuningFileUploadOperator, FineTuningJobOperator

DATA = Path(__file__).parent / "data"
POLL_INTERVAL = float(os.environ.get("FINETUNE_EXAMPLE_POLL_INTERVAL", "60"))
BASE_MODEL = "gpt-4o-mini-2024-07-18"
CONN_ID = "finetune_default"
log = logging.getLogger(__name__)

# The same Asset (same name and URI) is declared by the DAGs it schedules, e.g. example_finetune_deploy.
FINE_TUNED_MODEL_ASSET = Asset(name="finetune_support_assistant", uri="finetune://brightwave/support-assistant")

with DAG(
    dag_id="example_finetune_retraining",
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 4, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # "{{ params.service_options }}" renders to the object itself, not to its text.
    render_template_as_native_obj=True,
    params={
        "base_model": Param(BASE_MODEL, type="string", description="The model to fine-tune, as the service names it."),
        "suffix": Param(
            "support",
            type=["null", "string"],
            description="Added (with the run's date) to the fine-tuned model's name; null where the service has none.",
        ),
        "service_options": Param(
            {}, type="object", description="The service's own create fields (FineTuningJobOperator.service_options)."
        ),
        "min_score": Param(
            0.7,
            type="number",
            minimum=0,
            maximum=1,
            description="Share of held-out prompts the new model must answer right to be published.",
        ),
    },
    tags=["example", "finetune", "retraining", "asset"],
    doc_md=__doc__,
) as dag:
    upload_train = FineTuningFileUploadOperator(
        task_id="upload_train",
        source=DATA / "support_train.jsonl",
        method="supervised",
        finetune_conn_id=CONN_ID,
    )
    upload_valid = FineTuningFileUploadOperator(
        task_id="upload_valid",
        source=DATA / "support_valid.jsonl",
        method="supervised",
        finetune_conn_id=CONN_ID,
    )

    fine_tune = FineTuningJobOperator(
        task_id="fine_tune",
        model="{{ params.base_model }}",
        training_file=upload_train.output,
        validation_file=upload_valid.output,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        # run_after, unlike ds, exists in every run, manual runs without a logical date included.
        suffix="{% if params.suffix %}{{ params.suffix }}-{{ dag_run.run_after | ds_nodash }}{% endif %}",
        service_options="{{ params.service_options }}",
        finetune_conn_id=CONN_ID,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=12),
    )

    @task
    def pick_checkpoint(checkpoints: list[dict[str, Any]], model: str) -> dict[str, Any]:
        """The checkpoint with the lowest validation loss (the operator pushes every checkpoint's metrics).

        Where the service lists no checkpoints, or none reports a validation loss, the job's final model.
        """
        from airflow_provider_finetune.hooks.finetune import FineTuningHook
        from airflow_provider_finetune.models import FineTuningJobCheckpoint
        from airflow_provider_finetune.rules.checkpoints import best_checkpoint

        for c in checkpoints:
            log.info("Checkpoint at step %s: %s %s", c["step_number"], c["fine_tuned_model_checkpoint"], c["metrics"])
        best = best_checkpoint([FineTuningJobCheckpoint.model_validate(c) for c in checkpoints], "valid_loss")
        if best is None:
            backend = FineTuningHook(CONN_ID).backend
            why = (
                f"{backend.label} lists no checkpoints"
                if not backend.supports("checkpoints")
                else "no checkpoint reports a valid_loss"
            )
            log.info("Using the job's final model %s: %s", model, why)
            return {"checkpoint": model, "valid_loss": None}
        log.info(
            "Best checkpoint by valid_loss: %s (step %s, valid_loss %.4f)",
            best.fine_tuned_model_checkpoint,
            best.step_number,
            best.metrics.valid_loss,
        )
        metrics = best.metrics.model_dump(exclude_none=True, exclude={"step"})
        return {**metrics, "checkpoint": best.fine_tuned_model_checkpoint, "step": best.step_number}

    @task
    def evaluate(model: str, params: Any = None) -> dict[str, Any]:
        """Ask the new model the held-out prompts; the score is the share of answers holding the expected phrase.

        The base model answers the same prompts, as the baseline the fine-tuning has to beat. (The scoring is
        the evaluation gate's, ``FineTuningEvaluateOperator``, used here as functions: see
        ``example_guarded_sweep`` for the gate as a task.)
        """
        from airflow_provider_finetune.hooks.finetune import FineTuningHook
        from airflow_provider_finetune.operators.evaluate import read_examples, score_model

        hook = FineTuningHook(CONN_ID)
        examples = read_examples((DATA / "support_eval.jsonl").read_text(), needs_expected=True)
        new, base = (
            score_model(hook, name, examples, scoring="contains", log=log) for name in (model, params["base_model"])
        )
        result = {"model": model, "score": new.score, "baseline_score": base.score, "prompts": len(examples)}
        log.info("Evaluation of %s: score %.2f (base model %.2f)", model, result["score"], result["baseline_score"])
        min_score = float(params["min_score"])
        if result["score"] < min_score:
            raise ValueError(f"{model} scored {result['score']:.2f}, below min_score {min_score}: not published")
        return result

    @task(outlets=[FINE_TUNED_MODEL_ASSET])
    def publish(
        model: str,
        job_id: str,
        best: dict[str, Any],
        evaluation: dict[str, Any],
        outlet_events: Any = None,
        params: Any = None,
    ) -> dict[str, Any]:
        """Record an event of the asset; its extra tells the DAGs it schedules what to deploy."""
        extra = {
            "fine_tuned_model": model,
            "job_id": job_id,
            "base_model": params["base_model"],
            "checkpoint": best["checkpoint"],
            "valid_loss": best["valid_loss"],
            "score": evaluation["score"],
            "baseline_score": evaluation["baseline_score"],
        }
        outlet_events[FINE_TUNED_MODEL_ASSET].extra = extra
        log.info("Published fine-tuned model %s to asset %s: %s", model, FINE_TUNED_MODEL_ASSET.name, extra)
        return extra

    best = pick_checkpoint(XComArg(fine_tune, key="checkpoints"), fine_tune.output)
    evaluation = evaluate(fine_tune.output)
    publish(fine_tune.output, XComArg(fine_tune, key="job_id"), best, evaluation)
