"""The provider's errors inside Airflow: Airflow handles them as its own (AirflowException).

The suite's conftest loads Airflow before any module of the provider, as every Airflow process does.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from airflow_provider_finetune.exceptions import (
    FineTuningError,
    FineTuningJobFailed,
    InvalidRequestError,
    RateLimitError,
)


def test_the_errors_are_airflow_exceptions() -> None:
    from airflow.exceptions import AirflowException

    for error in (FineTuningError("x"), FineTuningJobFailed("ftjob-1", "failed", "boom"), RateLimitError(429, "slow")):
        assert isinstance(error, AirflowException)
    assert isinstance(InvalidRequestError("bad", field="model"), ValueError)


def test_the_errors_cross_a_process_boundary() -> None:
    error = pickle.loads(pickle.dumps(FineTuningJobFailed("ftjob-1", "failed", "boom", code="invalid_file")))
    assert (error.job_id, error.status, error.code, str(error)) == ("ftjob-1", "failed", "invalid_file", "boom")


def test_a_deferrable_sensor_skips_a_failed_job_when_asked() -> None:
    # Airflow turns only AirflowExceptions raised on resuming a sensor into a skip (soft_fail).
    try:
        from airflow.sdk.exceptions import AirflowSkipException
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import AirflowSkipException  # type: ignore[no-redef]
    from airflow.sdk.bases.sensor import BaseSensorOperator

    class Sensor(BaseSensorOperator):
        def poke(self, context: Any) -> bool:
            return False

        def execute_complete(self, context: Any, event: dict[str, Any]) -> None:
            raise FineTuningJobFailed(event["job_id"], "failed", "the job failed")

    sensor = Sensor(task_id="wait", soft_fail=True)
    with pytest.raises(AirflowSkipException):
        sensor.resume_execution("execute_complete", {"event": {"job_id": "ftjob-1"}}, {})
