"""The evaluation gate: a fine-tuned model must beat a baseline on held-out prompts to be promoted.

Both models answer the same held-out JSONL through the connection's own service (its chat completions), and
each answer is scored by the service's grader, by exact match, or by whether it holds the expected text. The
gate passes when the new model beats the baseline by ``min_improvement`` and reaches ``min_score``; its result
is the return value, and the extra of the Asset events the task publishes (its ``outlets``), so that a deploy
DAG scheduled on the Asset reads what was measured. A model that does not pass fails the task, or skips it
and the promotion downstream.

Importing this module is cheap: the hook, httpx and the models are imported when the task runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.core.templating import number
from airflow_provider_finetune.operators.base import _GraderTemplates
from airflow_provider_finetune.operators.files import open_source

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_finetune.hooks.finetune import FineTuningHook

__all__ = [
    "SCORINGS",
    "EvalExample",
    "FineTuningEvaluateOperator",
    "ModelScore",
    "read_examples",
    "score_answer",
    "score_model",
]

#: How answers are scored: the service's ``grader``, ``exact_match`` (the whole answer, trimmed, case
#: ignored), or ``contains`` (the answer holds the expected text, case ignored).
SCORINGS = ("contains", "exact_match", "grader")
#: What the gate does with a model that does not pass: fail the task, or skip it (and what depends on it).
ON_FAILURE = ("fail", "skip")
#: Request fields every question is asked with: the same, deterministic ask for both models.
DEFAULT_COMPLETION = {"temperature": 0, "max_completion_tokens": 200}
#: Answers logged per model at most (every one is scored).
LOGGED_ANSWERS = 20


@dataclass(frozen=True)
class EvalExample:
    """One held-out prompt.

    :param line: its line in the file (from 1).
    :param messages: the conversation to answer (its last message is the user's).
    :param expected: the answer's expected text (for ``contains`` and ``exact_match``).
    :param item: the whole row, as the grader's ``item``.
    """

    line: int
    messages: list[dict[str, Any]]
    expected: str | None
    item: dict[str, Any]

    @property
    def name(self) -> str:
        """The row's ``id``, else its line."""
        return str(self.item.get("id") or f"line {self.line}")


def read_examples(text: str, *, needs_expected: bool, source: str = "eval_file") -> list[EvalExample]:
    """Read a held-out JSONL: one object a line with ``messages`` (ending with the user's) and ``expected``.

    :param text: the file's text.
    :param needs_expected: whether each row must carry ``expected`` (every scoring but the grader's).
    :param source: the file's name, for errors.
    :raises InvalidRequestError: naming the line and what is wrong with it, or the file when it has no row.
    """
    from airflow_provider_finetune.exceptions import InvalidRequestError

    examples = []
    for number_, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{source} line {number_}"
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InvalidRequestError(f"{where}: not JSON ({err.msg})", field="eval_file") from None
        if not isinstance(row, dict):
            raise InvalidRequestError(f"{where}: a row must be a JSON object", field="eval_file")
        messages = row.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) for m in messages)
            or messages[-1].get("role") != "user"
        ):
            raise InvalidRequestError(
                f"{where}: messages must be a list of messages ending with the user's", field="eval_file"
            )
        expected = row.get("expected")
        if needs_expected and (not isinstance(expected, str) or not expected.strip()):
            raise InvalidRequestError(f"{where}: expected must be the answer's expected text", field="eval_file")
        examples.append(EvalExample(number_, messages, expected if isinstance(expected, str) else None, row))
    if not examples:
        raise InvalidRequestError(f"{source} holds no example", field="eval_file")
    return examples


def score_answer(scoring: str, answer: str, expected: str) -> float:
    """1.0 when the answer matches the expected text as ``scoring`` says (``contains``, ``exact_match``), else 0.0."""
    got, want = answer.strip().casefold(), expected.strip().casefold()
    if scoring == "exact_match":
        return float(got == want)
    if scoring == "contains":
        return float(want in got)
    raise ValueError(f"no rule of its own for scoring {scoring!r}")


