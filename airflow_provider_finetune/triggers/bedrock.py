"""A trigger that waits for an AWS Bedrock custom model deployment to become active, through the one request core."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.exceptions import FineTuningError
from airflow_provider_finetune.triggers.base import _FineTuningTrigger

if TYPE_CHECKING:
    from airflow_provider_finetune.triggers.offloop import OffLoopLog

__all__ = ["BedrockCustomModelDeploymentTrigger", "deployment_outcome"]

#: Statuses a deployment does not leave by itself.
DEPLOYMENT_DONE = ("Active", "Failed")


def deployment_outcome(deployment: Any) -> dict[str, Any] | None:
    """The event of a deployment that reached ``Active`` or ``Failed``; ``None`` while it is being created."""
    if deployment.status not in DEPLOYMENT_DONE:
        return None
    message = f"Deployment {deployment.arn} is {deployment.status}"
    if deployment.failure_message:
        message += f": {deployment.failure_message}"
    return {"status": deployment.status, "deployment_arn": deployment.arn, "message": message}


class BedrockCustomModelDeploymentTrigger(_FineTuningTrigger):
    """Poll a custom model deployment until it is ``Active`` or ``Failed``, the deadline, or too many failed polls.

    Fires one event: ``{"status": "Active" | "Failed" | "timeout" | "error", "deployment_arn", "message"}``.

    :param deployment_arn: the deployment.
    :param finetune_conn_id: the Bedrock connection.
    :param poll_interval: seconds between polls.
    :param deadline: absolute deadline, seconds since the epoch (``None``: the task's own timeout bounds it).
    :param max_consecutive_errors: failed polls in a row (after the request core's retries) that end the wait.
    """

    def __init__(
        self,
        deployment_arn: str,
        *,
        finetune_conn_id: str,
        poll_interval: float = 30.0,
        deadline: float | None = None,
        max_consecutive_errors: int = 10,
    ) -> None:
        super().__init__()
        self.deployment_arn = deployment_arn
        self.finetune_conn_id = finetune_conn_id
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.max_consecutive_errors = max_consecutive_errors

    async def _wait(self, log: OffLoopLog) -> dict[str, Any]:
        """Poll; the event that ends the wait."""
        from airflow_provider_finetune.hooks.finetune import FineTuningHook

        hook = FineTuningHook(self.finetune_conn_id)
        errors = 0
        last_status: str | None = None
        while True:
            try:
                await hook.asettings()
                deployment = await hook.acall(hook.backend.get_deployment(self.deployment_arn))  # type: ignore[attr-defined]
            except FineTuningError as err:
                errors += 1
                log.warning("Could not read deployment %s (%d in a row): %s", self.deployment_arn, errors, err)
                if errors >= self.max_consecutive_errors or not _transient(err):
                    return {"status": "error", "deployment_arn": self.deployment_arn, "message": str(err)}
            else:
                errors = 0
                if deployment.status != last_status:
                    log.info("[%s] status: %s", self.deployment_arn, deployment.status)
                    last_status = deployment.status
                event = deployment_outcome(deployment)
                if event is not None:
                    return event
            now = time.time()
            if self.deadline is not None and now >= self.deadline:
                message = f"Deployment {self.deployment_arn} was not active before the deadline"
                return {"status": "timeout", "deployment_arn": self.deployment_arn, "message": message}
            pause = self.poll_interval if self.deadline is None else min(self.poll_interval, self.deadline - now)
            await asyncio.sleep(max(pause, 0.0))


def _transient(err: FineTuningError) -> bool:
    from airflow_provider_finetune.rules.waiting import TRANSIENT

    return isinstance(err, TRANSIENT)
