"""Operators of what only AWS Bedrock has: training data in S3, and custom model deployments for on-demand inference.

Fine-tuning itself runs through :class:`~airflow_provider_finetune.operators.finetune.FineTuningJobOperator` with a
Bedrock connection and ``service_options``; these operators carry the steps around it:

* :class:`BedrockTrainingDataOperator` checks a JSONL file in the format the model family and customization type
  take (:mod:`airflow_provider_finetune.training_data.bedrock`) and writes it to S3 through the amazon provider's
  ``S3Hook``, returning its ``s3://`` URI; a file already in S3 is checked where it is, streamed line by line.
* :class:`BedrockCustomModelDeploymentOperator` deploys a custom model for on-demand inference
  (``CreateCustomModelDeployment``), once per task instance (its name and ``clientRequestToken`` come from the
  task instance), waits until it is ``Active`` (on the worker or deferred) and returns its ARN.
* :class:`BedrockCustomModelDeploymentDeleteOperator` deletes one (a deployment already gone is fine).

Importing this module is cheap: the hooks, httpx and pydantic are imported when a task runs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.core.compat import conf
from airflow_provider_finetune.operators.base import _FineTuningOperator, _seconds, task_tag

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_finetune.backends.bedrock import BedrockBackend, CustomModelDeployment

__all__ = [
    "BedrockCustomModelDeploymentDeleteOperator",
    "BedrockCustomModelDeploymentOperator",
    "BedrockTrainingDataOperator",
]


def _split_s3(uri: str, field: str) -> tuple[str, str]:
    from airflow_provider_finetune.exceptions import InvalidRequestError

    if not isinstance(uri, str) or not uri.startswith("s3://") or "/" not in uri[5:]:
        raise InvalidRequestError(f"{field}: {uri!r} is not an s3://bucket/key URI", field=field)
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise InvalidRequestError(f"{field}: {uri!r} names no bucket or no key", field=field)
    return bucket, key


class _BedrockOperator(_FineTuningOperator):
    """What the Bedrock operators share: the connection must be a Bedrock one."""

    ui_color = "#fdf1e3"

    def bedrock(self) -> BedrockBackend:
        """The connection's Bedrock backend; any other service is refused in one line."""
        from airflow_provider_finetune.backends.bedrock import BedrockBackend
        from airflow_provider_finetune.exceptions import InvalidRequestError

        backend = self.hook.backend
        if not isinstance(backend, BedrockBackend):
            raise InvalidRequestError(
                f"finetune_conn_id: {self.finetune_conn_id!r} is a {backend.label} connection; "
                f"{type(self).__name__} needs a Bedrock one (service: bedrock)",
                field="finetune_conn_id",
            )
        return backend


