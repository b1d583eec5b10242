"""Lineage of the create operator through the OpenLineage provider's own machinery, against the emulator.

The OpenLineage provider finds an operator's lineage with its ``ExtractorManager`` (the listener calls
``extract_metadata`` when a task starts and when it ends); these tests call it the same way, on an operator
that ran against the emulator over real HTTP, and serialize what it found with the OpenLineage client's
``Serde``, as the client does before sending an event. Without the provider, nothing is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
from tests.integration.conftest import API_KEY, Emulator, chat_lines, emulator, emulator_server
from tests.operators.conftest import FakeTI

__all__ = ["emulator", "emulator_server"]

pytest.importorskip("airflow.providers.openlineage")

from airflow.providers.openlineage.extractors import ExtractorManager, OperatorLineage
from airflow.utils.state import TaskInstanceState
from openlineage.client.serde import Serde

from airflow_provider_finetune.operators.job.openlineage import (
    FACET_NAME,
    FineTuningJobRunFacet,
    dataset,
    operator_lineage,
    service_namespace,
)

ROOT = Path(__file__).resolve().parents[1]


class DagRun:
    run_id = "scheduled__2026-11-16T00:00:00+00:00"


def extract(operator: FineTuningJobOperator, state: TaskInstanceState, ti: Any) -> OperatorLineage:
    """What the OpenLineage listener finds for the task, through the provider's extractor manager."""
    return ExtractorManager().extract_metadata(DagRun(), operator, state, ti)


def facet_of(lineage: OperatorLineage) -> dict[str, Any]:
    facet = lineage.run_facets[FACET_NAME]
    assert isinstance(facet, FineTuningJobRunFacet)
    serialized: dict[str, Any] = Serde.to_dict(facet)
    return serialized


def test_start_and_complete_report_the_data_the_model_and_the_job(emulator: Emulator) -> None:
    hook = FineTuningHook()
    training = hook.upload_file(chat_lines(), filename="train.jsonl").id
    validation = hook.upload_file(chat_lines(prefix="v"), filename="valid.jsonl").id
    operator = FineTuningJobOperator(
        task_id="fine_tune",
        model="gpt-4o-mini-2024-07-18",
        training_file=training,
        validation_file=validation,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
        poll_interval=0.2,
    )
    ti = FakeTI(run_id=f"test__{uuid.uuid4().hex}")
    namespace = "openai://" + emulator.base_url.removeprefix("http://")

    started = extract(operator, TaskInstanceState.RUNNING, ti)
    assert [(d.namespace, d.name) for d in started.inputs] == [(namespace, training), (namespace, validation)]
    assert started.outputs == []
    assert facet_of(started) == {
        "_producer": facet_of(started)["_producer"],
        "_schemaURL": FineTuningJobRunFacet._get_schema(),
        "service": "openai",
        "baseModel": "gpt-4o-mini-2024-07-18",
        "hyperparameters": {"n_epochs": 2, "batch_size": 4},
        "method": "supervised",
    }

    model = operator.execute({"ti": ti})  # type: ignore[arg-type]
    job = hook.get_job(ti.xcoms["job_id"])
    completed = extract(operator, TaskInstanceState.SUCCESS, ti)
    assert [(d.namespace, d.name) for d in completed.inputs] == [(namespace, training), (namespace, validation)]
    assert [(d.namespace, d.name) for d in completed.outputs] == [(namespace, model)]
    facet = facet_of(completed)
    assert facet["jobId"] == job.id
    assert facet["trainedTokens"] == job.trained_tokens > 0
    assert facet["baseModel"] == "gpt-4o-mini-2024-07-18"
    assert "reusedJobId" not in facet
    # The connection's key is nowhere in what would be sent.
    sent = {name: Serde.to_dict(value) for name, value in completed.run_facets.items()}
    assert API_KEY not in json.dumps(sent) + repr(completed)


def test_namespaces_name_the_service_and_bucket_without_secrets() -> None:
    namespace = service_namespace("azure", "https://user:pa55@my-resource.openai.azure.com:443/openai/v1/?key=k#x")
    assert namespace == "azure://my-resource.openai.azure.com:443/openai/v1"
    s3 = dataset("s3://training-bucket/weekly/train.jsonl", namespace)
    assert (s3.namespace, s3.name) == ("s3://training-bucket", "weekly/train.jsonl")
    file = dataset("file-abc", namespace)
    assert (file.namespace, file.name) == (namespace, "file-abc")


def test_a_reused_model_names_the_job_it_came_from(emulator: Emulator) -> None:
    from airflow_provider_finetune.models import CreateFineTuningJobRequest

    request = CreateFineTuningJobRequest(model="gpt-4o-mini-2024-07-18", training_file="file-abc")
    lineage = operator_lineage(
        FineTuningHook(),
        request,
        job_id="ftjob-old",
        fine_tuned_model="ft:m",
        trained_tokens=10,
        reused_job_id="ftjob-old",
    )
    assert facet_of(lineage)["reusedJobId"] == "ftjob-old"
    assert [d.name for d in lineage.outputs] == ["ft:m"]


# Stands in for an environment without the OpenLineage client and provider. The provider's package and its
# get_provider_info (metadata only: they import nothing of OpenLineage) stay importable, since the installed
# distribution's entry point still names them and Airflow reads every provider's metadata.
_NO_OPENLINEAGE = """
import importlib.abc, sys

METADATA = ("airflow.providers.openlineage", "airflow.providers.openlineage.get_provider_info")

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        blocked = name == "openlineage" or name.startswith(("openlineage.", "airflow.providers.openlineage."))
        if blocked and name not in METADATA:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
"""


def test_without_openlineage_nothing_is_imported_and_the_operator_runs(emulator: Emulator, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(_NO_OPENLINEAGE)
    training = FineTuningHook().upload_file(chat_lines(), filename="train.jsonl").id
    script = textwrap.dedent(
        f"""
        import sys
        from tests.operators.conftest import FakeTI
        from airflow_provider_finetune.operators.finetune import FineTuningJobOperator
        for name in ("openlineage.client", "airflow.providers.openlineage.extractors"):
            try:
                __import__(name)
            except ImportError:
                continue
            raise SystemExit(name + " is importable")
        op = FineTuningJobOperator(task_id="t", model="gpt-4o-mini-2024-07-18", training_file={training!r},
                                   poll_interval=0.2)
        model = op.execute({{"ti": FakeTI(run_id="no-lineage-{uuid.uuid4().hex}")}})
        assert model.startswith("ft:"), model
        loaded = sorted(
            name for name in sys.modules
            if name.startswith(
                ("openlineage", "airflow_provider_finetune.operators.job.openlineage", "airflow.providers.openlineage.")
            )
            and name != "airflow.providers.openlineage.get_provider_info"  # Airflow reads every provider's metadata
        )
        print("LOADED", loaded)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LOADED []" in done.stdout, done.stdout[-2000:]


def test_the_operator_module_imports_nothing_of_openlineage() -> None:
    # Airflow itself reads every provider's metadata (the package and its get_provider_info): nothing more.
    script = (
        "import sys, airflow_provider_finetune.operators.finetune; "
        "print(sorted(n for n in sys.modules if n.startswith(('openlineage', 'airflow.providers.openlineage.', "
        "'airflow_provider_finetune.operators.job.openlineage')) "
        "and n != 'airflow.providers.openlineage.get_provider_info'))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
