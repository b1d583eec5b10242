"""Lineage end to end: a real DAG run whose events the OpenLineage provider's listener emits, read back from its
file transport. The DAG run happens in a process of its own, so that the listener is set up with that transport
from the start (OpenLineage reads its configuration once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_finetune.hooks.finetune import FineTuningHook
from tests.integration.conftest import API_KEY, DAGS, Emulator, airflow_db, chat_lines, emulator, emulator_server

__all__ = ["airflow_db", "emulator", "emulator_server"]

pytest.importorskip("airflow.providers.openlineage")
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)  # one DAG run in a new Airflow process: about a minute on an idle machine
def test_the_listener_emits_the_data_the_model_and_the_job(
    airflow_db: None, emulator: Emulator, tmp_path: Path
) -> None:
    training = FineTuningHook().upload_file(chat_lines(prefix="lineage "), filename="train.jsonl").id
    events_file = tmp_path / "events.jsonl"
    script = textwrap.dedent(
        f"""
        from datetime import datetime, timezone
        try:
            from airflow.dag_processing.dagbag import DagBag
        except ImportError:  # Airflow 3.1
            from airflow.models.dagbag import DagBag
        dag = DagBag({str(DAGS)!r}).get_dag("ft_unchanged_file_id")
        when = datetime(2045, 1, 1, tzinfo=timezone.utc)
        run = dag.test(logical_date=when, run_conf={{"training_file": {training!r}}})
        print("STATE", run.state)
        """
    )
    transport = {"type": "file", "log_file_path": str(events_file), "append": True}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert "STATE success" in done.stdout, (done.stdout + done.stderr)[-3000:]

    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    task_events = {e["eventType"]: e for e in events if e["job"]["name"] == "ft_unchanged_file_id.fine_tune"}
    namespace = "openai://" + emulator.base_url.removeprefix("http://")
    start, complete = task_events["START"], task_events["COMPLETE"]
    for event in (start, complete):
        assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [(namespace, training)]
        assert API_KEY not in json.dumps(event)
    assert start["outputs"] == []
    assert start["run"]["facets"]["fineTuningJob"]["baseModel"] == "gpt-4o-mini-2024-07-18"
    facet: dict[str, Any] = complete["run"]["facets"]["fineTuningJob"]
    job = FineTuningHook().get_job(facet["jobId"])
    assert [(d["namespace"], d["name"]) for d in complete["outputs"]] == [(namespace, job.fine_tuned_model)]
    assert facet["service"] == "openai"
    assert facet["trainedTokens"] == job.trained_tokens > 0
    assert facet["method"] == "supervised"
