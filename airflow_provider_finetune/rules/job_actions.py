"""The rules of pausing, resuming and cancelling a job, shared by the job-action operators and the UI.

One place decides which capability an action needs, in which statuses it has nothing left to do, and in
which it is refused before any request is sent, so that a button in the UI and an operator in a DAG never
disagree. No Airflow import and no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_provider_finetune.core import statuses

__all__ = ["ACTIONS", "ActionRule", "refusal"]


@dataclass(frozen=True)
class ActionRule:
    """What one action on a job needs and does.

    :param verb: the action in words (``pause``), also its name in the UI's API.
    :param method: the hook method that applies it (``pause_job``).
    :param capability: the backend capability it needs.
    :param done: statuses in which it has nothing left to do.
    :param refused: statuses in which it can no longer be applied.
    :param targets: statuses it leads to.
    """

    verb: str
    method: str
    capability: str
    done: frozenset[str]
    refused: frozenset[str]
    targets: frozenset[str]

    def applies(self, status: str) -> bool:
        """Whether the action would change a job in ``status`` (neither done nor refused)."""
        return status not in self.done and status not in self.refused


_S = statuses.FineTuningJobStatus

CANCEL = ActionRule(
    verb="cancel",
    method="cancel_job",
    capability="cancel",
    done=statuses.TERMINAL | {statuses.CANCELLING},
    refused=frozenset(),
    # A job that ended while being cancelled has nothing left to cancel either.
    targets=statuses.TERMINAL,
)
PAUSE = ActionRule(
    verb="pause",
    method="pause_job",
    capability="pause",
    done=statuses.PAUSED,
    refused=statuses.TERMINAL | {statuses.CANCELLING},
    targets=frozenset({_S.PAUSED.value}),
)
RESUME = ActionRule(
    verb="resume",
    method="resume_job",
    capability="resume",
    done=statuses.ACTIVE - {_S.PAUSING.value, statuses.CANCELLING},
    refused=statuses.TERMINAL | {statuses.CANCELLING},
    targets=frozenset({statuses.RUNNING, statuses.SUCCEEDED}),
)

#: The actions by verb.
ACTIONS: dict[str, ActionRule] = {rule.verb: rule for rule in (PAUSE, RESUME, CANCEL)}


def refusal(rule: ActionRule, job_id: str, status: str) -> str | None:
    """The one-line reason the action is refused for a job in ``status``, or ``None`` when it may be sent."""
    if status not in rule.refused:
        return None
    ended = status in statuses.TERMINAL
    return (
        f"Cannot {rule.verb} fine-tuning job {job_id}: "
        + ("it has already ended" if ended else "it is being cancelled")
        + f" ({status})"
    )
