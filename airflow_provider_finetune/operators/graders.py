"""Operators that validate a grader and run it on samples, before a reinforcement job pays for it.

Importing this module is cheap: the hook, httpx and pydantic are only imported when a task runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.operators.base import _GraderTemplates

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["FineTuningGraderRunOperator", "FineTuningGraderValidateOperator"]


class _GraderOperator(_GraderTemplates):
    """Renders graders without mistaking their placeholders for Jinja, and validates them locally."""

    capability = "graders"
    ui_color = "#e8f0fe"

    grader: dict[str, Any] | str

    def _grader(self) -> dict[str, Any]:
        """The grader checked by the models, as the body sends it; a bad one raises before any request."""
        import json

        from airflow_provider_finetune.exceptions import InvalidRequestError
        from airflow_provider_finetune.models import ValidateGraderRequest, build_request

        grader: Any = self.grader
        if isinstance(grader, str):
            try:
                grader = json.loads(grader)
            except ValueError as err:
                raise InvalidRequestError(f"grader is not a JSON object: {err}", field="grader") from None
        body: dict[str, Any] = build_request(ValidateGraderRequest, grader=grader).to_body()["grader"]
        return body


class FineTuningGraderValidateOperator(_GraderOperator):
    """Check a grader: first locally against the models, then with the service; return it as validated.

    A grader that breaks a rule fails the task with a message naming the field, and nothing is sent. The
    grader's own placeholders (``{{sample.output_text}}``, ``{{item.label}}``) and a python grader's
    ``source`` are left as they are when the field is rendered.

    :param grader: the grader (templated): a dict, or its JSON text.
    :param finetune_conn_id: the connection.
    """

    template_fields: Sequence[str] = ("grader",)
    template_fields_renderers = {"grader": "json"}

    def __init__(
        self, *, grader: dict[str, Any] | str, finetune_conn_id: str = "finetune_default", **kwargs: Any
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.grader = grader

    def execute(self, context: Context) -> dict[str, Any]:
        """Validate the grader locally, then with the service; return the grader as a dict."""
        self._refuse_if_unsupported()
        body = self._grader()
        validated = self.hook.validate_grader(body).grader
        self.log.info("Grader %s (%s) is valid", body.get("name"), body.get("type"))
        if validated is None:
            return body
        if isinstance(validated, dict):
            return validated
        result: dict[str, Any] = validated.to_body()
        return result


class FineTuningGraderRunOperator(_GraderOperator):
    """Run a grader on samples and return the mean reward; fail on a grader error or a low mean.

    The grader and every sample are checked before the first run; the runs stop at the first sample whose
    run reports an error (a parse error, a python grader's runtime error...), since such errors usually
    repeat and model graders cost money.

    XComs: the return value is the mean reward; ``rewards`` (one per sample, in order) and
    ``mean_reward`` are pushed too, also when the mean is below ``min_mean_reward``.

    :param grader: the grader (templated): a dict, or its JSON text.
    :param samples: the samples (templated): ``[{"model_sample": "...", "item": {...}}, ...]``; ``item`` is
        optional.
    :param min_mean_reward: fail the task when the mean reward is below this.
    :param finetune_conn_id: the connection.
    """

    template_fields: Sequence[str] = ("grader", "samples")
    template_fields_renderers = {"grader": "json", "samples": "json"}

    def __init__(
        self,
        *,
        grader: dict[str, Any] | str,
        samples: list[dict[str, Any]],
        min_mean_reward: float | None = None,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.grader = grader
        self.samples = samples
        self.min_mean_reward = min_mean_reward

    def execute(self, context: Context) -> float:
        """Run the grader on each sample, push the rewards; return their mean."""
        self._refuse_if_unsupported()
        from airflow_provider_finetune.exceptions import FineTuningError

        grader = self._grader()
        samples = self._samples(grader)
        rewards: list[float] = []
        for index, (model_sample, item) in enumerate(samples):
            result = self.hook.run_grader(grader, model_sample, item)
            errors = result.metadata.errors if result.metadata else None
            failed = errors.failed() if errors else []
            if errors is not None and failed:
                details = [
                    f"{name}: {value}"
                    for name, value in {**errors.__dict__, **(errors.model_extra or {})}.items()
                    if isinstance(value, str) and value
                ]
                raise FineTuningError(
                    f"Grader {grader.get('name')!r} failed on samples[{index}]: {', '.join(failed)}"
                    + (f" ({'; '.join(details)})" if details else "")
                )
            if result.reward is None:
                raise FineTuningError(f"Grader {grader.get('name')!r} gave no reward for samples[{index}]")
            rewards.append(result.reward)
            self.log.info("samples[%d]: reward %s", index, result.reward)
        mean = sum(rewards) / len(rewards)
        ti = context["ti"]
        ti.xcom_push(key="rewards", value=rewards)
        ti.xcom_push(key="mean_reward", value=mean)
        self.log.info("Mean reward of grader %r over %d samples: %s", grader.get("name"), len(rewards), mean)
        if self.min_mean_reward is not None and mean < float(self.min_mean_reward):
            raise FineTuningError(
                f"The mean reward {mean:.4f} of grader {grader.get('name')!r} over {len(rewards)} samples is "
                f"below min_mean_reward {float(self.min_mean_reward)}"
            )
        return mean

    def _samples(self, grader: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
        """The samples, each checked as a run request; the message names the sample."""
        from airflow_provider_finetune.exceptions import InvalidRequestError
        from airflow_provider_finetune.models import RunGraderRequest, build_request

        samples = self.samples
        if not isinstance(samples, list | tuple) or not samples:
            raise InvalidRequestError(f"samples must be a non-empty list, got {samples!r}"[:200], field="samples")
        checked = []
        for index, sample in enumerate(samples):
            where = f"samples[{index}]"
            if not isinstance(sample, Mapping):
                raise InvalidRequestError(f"{where} must be a mapping, got {type(sample).__name__}", field=where)
            unknown = sorted(set(sample) - {"model_sample", "item"})
            if unknown:
                raise InvalidRequestError(
                    f"{where} has unknown keys {', '.join(map(str, unknown))}; a sample has model_sample and item",
                    field=where,
                )
            try:
                request = build_request(
                    RunGraderRequest, grader=grader, model_sample=sample.get("model_sample"), item=sample.get("item")
                )
            except InvalidRequestError as err:
                field = f"{where}.{err.field}" if err.field else where
                raise InvalidRequestError(f"{where}: {err.message}", field=field) from None
            checked.append((request.model_sample, request.item))
        return checked