class BedrockTrainingDataOperator(_BedrockOperator):
    """Check a JSONL training file in Bedrock's format for the model and customization type; put it in S3.

    A local file is checked line by line, then written to ``s3_uri`` (an S3 put of the same content is
    idempotent: a retry writes the same object). A source already in S3 is checked where it is, streamed line by
    line and never downloaded whole, and its URI is returned. A bad file fails the task naming the line, before
    anything is written.

    XComs: the return value is the ``s3://`` URI; ``records`` is pushed too.

    :param source: a local path or an ``s3://`` URI (templated).
    :param model: the base model the data is for (templated): it picks the format.
    :param customization_type: ``FINE_TUNING``, ``CONTINUED_PRE_TRAINING``, ``DISTILLATION`` or
        ``REINFORCEMENT_FINE_TUNING`` (templated).
    :param s3_uri: where to write a local source (templated).
    :param aws_conn_id: the Airflow AWS connection; the Bedrock connection's ``aws_conn_id`` by default.
    :param min_records: fewest records the file must hold.
    :param finetune_conn_id: the Bedrock connection.
    """

    template_fields: Sequence[str] = ("source", "model", "customization_type", "s3_uri")

    def __init__(
        self,
        *,
        source: str,
        model: str,
        customization_type: str = "FINE_TUNING",
        s3_uri: str | None = None,
        aws_conn_id: str | None = None,
        min_records: int = 1,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.source = source
        self.model = model
        self.customization_type = customization_type
        self.s3_uri = s3_uri
        self.aws_conn_id = aws_conn_id
        self.min_records = min_records

    def s3_hook(self) -> Any:
        """The amazon provider's ``S3Hook`` for the AWS connection."""
        from airflow_provider_finetune.backends.aws import MISSING_EXTRA
        from airflow_provider_finetune.exceptions import InvalidRequestError

        try:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        except ImportError as err:
            raise InvalidRequestError(MISSING_EXTRA, field="aws_conn_id") from err
        conn_id = self.aws_conn_id or self.bedrock().settings.aws_conn_id or "aws_default"
        return S3Hook(aws_conn_id=conn_id)

    def execute(self, context: Context) -> str:
        """Check the file, then put it in S3 (unless it is there already); return its URI."""
        from airflow_provider_finetune.training_data.bedrock import data_format, validate_lines

        self.bedrock()
        fmt = data_format(self.model, self.customization_type)
        s3 = self.s3_hook()
        source = str(self.source)
        if source.startswith("s3://"):
            bucket, key = _split_s3(source, "source")
            body = s3.get_key(key, bucket_name=bucket).get()["Body"]
            try:
                summary = validate_lines(body.iter_lines(), fmt, min_records=self.min_records)
            finally:
                body.close()
            uri = source
        else:
            if not self.s3_uri:
                from airflow_provider_finetune.exceptions import InvalidRequestError

                raise InvalidRequestError("s3_uri: where to write a local training file must be given", field="s3_uri")
            bucket, key = _split_s3(self.s3_uri, "s3_uri")
            with open(source, "rb") as lines:
                summary = validate_lines(lines, fmt, min_records=self.min_records)
            s3.load_file(source, key, bucket_name=bucket, replace=True)
            uri = f"s3://{bucket}/{key}"
        self.log.info("%s holds %d records in Bedrock's %s format", uri, summary.records, summary.format)
        context["ti"].xcom_push(key="records", value=summary.records)
        return uri


class BedrockCustomModelDeploymentOperator(_BedrockOperator):
    """Deploy a custom model for on-demand inference; wait until it is ``Active``; return the deployment's ARN.

    Once per task instance: the deployment's name (and its ``clientRequestToken``) comes from the task instance, so
    a retry, or a create whose answer was lost, finds the deployment by its name instead of making another. A
    deployment of that name serving another model fails the task, naming both.

    :param model_arn: the custom model (a fine-tuning task's return value, templated).
    :param deployment_name: the deployment's name (templated); one derived from the task instance by default.
    :param description: its description (templated).
    :param tags: its tags.
    :param wait_for_active: wait until it is ``Active`` (the default).
    :param deferrable: wait in the triggerer.
    :param poll_interval: seconds between polls.
    :param timeout: how long to wait, from the start of the try (the task's own timeout bounds it otherwise).
    :param finetune_conn_id: the Bedrock connection.
    """

    template_fields: Sequence[str] = ("model_arn", "deployment_name", "description", "tags")

    def __init__(
        self,
        *,
        model_arn: str,
        deployment_name: str | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        wait_for_active: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 30.0,
        timeout: float | timedelta | None = None,
        max_consecutive_errors: int = 10,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.model_arn = model_arn
        self.deployment_name = deployment_name
        self.description = description
        self.tags = tags
        self.wait_for_active = wait_for_active
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = _seconds(timeout)
        self.max_consecutive_errors = max_consecutive_errors

    def execute(self, context: Context) -> str | None:
        """Create (or find) the deployment, then wait for it."""
        started = time.time()
        backend = self.bedrock()
        name = self.deployment_name or _deployment_name(task_tag(context))
        deployment = self._ensure(backend, name)
        context["ti"].xcom_push(key="deployment_arn", value=deployment.arn)
        if not self.wait_for_active:
            return deployment.arn
        deadline = None if self.timeout is None else started + self.timeout
        from airflow_provider_finetune.rules.waiting import TRANSIENT
        from airflow_provider_finetune.triggers.bedrock import BedrockCustomModelDeploymentTrigger, deployment_outcome

        event = deployment_outcome(deployment)
        if event is None and self.deferrable:
            self.defer(
                trigger=BedrockCustomModelDeploymentTrigger(
                    deployment.arn,
                    finetune_conn_id=self.finetune_conn_id,
                    poll_interval=self.poll_interval,
                    deadline=deadline,
                    max_consecutive_errors=self.max_consecutive_errors,
                ),
                method_name="execute_complete",
            )
        errors = 0
        while event is None:
            if deadline is not None and time.time() >= deadline:
                event = {"status": "timeout", "message": f"Deployment {deployment.arn} was not active in time"}
                break
            time.sleep(
                self.poll_interval if deadline is None else max(min(self.poll_interval, deadline - time.time()), 0)
            )
            try:
                deployment = self.hook.call(backend.get_deployment(deployment.arn))
            except TRANSIENT as err:  # as the deferred wait does: only so many failed reads in a row end it
                errors += 1
                self.log.warning("Could not read deployment %s (%d in a row): %s", deployment.arn, errors, err)
                if errors >= self.max_consecutive_errors:
                    raise
                continue
            errors = 0
            event = deployment_outcome(deployment)
        return self.execute_complete(context, {**event, "deployment_arn": deployment.arn})

    def _ensure(self, backend: BedrockBackend, name: str) -> CustomModelDeployment:
        from airflow_provider_finetune.backends.bedrock import DEPLOYMENT_FAILED
        from airflow_provider_finetune.exceptions import ChangedRequestError, FineTuningFailure, UnsafeToRetryError

        found = self._find(backend, name)
        if found is not None:
            self.log.info("Reattached to deployment %s (%s, %s)", name, found.arn, found.status)
        attempts = 0
        while found is None:
            try:
                arn = self.hook.call(
                    backend.create_deployment(name, self.model_arn, description=self.description, tags=self.tags)
                )
                self.log.info("Created deployment %s (%s) of %s", name, arn, self.model_arn)
                found = self.hook.call(backend.get_deployment(arn))
            except UnsafeToRetryError as err:
                # The same name and token again, once the name is known to be free: never a second deployment.
                attempts += 1
                self.log.warning("Creating deployment %s may or may not have worked (%s); looking it up", name, err)
                found = self._find(backend, name)
                if found is None and attempts > self.hook.retry_policy.max_retries:
                    raise
        if found.model_arn not in (None, self.model_arn):
            raise ChangedRequestError(
                f"Deployment {name} ({found.arn}) serves {found.model_arn}, not {self.model_arn}: delete it or name "
                "another deployment_name"
            )
        if found.status == DEPLOYMENT_FAILED:  # its name is this task instance's: no retry can make another
            raise FineTuningFailure(
                f"Deployment {name} ({found.arn}) is Failed"
                + (f": {found.failure_message}" if found.failure_message else "")
                + "; delete it (BedrockCustomModelDeploymentDeleteOperator) or name another deployment_name"
            )
        return found

    def _find(self, backend: BedrockBackend, name: str) -> CustomModelDeployment | None:
        from airflow_provider_finetune.exceptions import NotFoundError

        try:
            return self.hook.call(backend.get_deployment(name))
        except NotFoundError:
            return None

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        """Return the ARN of an ``Active`` deployment; fail on anything else, with what Bedrock said."""
        from airflow_provider_finetune.exceptions import FineTuningError

        if not isinstance(event, dict) or event.get("status") != "Active" or not event.get("deployment_arn"):
            message = event.get("message") if isinstance(event, dict) else None
            raise FineTuningError(message or f"Unexpected trigger event: {event!r}")
        self.log.info("Deployment %s is active", event["deployment_arn"])
        return str(event["deployment_arn"])


def _deployment_name(tag: str) -> str:
    """A deployment name of a task instance: the same for every try, within Bedrock's naming rules."""
    return "airflow-" + hashlib.sha256(tag.encode()).hexdigest()[:24]


class BedrockCustomModelDeploymentDeleteOperator(_BedrockOperator):
    """Delete a custom model deployment (by ARN or name); one already gone is no failure.

    :param deployment: the deployment's ARN or name (templated).
    :param finetune_conn_id: the Bedrock connection.
    """

    template_fields: Sequence[str] = ("deployment",)

    def __init__(self, *, deployment: str, finetune_conn_id: str = "finetune_default", **kwargs: Any) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.deployment = deployment

    def execute(self, context: Context) -> None:
        """Delete it."""
        from airflow_provider_finetune.exceptions import NotFoundError

        backend = self.bedrock()
        try:
            self.hook.call(backend.delete_deployment(self.deployment))
            self.log.info("Deleted deployment %s", self.deployment)
        except NotFoundError:
            self.log.info("Deployment %s is gone already", self.deployment)
