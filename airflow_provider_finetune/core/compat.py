"""Names that moved between the Airflow 3 releases this provider supports (3.1 and newer)."""

from __future__ import annotations

try:  # Airflow 3.2+
    from airflow.sdk.configuration import conf
except ImportError:  # Airflow 3.1
    from airflow.configuration import conf

try:  # Airflow 3.2+
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

__all__ = ["AirflowFailException", "conf"]
