"""Deploy each model that ``example_finetune_retraining`` publishes: a DAG scheduled by an Asset.

What this DAG shows:

* data-aware scheduling on a fine-tuned model: ``schedule=[FINE_TUNED_MODEL_ASSET]`` runs this DAG each
  time the retraining DAG records an event of the asset;
* reading the model's name and metrics from the event's ``extra``: ``triggering_asset_events`` holds the
  event(s) that scheduled the run, ``inlet_events`` the asset's latest event when the run was triggered by
  hand;
* a smoke test of the model through chat completions before it takes traffic;
* sharing the model with the serving project (``FineTuningCheckpointPermissionOperator``; idempotent, and
  it needs an admin API key on the real service).

Unpause this DAG: like every new DAG it starts paused, and the events of a paused DAG's assets queue no
run. Promoting the model (pointing the ``support-assistant`` alias of your serving layer at it) is left as
a logged decision: it depends on where your application reads its model name from.
"""

from __future__ import annotations

import logging
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, task

from airflow_provider_finetune.operators.finetune import FineTuningCheckpointPermissionOperator

CONN_ID = "finetune_default"
log = logging.getLogger(__name__)
SERVING_PROJECT = "proj_brightwave_serving"
SERVING_ALIAS = "support-assistant"

# Declared as in example_finetune_retraining: an Asset is identified by its name and URI.
FINE_TUNED_MODEL_ASSET = Asset(name="finetune_support_assistant", uri="finetune://brightwave/support-assistant")

with DAG(
    dag_id="example_finetune_deploy",
    schedule=[FINE_TUNED_MODEL_ASSET],
    start_date=pendulum.datetime(2026, 1, 4, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["example", "finetune", "deployment", "asset"],
    doc_md=__doc__,
) as dag:

    @task(inlets=[FINE_TUNED_MODEL_ASSET])
    def new_model(triggering_asset_events: Any = None, inlet_events: Any = None) -> dict[str, Any]:
        """The model to deploy: from the event that scheduled this run, else the asset's latest event."""
        events = list(triggering_asset_events.get(FINE_TUNED_MODEL_ASSET, [])) if triggering_asset_events else []
        if events:
            source = "the event that scheduled this run"
        else:
            events = list(inlet_events[FINE_TUNED_MODEL_ASSET])
            source = "the asset's latest event (run triggered by hand)"
        if not events:
            raise ValueError(f"{FINE_TUNED_MODEL_ASSET.name} has no event yet: run example_finetune_retraining first")
        extra = dict(events[-1].extra or {})
        if not extra.get("fine_tuned_model"):
            raise ValueError(f"The asset event has no fine_tuned_model in its extra: {extra}")
        log.info("Deploying %s, from %s: %s", extra["fine_tuned_model"], source, extra)
        return extra

    @task
    def smoke_test(model: dict[str, Any]) -> str:
        """One real request to the model: it must exist and answer before it takes traffic."""
        from airflow_provider_finetune.hooks.finetune import FineTuningHook

        body = {
            "model": model["fine_tuned_model"],
            "messages": [{"role": "user", "content": "How do I reset my password?"}],
            "max_completion_tokens": 200,
        }
        answer = FineTuningHook(CONN_ID).chat_completion(body)["choices"][0]["message"]["content"]
        if not answer.strip():
            raise ValueError(f"{model['fine_tuned_model']} gave an empty answer")
        log.info("%s answers: %r", model["fine_tuned_model"], answer)
        return answer

    @task
    def promote(model: dict[str, Any], permission_ids: list[str]) -> dict[str, Any]:
        """Point the serving alias at the new model (here: the decision, logged)."""
        decision = {
            "alias": SERVING_ALIAS,
            "fine_tuned_model": model["fine_tuned_model"],
            "score": model.get("score"),
            "permission_ids": permission_ids,
        }
        log.info("Promoted %s to %r: %s", model["fine_tuned_model"], SERVING_ALIAS, decision)
        return decision

    model = new_model()
    share = FineTuningCheckpointPermissionOperator(
        task_id="share_with_serving_project",
        checkpoint=model["fine_tuned_model"],
        project_ids=[SERVING_PROJECT],
        finetune_conn_id=CONN_ID,
    )
    smoke_test(model) >> share
    promote(model, share.output)