@dataclass(frozen=True)
class ModelScore:
    """How one model did: its mean score over the examples, and each example's."""

    model: str
    score: float
    scores: list[float]


def score_model(
    hook: FineTuningHook,
    model: str,
    examples: Sequence[EvalExample],
    *,
    scoring: str = "contains",
    grader: Mapping[str, Any] | None = None,
    completion: Mapping[str, Any] | None = None,
    log: Any = None,
) -> ModelScore:
    """Ask ``model`` every example through the service's chat completions, and score each answer.

    :param hook: the connection's hook.
    :param model: the model to ask (a fine-tuned model, a checkpoint, a base model).
    :param examples: the held-out prompts.
    :param scoring: one of :data:`SCORINGS`.
    :param grader: the grader, for ``scoring="grader"`` (its ``item`` is the example's row).
    :param completion: request fields besides ``model`` and ``messages`` (see :data:`DEFAULT_COMPLETION`).
    :param log: where each answer is logged.
    """
    judge = _judge(hook, scoring, grader)
    body = dict(DEFAULT_COMPLETION if completion is None else completion)
    scores = []
    for index, example in enumerate(examples):
        answer = _answer(hook.chat_completion({**body, "model": model, "messages": example.messages}), model)
        scores.append(judge(answer, example))
        if log is not None and index < LOGGED_ANSWERS:
            log.info(
                "[%s] %s: score %.2f, expected %r, got %r", model, example.name, scores[-1], example.expected, answer
            )
    return ModelScore(model, sum(scores) / len(scores), scores)


def _judge(hook: FineTuningHook, scoring: str, grader: Mapping[str, Any] | None) -> Callable[[str, EvalExample], float]:
    if scoring != "grader":
        return lambda answer, example: score_answer(scoring, answer, example.expected or "")

    def by_grader(answer: str, example: EvalExample) -> float:
        from airflow_provider_finetune.exceptions import FineTuningError

        result = hook.run_grader(grader, answer, example.item)
        if result.reward is None:
            raise FineTuningError(f"The grader gave no reward for {example.name}")
        return float(result.reward)

    return by_grader


def _answer(completion: Mapping[str, Any], model: str) -> str:
    """The text of a chat completion's first choice; an answer of another shape is an error, not a zero."""
    from airflow_provider_finetune.exceptions import FineTuningError

    try:
        choice = completion["choices"][0]
        message = choice["message"]
        content = message.get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise FineTuningError(f"{model} gave a chat completion with no answer: {str(completion)[:200]}") from None
    finish = choice.get("finish_reason")
    if not content and finish == "length":  # cut before any answer (reasoning used the budget): no measure
        raise FineTuningError(f"{model} was cut off before it answered (finish_reason length): raise the token limit")
    if isinstance(content, str):
        return content
    if isinstance(message.get("refusal"), str):
        return ""  # a refusal is an answer, and it answers nothing
    raise FineTuningError(f"{model} answered no text (finish_reason {finish!r}): {str(message)[:200]}")


