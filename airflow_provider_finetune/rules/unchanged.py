"""No retraining on unchanged data: return the last successful job's model instead of paying for the same job.

A create task with ``skip_if_unchanged`` keeps two values with its job: the **training data's digest** (a
SHA-256 over the content of the training and validation files, never over their ids, since a weekly upload of
the same data makes a new file id) and the **request's fingerprint** (the request without its file
references: model, method, hyperparameters, suffix, seed, metadata, integrations). Both are pushed as XComs
before the job is created and ride in the job's metadata where the service keeps metadata
(:data:`DATA_KEY`); a task that succeeds pushes them, with the job and its model, as one record
(:data:`RECORD_KEY`).

The next run reads the newest record of the same DAG, task and map index from Airflow's own XComs (runs up to
its own logical date) and returns that job's model only when the digest and fingerprint are the same and the
service itself still shows the job: it exists, it succeeded, its fine-tuned model is the recorded one, its
base model is the one asked for, and (where jobs carry metadata) its own tag holds the same digest and
fingerprint. Anything else, or any doubt (a file whose content cannot be read or vouched for), trains anew.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_finetune.core.digests import request_fingerprint
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.rules.once import OWN_KEYS

if TYPE_CHECKING:
    pass

__all__ = [
    "DATA_KEY",
    "DIGEST_KEY",
    "FILE_DIGEST_KEY",
    "FINGERPRINT_KEY",
    "RECORD_KEY",
    "REUSED_KEY",
    "SKIPPED_KEY",
    "TRAINED_KEY",
    "TrainingRecord",
    "data_digest",
    "settings_fingerprint",
    "tagged_metadata",
]

#: Metadata key of the job's training data digest and request fingerprint (``<digest>/<fingerprint>``).
DATA_KEY = "airflow_training"
#: XCom of the create task: the training data's digest.
DIGEST_KEY = "training_data_digest"
#: XCom of the create task: the request's fingerprint (without file references).
FINGERPRINT_KEY = "request_fingerprint"
#: XCom a succeeded create task pushes: the :class:`TrainingRecord` the next run compares itself with.
RECORD_KEY = "training_record"
#: XCom of a run that returned an earlier job's model: that job's id.
REUSED_KEY = "reused_job_id"
#: XCom of a run that returned an earlier job's model: why, in words.
SKIPPED_KEY = "skipped_because"
#: XCom key of why a run with ``skip_if_unchanged`` trained all the same.
TRAINED_KEY = "trained_because"
#: XCom the upload operator pushes: ``{"file_id", "sha256", "bytes"}`` of the file it uploaded.
FILE_DIGEST_KEY = "file_digest"
#: The request fields that reference training data (replaced by the data's digest).
FILE_FIELDS = ("training_file", "validation_file")


def data_digest(digests: Mapping[str, str | None]) -> str:
    """One digest of the training data: the content digest of each file, by its role (training, validation)."""
    blob = json.dumps(dict(digests), sort_keys=True, separators=(",", ":"))
    return "sha256-" + hashlib.sha256(blob.encode()).hexdigest()


def settings_fingerprint(body: Mapping[str, Any]) -> str:
    """The request's fingerprint without its file references or the provider's own metadata keys."""
    kept = {key: value for key, value in body.items() if key not in FILE_FIELDS}
    return request_fingerprint(kept, ignore_metadata=OWN_KEYS | {DATA_KEY})


def tag_value(digest: str, fingerprint: str) -> str:
    """What :data:`DATA_KEY` holds on the job."""
    return f"{digest}/{fingerprint}"


def tagged_metadata(metadata: Mapping[str, str] | None, digest: str, fingerprint: str, max_keys: int) -> dict[str, str]:
    """The user's metadata with :data:`DATA_KEY` added; refused when it leaves the provider's keys no room."""
    kept = {key: value for key, value in (metadata or {}).items() if key not in OWN_KEYS | {DATA_KEY}}
    own = len(OWN_KEYS) + 1
    if len(kept) > max_keys - own:
        raise InvalidRequestError(
            f"Invalid fine-tuning request: metadata: {len(kept)} keys given, at most {max_keys - own} are allowed "
            f"with skip_if_unchanged (the other {own} are the provider's own: "
            f"{', '.join(sorted(OWN_KEYS | {DATA_KEY}))})",
            field="metadata",
        )
    return {**kept, DATA_KEY: tag_value(digest, fingerprint)}


@dataclass(frozen=True)
class TrainingRecord:
    """What a succeeded create task leaves for the next run: its job, model, data digest and request fingerprint.

    :param job_id: the job.
    :param fine_tuned_model: the job's model, as the task returned it.
    :param training_data_digest: the digest of the data it trained on.
    :param request_fingerprint: the fingerprint of its request.
    :param finetune_conn_id: the connection it was made through.
    """

    job_id: str
    fine_tuned_model: str
    training_data_digest: str
    request_fingerprint: str
    finetune_conn_id: str

    def to_json(self) -> dict[str, str]:
        """The record as JSON primitives, for XCom."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> TrainingRecord | None:
        """The record an earlier run pushed; ``None`` for anything that is not one."""
        if not isinstance(value, Mapping):
            return None
        try:
            fields = {name: value[name] for name in cls.__dataclass_fields__}
        except KeyError:
            return None
        if not all(isinstance(item, str) and item for item in fields.values()):
            return None
        return cls(**fields)
