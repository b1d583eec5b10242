"""Graders: string_check and text_similarity computed, multi formulas, the others checked for shape."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from airflow_provider_finetune.emulator.graders import similarity
from tests.emulator.conftest import GRADER, error_of

pytestmark = pytest.mark.integration


def run(
    client: httpx.Client, grader: dict[str, Any], sample: str, item: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"grader": grader, "model_sample": sample}
    if item is not None:
        body["item"] = item
    response = client.post("/fine_tuning/alpha/graders/run", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.parametrize(
    ("operation", "sample", "label", "reward"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "paris", "Paris", 0.0),
        ("ne", "Lyon", "Paris", 1.0),
        ("like", "It is Paris.", "Paris", 1.0),
        ("like", "It is paris.", "Paris", 0.0),
        ("ilike", "It is PARIS.", "paris", 1.0),
        ("ilike", "It is Lyon.", "paris", 0.0),
    ],
)
def test_string_check(client: httpx.Client, operation: str, sample: str, label: str, reward: float) -> None:
    result = run(client, {**GRADER, "operation": operation}, sample, {"label": label})
    assert result["reward"] == reward
    assert result["metadata"]["type"] == "string_check"
    assert not any(value for value in result["metadata"]["errors"].values())


def test_templates_reach_into_json_samples_and_nested_items(client: httpx.Client) -> None:
    grader = {**GRADER, "input": "{{ sample.output_json.city }}", "reference": "{{ item.answer.city }}"}
    assert run(client, grader, '{"city": "Rome"}', {"answer": {"city": "Rome"}})["reward"] == 1.0


def test_an_unknown_variable_is_flagged(client: httpx.Client) -> None:
    result = run(client, {**GRADER, "reference": "{{item.missing}}"}, "x", {"label": "x"})
    assert result["reward"] == 0.0
    assert result["metadata"]["errors"]["invalid_variable_error"] is True


@pytest.mark.parametrize(
    ("metric", "hypothesis", "reference", "expected"),
    [
        ("fuzzy_match", "kitten", "kitten", 1.0),
        ("fuzzy_match", "abcd", "abce", 0.75),
        ("bleu", "the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("bleu", "dogs bark", "the cat sat on the mat", 0.0),
        ("rouge_1", "the cat sat", "the cat ran", 2 / 3),
        ("rouge_2", "the cat sat", "the cat ran", 0.5),
        ("rouge_l", "a b c d", "a x c d", 0.75),
        ("gleu", "the cat", "the cat", 1.0),
        ("cosine", "a a b", "a b b", 0.8),
        ("meteor", "the cat sat", "the cat sat", 1 - 0.5 / 27),
    ],
)
def test_text_similarity_metrics(metric: str, hypothesis: str, reference: str, expected: float) -> None:
    assert similarity(hypothesis, reference, metric) == pytest.approx(expected, abs=1e-4)


def test_bleu_rewards_closer_texts_more() -> None:
    reference = "the quick brown fox jumps over the lazy dog"
    close = similarity("the quick brown fox jumps over a lazy dog", reference, "bleu")
    far = similarity("a fox jumps", reference, "bleu")
    assert 1.0 > close > far > 0.0


def test_text_similarity_over_http(client: httpx.Client) -> None:
    grader = {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "evaluation_metric": "rouge_l",
    }
    assert run(client, grader, "a b c d", {"reference": "a x c d"})["reward"] == 0.75


def test_a_multi_grader_combines_its_graders_with_its_formula(client: httpx.Client) -> None:
    grader = {
        "type": "multi",
        "name": "combined",
        "graders": {
            "exact": GRADER,
            "fuzzy": {
                "type": "text_similarity",
                "name": "fuzzy",
                "input": "{{sample.output_text}}",
                "reference": "{{item.label}}",
                "evaluation_metric": "fuzzy_match",
            },
        },
        "calculate_output": "0.5 * exact + 0.5 * max(fuzzy, 0)",
    }
    result = run(client, grader, "abcd", {"label": "abce"})
    assert result["sub_rewards"] == {"exact": 0.0, "fuzzy": 0.75}
    assert result["reward"] == pytest.approx(0.375)
    assert result["metadata"]["scores"] == result["sub_rewards"]


def test_model_and_python_graders_are_checked_not_run(client: httpx.Client) -> None:
    score = {
        "type": "score_model",
        "name": "judge",
        "model": "gpt-4o-mini",
        "input": [{"role": "user", "content": "Score {{sample.output_text}} against {{item.label}}"}],
        "range": [0, 10],
    }
    first = run(client, score, "yes", {"label": "yes"})
    assert 0 <= first["reward"] <= 10
    assert run(client, score, "yes", {"label": "yes"})["reward"] == first["reward"]
    assert first["metadata"]["sampled_model_name"] == "gpt-4o-mini"
    python = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}
    assert 0 <= run(client, python, "x")["reward"] <= 1


@pytest.mark.parametrize(
    ("grader", "param"),
    [
        ({"type": "python", "name": "p", "source": "def grade(:"}, "grader.source"),
        ({"type": "python", "name": "p", "source": "x = 1"}, "grader.source"),
        (
            {"type": "multi", "name": "m", "graders": {"a": GRADER}, "calculate_output": "a + b"},
            "grader.calculate_output",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": GRADER}, "calculate_output": "__import__('os')"},
            "grader.calculate_output",
        ),
        ({**GRADER, "operation": "startswith"}, "grader.operation"),
        ({"type": "telepathy", "name": "t"}, "grader"),
    ],
)
def test_bad_graders_are_refused(client: httpx.Client, grader: dict[str, Any], param: str) -> None:
    for path, body in (("validate", {"grader": grader}), ("run", {"grader": grader, "model_sample": "x"})):
        response = client.post(f"/fine_tuning/alpha/graders/{path}", json=body)
        assert response.status_code == 400, response.text
        assert error_of(response)["param"] == param


def test_validate_returns_the_grader(client: httpx.Client) -> None:
    assert client.post("/fine_tuning/alpha/graders/validate", json={"grader": GRADER}).json() == {"grader": GRADER}
    missing = client.post("/fine_tuning/alpha/graders/run", json={"grader": GRADER})
    assert missing.status_code == 400
    assert error_of(missing)["param"] == "model_sample"