class FineTuningEvaluateOperator(_GraderTemplates):
    """Evaluate a fine-tuned model against a baseline on held-out prompts; stop its promotion if it does not win.

    Both ``model`` and ``baseline`` (the base model, or the model now in production) answer every prompt of
    ``eval_file`` through the connection's chat completions, and each answer is scored (see
    :data:`SCORINGS`). The model passes when its mean score is at least ``min_score`` and beats the
    baseline's by more than ``min_improvement``.

    The return value (XCom) is the result: ``model``, ``baseline``, ``score``, ``baseline_score``,
    ``improvement``, ``passed``, ``examples``, ``scoring``, ``min_score``, ``min_improvement``. It is also
    pushed as ``evaluation`` (with ``score``, ``baseline_score`` and ``passed`` on their own) before a model
    that does not pass fails (or skips) the task, so that it can be read either way. When the
    model passes, every Asset in the task's ``outlets`` gets an event whose extra holds ``fine_tuned_model``,
    ``evaluation`` (the result) and ``asset_extra``.

    Everything is checked before the first question is asked: the arguments, the file (each bad line named)
    and the service (chat completions, and graders for ``scoring="grader"``).

    :param model: the model to evaluate (templated), e.g. the create operator's output.
    :param baseline: the model to beat (templated): the base model, or the model in production.
    :param eval_file: the held-out JSONL (templated): a local path, a URL that ``ObjectStoragePath``
        understands, or an object with ``open()``. Each line: ``{"messages": [...], "expected": "..."}``
        (``expected`` may be left out with a grader, which reads the row as its ``item``).
    :param scoring: ``contains`` (default), ``exact_match`` or ``grader``.
    :param grader: the service's grader, for ``scoring="grader"`` (templated; its ``{{ item.* }}`` and
        ``{{ sample.* }}`` placeholders are left for the service).
    :param min_score: the score the model must reach at least (templated), in [0, 1] for the built-in scorings.
    :param min_improvement: by how much its score must beat the baseline's, strictly (templated); ``0`` (the
        default) asks for any improvement, a negative value tolerates a small loss.
    :param on_failure: ``fail`` (default) or ``skip`` when the model does not pass.
    :param completion: request fields the questions are asked with besides the model and messages
        (default: ``temperature`` 0, ``max_completion_tokens`` 200).
    :param asset_extra: more fields for the extra of the Asset events (templated), e.g. the job id.
    :param finetune_conn_id: the connection.
    """

    template_fields: Sequence[str] = (
        "model",
        "baseline",
        "eval_file",
        "grader",
        "min_score",
        "min_improvement",
        "asset_extra",
    )
    template_fields_renderers = {"grader": "json", "asset_extra": "json"}
    ui_color = "#fdf1e0"

    def __init__(
        self,
        *,
        model: str,
        baseline: str,
        eval_file: Any,
        scoring: str = "contains",
        grader: dict[str, Any] | None = None,
        min_score: float | str | None = None,
        min_improvement: float | str | None = 0.0,
        on_failure: str = "fail",
        completion: dict[str, Any] | None = None,
        asset_extra: dict[str, Any] | None = None,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be 'fail' or 'skip', got {on_failure!r}")
        if scoring == "grader" and grader is None:
            raise ValueError("scoring='grader' needs the grader")
        self.model = model
        self.baseline = baseline
        self.eval_file = eval_file
        self.scoring = scoring
        self.grader = grader
        self.min_score = min_score
        self.min_improvement = min_improvement
        self.on_failure = on_failure
        self.completion = completion
        self.asset_extra = asset_extra

    def execute(self, context: Context) -> dict[str, Any]:
        """Check everything, ask both models every prompt, push the result; fail or skip if the model loses."""
        min_score, min_improvement = self._thresholds()
        examples = self._examples()
        self._refuse_if_unable()
        self.log.info(
            "Evaluating %s against %s on %d held-out example(s), scoring by %s",
            self.model,
            self.baseline,
            len(examples),
            self.scoring,
        )
        new = self._score(self.model, examples)
        base = self._score(self.baseline, examples)
        improvement = new.score - base.score
        passed = (min_score is None or new.score >= min_score) and improvement > min_improvement
        result = {
            "model": self.model,
            "baseline": self.baseline,
            "score": new.score,
            "baseline_score": base.score,
            "improvement": improvement,
            "passed": passed,
            "examples": len(examples),
            "scoring": self.scoring,
            "min_score": min_score,
            "min_improvement": min_improvement,
        }
        ti = context["ti"]
        for key in ("score", "baseline_score", "passed"):
            ti.xcom_push(key=key, value=result[key])
        ti.xcom_push(key="evaluation", value=result)
        self.log.info(
            "%s scored %.4f, %s %.4f (%+.4f): %s",
            self.model,
            new.score,
            self.baseline,
            base.score,
            improvement,
            "passed" if passed else "did not pass",
        )
        if not passed:
            self._stop(self._why(result))
        self._publish(context, result)
        return result

    def _thresholds(self) -> tuple[float | None, float]:
        from airflow_provider_finetune.exceptions import InvalidRequestError

        values: dict[str, float | None] = {}
        for name in ("min_score", "min_improvement"):
            raw = number(getattr(self, name))
            if raw is None or raw == "":
                values[name] = None
            elif isinstance(raw, bool) or not isinstance(raw, int | float):
                raise InvalidRequestError(f"{name} must be a number, got {getattr(self, name)!r}", field=name)
            else:
                values[name] = float(raw)
        min_score = values["min_score"]
        if min_score is not None and self.scoring != "grader" and not 0.0 <= min_score <= 1.0:
            raise InvalidRequestError(
                f"min_score must be in [0, 1] for {self.scoring}, got {min_score}", field="min_score"
            )
        return min_score, values["min_improvement"] or 0.0

    def _examples(self) -> list[EvalExample]:
        from airflow_provider_finetune.exceptions import InvalidRequestError

        stream, name = open_source(self.eval_file, field="eval_file")
        with stream:
            try:
                text = stream.read().decode("utf-8")
            except UnicodeDecodeError as err:
                raise InvalidRequestError(f"{name} is not UTF-8 text: {err.reason}", field="eval_file") from None
        return read_examples(text, needs_expected=self.scoring != "grader", source=name)

    def _refuse_if_unable(self) -> None:
        """Refuse, before the first question, a service without chat completions (or graders, when asked for)."""
        from airflow_provider_finetune.exceptions import UnsupportedCapabilityError

        backend = self.hook.backend
        if not backend.supports("chat_completions"):
            raise UnsupportedCapabilityError(
                f"{backend.label} serves no chat completions through this connection: the models cannot be "
                "asked, so they cannot be evaluated here",
                service=backend.service,
                capability="chat_completions",
            )
        if self.scoring == "grader":
            self.hook.require("graders")

    def _score(self, model: str, examples: Sequence[EvalExample]) -> ModelScore:
        return score_model(
            self.hook,
            model,
            examples,
            scoring=self.scoring,
            grader=self.grader,
            completion=self.completion,
            log=self.log,
        )

    def _why(self, result: Mapping[str, Any]) -> str:
        reasons = []
        if result["min_score"] is not None and result["score"] < result["min_score"]:
            reasons.append(f"its score {result['score']:.4f} is below min_score {result['min_score']}")
        if result["improvement"] <= result["min_improvement"]:
            reasons.append(
                f"it scored {result['improvement']:+.4f} against {result['baseline']} "
                f"({result['baseline_score']:.4f}), not more than min_improvement {result['min_improvement']}"
            )
        return f"{result['model']} did not pass the evaluation gate: {'; '.join(reasons)}"

    def _stop(self, message: str) -> None:
        try:  # Airflow 3.2+
            from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
        except ImportError:  # Airflow 3.1
            from airflow.exceptions import AirflowFailException, AirflowSkipException  # type: ignore[no-redef]
        if self.on_failure == "skip":
            raise AirflowSkipException(message)
        raise AirflowFailException(message)  # no retry: the same models score the same

    def _publish(self, context: Context, result: dict[str, Any]) -> None:
        """Put the result in the extra of the events of the task's Assets."""
        assets = _assets(self.outlets)
        if not assets:
            return
        extra = {**(self.asset_extra or {}), "fine_tuned_model": self.model, "evaluation": result}
        events = context["outlet_events"]
        for asset in assets:
            events[asset].extra = {**dict(events[asset].extra or {}), **extra}
            self.log.info("Asset %s: event extra %s", getattr(asset, "name", asset), extra)


def _assets(outlets: Iterable[Any]) -> list[Any]:
    from airflow.sdk import Asset

    return [outlet for outlet in outlets if isinstance(outlet, Asset)]
