"""The evaluation gate against the emulator over real HTTP: a fine-tuned model and its base model answer the
example DAGs' held-out support prompts through chat completions (OpenAI's dialect and Azure's)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_finetune.backends.openai import OpenAIBackend
from airflow_provider_finetune.emulator import EmulatorServer
from airflow_provider_finetune.exceptions import InvalidRequestError, UnsupportedCapabilityError
from airflow_provider_finetune.hooks.finetune import FineTuningHook
from airflow_provider_finetune.operators.evaluate import FineTuningEvaluateOperator, read_examples, score_answer
from tests.integration.conftest import API_KEY, Emulator, emulator, emulator_server
from tests.operators.conftest import FakeTI

try:
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowFailException, AirflowSkipException  # type: ignore[no-redef,attr-defined]

__all__ = ["emulator", "emulator_server"]

DATA = Path(__file__).resolve().parents[2] / "example_dags" / "data"
EVAL_FILE = DATA / "support_eval.jsonl"
BASE_MODEL = "gpt-4o-mini-2024-07-18"
CHAT = "POST /v1/chat/completions"
STRING_CHECK = {
    "type": "string_check",
    "name": "holds the expected text",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.expected }}",
    "operation": "ilike",
}


@pytest.fixture(scope="module")
def fine_tuned(emulator_server: EmulatorServer) -> str:
    """A model fine-tuned on the support set (the emulator's model answers its training prompts)."""
    with pytest.MonkeyPatch.context() as patch:
        conn = {"conn_type": "finetune", "host": emulator_server.base_url, "password": API_KEY}
        patch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
        hook = FineTuningHook()
        training = hook.upload_file((DATA / "support_train.jsonl").read_bytes(), filename="support_train.jsonl")
        job = hook.create_job({"model": BASE_MODEL, "training_file": training.id, "suffix": "gate"})
        while not job.status.is_terminal():
            time.sleep(0.2)
            job = hook.get_job(job.id)
        assert job.fine_tuned_model is not None
        return job.fine_tuned_model


def gate(model: str, **kwargs: Any) -> FineTuningEvaluateOperator:
    kwargs.setdefault("baseline", BASE_MODEL)
    kwargs.setdefault("eval_file", EVAL_FILE)
    return FineTuningEvaluateOperator(task_id=f"evaluate_{uuid.uuid4().hex[:8]}", model=model, **kwargs)


class Outlets:
    """``outlet_events``: an accessor per Asset (by name and URI), made on first use, as Airflow's is."""

    def __init__(self) -> None:
        self.accessors: dict[tuple[str, str], Any] = {}

    def __getitem__(self, asset: Any) -> Any:
        key = (asset.name, asset.uri)
        if key not in self.accessors:
            self.accessors[key] = type("Accessor", (), {"extra": {}})()
        return self.accessors[key]


pytestmark = pytest.mark.integration


def test_a_model_that_beats_its_base_passes(emulator: Emulator, fine_tuned: str) -> None:
    ti = FakeTI()
    result = gate(fine_tuned, min_score=0.7).execute({"ti": ti})  # type: ignore[arg-type]
    # The fine-tuned model answers the reworded prompts from its training examples; the question whose
    # answer only the validation set holds is missed: 5 of 6. The base model gets canned answers.
    assert result["score"] == pytest.approx(5 / 6)
    assert result["baseline_score"] < result["score"]
    assert result == {
        "model": fine_tuned,
        "baseline": BASE_MODEL,
        "score": result["score"],
        "baseline_score": result["baseline_score"],
        "improvement": pytest.approx(result["score"] - result["baseline_score"]),
        "passed": True,
        "examples": 6,
        "scoring": "contains",
        "min_score": 0.7,
        "min_improvement": 0.0,
    }
    assert ti.xcoms["evaluation"] == result
    assert (ti.xcoms["score"], ti.xcoms["passed"]) == (result["score"], True)
    assert emulator.requests_to(CHAT) == 12  # every prompt, to each model


def test_a_model_no_better_than_the_baseline_fails_the_task_with_its_result_pushed(
    emulator: Emulator, fine_tuned: str
) -> None:
    ti = FakeTI()
    with pytest.raises(AirflowFailException, match="did not pass the evaluation gate") as failed:
        gate(fine_tuned, baseline=fine_tuned).execute({"ti": ti})  # type: ignore[arg-type]
    assert "+0.0000 against" in str(failed.value)
    assert ti.xcoms["evaluation"]["passed"] is False
    assert ti.xcoms["evaluation"]["improvement"] == 0.0


def test_a_model_below_min_score_skips_the_promotion(emulator: Emulator, fine_tuned: str) -> None:
    ti = FakeTI()
    with pytest.raises(AirflowSkipException, match=r"below min_score 0\.9"):
        gate(fine_tuned, min_score="0.9", on_failure="skip").execute({"ti": ti})  # type: ignore[arg-type]
    assert ti.xcoms["passed"] is False


def test_the_services_grader_scores_as_the_rule_it_runs(emulator: Emulator, fine_tuned: str) -> None:
    result = gate(fine_tuned, scoring="grader", grader=STRING_CHECK).execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert result["score"] == pytest.approx(5 / 6)
    assert result["scoring"] == "grader"
    assert emulator.requests_to("POST /v1/fine_tuning/alpha/graders/run") == 12


def test_the_result_goes_into_the_extra_of_the_tasks_asset_events(emulator: Emulator, fine_tuned: str) -> None:
    from airflow.sdk import Asset

    asset = Asset(name="support_model", uri="finetune://test/support")
    events = Outlets()
    task = gate(fine_tuned, outlets=[asset], asset_extra={"job_id": "ftjob-1"})
    result = task.execute({"ti": FakeTI(), "outlet_events": events})  # type: ignore[arg-type]
    assert events[asset].extra == {"job_id": "ftjob-1", "fine_tuned_model": fine_tuned, "evaluation": result}


@pytest.mark.parametrize("api_version", ["2025-04-01-preview", None], ids=["azure-versioned", "azure-v1"])
def test_it_works_on_azure_with_only_the_connection_changed(
    emulator: Emulator,
    emulator_server: EmulatorServer,
    fine_tuned: str,
    monkeypatch: pytest.MonkeyPatch,
    api_version: str | None,
) -> None:
    extra = {"service": "azure", **({"api_version": api_version} if api_version else {})}
    conn = {"conn_type": "finetune", "host": emulator.root, "password": API_KEY, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    result = gate(fine_tuned).execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert result["score"] == pytest.approx(5 / 6)
    routes = [route for route in emulator.counters()["requests"] if route.endswith("/chat/completions")]
    assert routes
    assert all(" /openai/" in route for route in routes)


def test_a_service_without_chat_completions_is_refused_before_any_question(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OpenAIBackend, "capabilities", replace(OpenAIBackend.capabilities, chat_completions=False))
    with pytest.raises(UnsupportedCapabilityError, match="serves no chat completions") as refused:
        gate("ft:any").execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert refused.value.capability == "chat_completions"
    assert emulator.counters()["requests"] == {}


def test_a_grader_on_a_service_without_graders_is_refused_before_any_question(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = {"conn_type": "finetune", "host": emulator.base_url, "password": API_KEY}
    conn["extra"] = {"service": "openai-compatible"}  # type: ignore[assignment]
    monkeypatch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
    with pytest.raises(UnsupportedCapabilityError, match="graders"):
        gate("ft:any", scoring="grader", grader=STRING_CHECK).execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert emulator.counters()["requests"] == {}


def test_a_bad_line_is_named_before_any_question(emulator: Emulator, tmp_path: Path) -> None:
    bad = tmp_path / "eval.jsonl"
    bad.write_text(EVAL_FILE.read_text().splitlines()[0] + "\n" + json.dumps({"messages": [], "expected": "x"}) + "\n")
    with pytest.raises(InvalidRequestError, match=r"eval\.jsonl line 2: messages must be") as refused:
        gate("ft:any", eval_file=bad).execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert refused.value.field == "eval_file"
    assert emulator.counters()["requests"] == {}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_score": "high"}, "min_score"),
        ({"min_score": 2}, "min_score"),
        ({"min_improvement": "x"}, "min_improvement"),
    ],
)
def test_bad_thresholds_are_refused_before_any_question(emulator: Emulator, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        gate("ft:any", **kwargs).execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert refused.value.field == field
    assert emulator.counters()["requests"] == {}


# -- the rules with no I/O --------------------------------------------------------------------------------


def test_scoring_rules() -> None:
    assert score_answer("contains", "Shipping takes 3 to 5 Business Days.", "3 to 5 business days") == 1.0
    assert score_answer("exact_match", "Shipping takes 3 to 5 business days.", "3 to 5 business days") == 0.0
    assert score_answer("exact_match", " Paris ", "paris") == 1.0


def test_examples_need_an_expected_answer_unless_a_grader_scores_them() -> None:
    row = json.dumps({"id": "q1", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(InvalidRequestError, match=r"held\.jsonl line 1: expected"):
        read_examples(row, needs_expected=True, source="held.jsonl")
    (example,) = read_examples(row, needs_expected=False)
    assert (example.name, example.expected, example.item["id"]) == ("q1", None, "q1")
    with pytest.raises(InvalidRequestError, match="holds no example"):
        read_examples("\n", needs_expected=False)


def test_bad_arguments_fail_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="scoring must be one of"):
        FineTuningEvaluateOperator(task_id="e", model="m", baseline="b", eval_file="f", scoring="bleu")
    with pytest.raises(ValueError, match="needs the grader"):
        FineTuningEvaluateOperator(task_id="e", model="m", baseline="b", eval_file="f", scoring="grader")
    with pytest.raises(ValueError, match="on_failure"):
        FineTuningEvaluateOperator(task_id="e", model="m", baseline="b", eval_file="f", on_failure="warn")


@pytest.mark.parametrize(
    ("choice", "answer"),
    [
        ({"message": {"role": "assistant", "content": "3 to 5 days"}, "finish_reason": "stop"}, "3 to 5 days"),
        ({"message": {"role": "assistant", "content": None, "refusal": "I can't help"}, "finish_reason": "stop"}, ""),
        ({"message": {"role": "assistant", "content": ""}, "finish_reason": "length"}, "cut off before it answered"),
        (
            {"message": {"role": "assistant", "content": None, "tool_calls": []}, "finish_reason": "tool_calls"},
            "no text",
        ),
    ],
)
def test_an_answer_is_its_text_a_refusal_scores_nothing_and_no_answer_is_an_error(
    choice: dict[str, Any], answer: str
) -> None:
    """A model cut off, or answering with something else than text, is not measured as a zero."""
    from airflow_provider_finetune.exceptions import FineTuningError
    from airflow_provider_finetune.operators.evaluate import _answer

    completion = {"choices": [choice]}
    if choice["finish_reason"] == "stop":
        assert _answer(completion, "m") == answer
    else:
        with pytest.raises(FineTuningError, match=answer):
            _answer(completion, "m")
