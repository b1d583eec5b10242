"""The canonical statuses of a fine-tuning job, and the groups that operators, sensors and waits decide by.

Every backend maps its service's own words onto these (Azure's ``pending``, Bedrock's ``InProgress``,
Fireworks' ``JOB_STATE_RUNNING``...); no vendor word is a member here. A value a service adds later still
parses, as a pseudo-member that is not terminal, so that a new status never breaks a running pipeline.
No Airflow import and no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar

__all__ = [
    "ACTIVE",
    "ACTIVE_STATUSES",
    "CANCELLING",
    "FAILURE",
    "FAILURE_STATUSES",
    "PAUSED",
    "RESUMABLE_STATUSES",
    "RUNNING",
    "SUCCEEDED",
    "TERMINAL",
    "TERMINAL_STATUSES",
    "FineTuningJobStatus",
    "canonical",
]


class FineTuningJobStatus(str, Enum):
    """Status of a fine-tuning job, in the provider's own words.

    ``validating_files``, ``queued``, ``running``, ``succeeded``, ``failed`` and ``cancelled`` are the
    fine-tuning API's six; ``pausing``, ``paused`` and ``resuming`` are the states of a pause; ``cancelling``
    is a cancel that the service has accepted but not yet finished. A value not listed here still parses, as
    a pseudo-member whose :attr:`value` is the string the service sent, and it is not terminal.
    """

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    #: The statuses a job never leaves: succeeded, failed and cancelled (set below the class).
    TERMINAL: ClassVar[frozenset[FineTuningJobStatus]]

    @classmethod
    def _missing_(cls, value: object) -> FineTuningJobStatus | None:
        if not isinstance(value, str):
            return None
        # A pseudo-member: not listed by iteration, but a real instance (a str equal to the value).
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        return member

    def __str__(self) -> str:
        return str(self.value)

    def is_terminal(self) -> bool:
        """Whether the job has ended for good (succeeded, failed or cancelled).

        ``paused`` is not terminal: a paused job can be resumed.
        """
        return self in TERMINAL_STATUSES

    def is_known(self) -> bool:
        """Whether this provider knows the status, as opposed to a value the service added since."""
        return self.value in FineTuningJobStatus._value2member_map_


_S = FineTuningJobStatus

#: The statuses a job never leaves.
TERMINAL_STATUSES: frozenset[FineTuningJobStatus] = frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED})
FineTuningJobStatus.TERMINAL = TERMINAL_STATUSES

#: The terminal statuses that are not a success: a job in one of them is never reattached to.
FAILURE_STATUSES: frozenset[FineTuningJobStatus] = frozenset({_S.FAILED, _S.CANCELLED})

#: Statuses of a job that is on its way: it uses (or will use) compute.
ACTIVE_STATUSES: frozenset[FineTuningJobStatus] = frozenset(
    {_S.VALIDATING_FILES, _S.QUEUED, _S.RUNNING, _S.PAUSING, _S.RESUMING, _S.CANCELLING}
)

#: Statuses from which a resume makes sense.
RESUMABLE_STATUSES: frozenset[FineTuningJobStatus] = frozenset({_S.PAUSING, _S.PAUSED})

#: The same groups as plain strings, for code that compares a status's value (and for JSON: trigger events).
TERMINAL: frozenset[str] = frozenset(s.value for s in TERMINAL_STATUSES)
FAILURE: frozenset[str] = frozenset(s.value for s in FAILURE_STATUSES)
ACTIVE: frozenset[str] = frozenset(s.value for s in ACTIVE_STATUSES)
PAUSED: frozenset[str] = frozenset({_S.PAUSING.value, _S.PAUSED.value})
SUCCEEDED: str = _S.SUCCEEDED.value
RUNNING: str = _S.RUNNING.value
CANCELLING: str = _S.CANCELLING.value


def canonical(statuses: Mapping[str, FineTuningJobStatus], value: Any) -> Any:
    """A service's own status word as its canonical status, by the service's table ``statuses``.

    A word the table lacks (one the service adds later) is kept as it is: it parses as an unknown status that is
    not terminal.
    """
    if isinstance(value, str) and value in statuses:
        return statuses[value].value
    return value
