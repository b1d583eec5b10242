"""The operator that checks a training file and uploads it once, whatever crashes or retries.

Importing this module is cheap: the hook, httpx, pydantic and the training-data rules are only imported when a
task runs.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath
from typing import IO, TYPE_CHECKING, Any, cast

from airflow_provider_finetune.operators.base import _FineTuningOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_finetune.models import FileObject
    from airflow_provider_finetune.training_data import Method

__all__ = ["UPLOAD_CLOCK_SLACK", "UPLOAD_INTENT_KEY", "FineTuningFileUploadOperator", "open_source"]

# A source given as text with a scheme (``s3://``, ``gs://``, ``file://``...) is read through ObjectStoragePath.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

#: Key of the upload intent in the task state store (Airflow 3.3+), which outlives the tries of a task instance.
UPLOAD_INTENT_KEY = "upload_intent"
#: Seconds of clock difference allowed between this worker and the service when comparing ``created_at``.
UPLOAD_CLOCK_SLACK = 300


@dataclass(slots=True)
class _UploadIntent:
    """What one upload is about to send, recorded before it is sent: the proof a found file is checked against.

    :param filename: the name the service records.
    :param size: the file's size in bytes.
    :param sha256: the content's SHA-256, hex.
    :param purpose: the file's purpose.
    :param since: when the task instance first set out to upload this content (seconds since the epoch).
    :param file_id: the file it became, once known.
    """

    filename: str
    size: int
    sha256: str
    purpose: str
    since: float
    file_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The intent as JSON primitives, for the task state store (the size under ``bytes``)."""
        record = asdict(self)
        record["bytes"] = record.pop("size")
        if self.file_id is None:
            del record["file_id"]
        return record

    @classmethod
    def from_json(cls, record: Any) -> _UploadIntent | None:
        """The intent a try recorded; ``None`` for anything that is not one (an older or damaged record)."""
        if not isinstance(record, Mapping):
            return None
        try:
            file_id = record.get("file_id")
            return cls(
                filename=str(record["filename"]),
                size=int(record["bytes"]),
                sha256=str(record["sha256"]),
                purpose=str(record["purpose"]),
                since=float(record["since"]),
                file_id=str(file_id) if file_id else None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def same_upload(self, other: _UploadIntent) -> bool:
        """Whether ``other`` sends the same content under the same name and purpose."""
        return (self.filename, self.size, self.sha256, self.purpose) == (
            other.filename,
            other.size,
            other.sha256,
            other.purpose,
        )

    def proves(self, file: Any, now: float) -> bool:
        """Whether the service's own fields of ``file`` show it is this upload, made since it was first tried.

        The name, size and purpose must be the ones sent, and the file made inside the window (with
        :data:`UPLOAD_CLOCK_SLACK` either side for clocks that disagree). The content itself is proven by
        the digest: the name's (``digest_in_filename``), or the recorded intent's, matched before calling.
        """
        created = file.created_at
        return (
            file.filename == self.filename
            and file.bytes == self.size
            and file.purpose == self.purpose
            and file.status not in ("error", "deleted")
            and created is not None
            and self.since - UPLOAD_CLOCK_SLACK <= created <= now + UPLOAD_CLOCK_SLACK
        )


def _digest_filename(name: str, sha256: str) -> str:
    """``train.jsonl`` -> ``train.<first 16 hex of the SHA-256>.jsonl``: the suffix (and the MIME type) kept."""
    path = PurePath(name)
    if path.suffix:
        return f"{path.stem}.{sha256[:16]}{path.suffix}"
    return f"{name}.{sha256[:16]}"


def _timestamp(value: Any) -> float | None:
    """A datetime (or pendulum) as seconds since the epoch; ``None`` when there is none."""
    stamp = getattr(value, "timestamp", None)
    return float(stamp()) if callable(stamp) else None


class FineTuningFileUploadOperator(_FineTuningOperator):
    """Check a JSONL training file for its fine-tuning method, then upload it; return the file id.

    The file is checked before anything is sent: a bad file fails the task with a message that names each
    bad line and what is wrong with it, and nothing is uploaded. Files larger than the hook's threshold
    (512 MB) go through the Uploads API in parts.

    One upload per task instance: an upload whose answer was lost is not sent again blindly. Before
    sending, the operator records what it sends (name, size, SHA-256, time) in the task state store
    (Airflow 3.3+); when an answer is lost, and on a retry of the task, it lists the files made since then
    and adopts one only when the service's own fields (name, size, purpose, creation time) match that
    record. With ``digest_in_filename`` the name itself carries the digest, which proves the content
    without the state store (Airflow 3.1).

    XComs: the return value is the file id; ``file_id``, ``bytes``, ``examples`` and ``estimated_tokens``
    (one epoch, estimated without a tokenizer) are pushed too; the last two are ``None`` when the file
    was not checked.

    :param source: the file (templated): a local path, an ``ObjectStoragePath`` (or any object with
        ``open("rb")``), or a URL that ``ObjectStoragePath`` understands (``s3://bucket/train.jsonl``,
        ``file:///data/train.jsonl``). The stream must be seekable: it is read more than once.
    :param purpose: the file's purpose (templated); only ``fine-tune`` files are checked.
    :param method: the fine-tuning method the file is for (templated): ``supervised``, ``dpo`` or
        ``reinforcement``.
    :param validate: check the file before uploading it.
    :param min_examples: fewest examples the file must hold (the service requires 10 for a training file).
    :param filename: the name the service records (templated); the source's name by default.
    :param digest_in_filename: put the first 16 hex digits of the content's SHA-256 in the recorded name
        (``train.<digest>.jsonl``), so that a retry can prove a found file holds this content.
    :param finetune_conn_id: the connection.
    """

    template_fields: Sequence[str] = ("source", "purpose", "method", "filename")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        source: Any,
        purpose: str = "fine-tune",
        method: str = "supervised",
        validate: bool = True,
        min_examples: int = 10,
        filename: str | None = None,
        digest_in_filename: bool = False,
        finetune_conn_id: str = "finetune_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(finetune_conn_id=finetune_conn_id, **kwargs)
        self.source = source
        self.purpose = purpose
        self.method = method
        self.validate = validate
        self.min_examples = min_examples
        self.filename = filename
        self.digest_in_filename = digest_in_filename

    def _render_value(self, content: Any, render: Callable[[Any], Any]) -> Any:
        """Keep a local ``pathlib`` path as it is.

        Airflow 3.1 "renders" any object with a ``resolve`` method by calling it, which for a path means
        ``Path.resolve(strict=True)``: a missing file would fail the rendering and a symlink would be
        replaced by its target (and its name).
        """
        if isinstance(content, PurePath):
            return content
        return render(content)

    def execute(self, context: Context) -> str:
        """Check the file, upload it (or adopt the upload a lost answer left), push what it holds; return its id."""
        from airflow_provider_finetune.exceptions import InvalidRequestError
        from airflow_provider_finetune.training_data import METHODS, validate_file

        if self.method not in METHODS:
            raise InvalidRequestError(
                f"method must be one of {', '.join(METHODS)}, got {self.method!r}", field="method"
            )
        method = cast("Method", self.method)
        stream, name = self._open()
        try:
            start = stream.tell()
            examples: int | None = None
            tokens: int | None = None
            if self.validate and self.purpose == "fine-tune":
                report = validate_file(
                    stream,
                    method=method,
                    min_examples=self.min_examples,
                    name=name,
                    rules=self.hook.backend.training_data_rules,
                )
                examples, tokens = report.examples, report.tokens
                self.log.info(
                    "%s is valid %s training data (%s format): %d examples, about %d tokens per epoch "
                    "(longest example about %d tokens)",
                    name,
                    report.method,
                    report.format,
                    report.examples,
                    report.tokens,
                    report.max_example_tokens,
                )
            elif self.validate:
                self.log.info("Not checking %s: only files for the fine-tune purpose are checked", name)
            from airflow_provider_finetune.core.digests import content_digest

            size, sha256 = content_digest(stream, start)
            if size == 0:
                raise InvalidRequestError(f"{name} is empty", field="file")
            if self.hook.backend.file_reference == "dataset":
                # A dataset is named by its content's digest: a retry, or an answer lost, finds the same one.
                stream.seek(start)
                dataset = self.hook.run_flow(self.hook.backend.dataset_flow(stream, name, size, sha256, examples))
                self.log.info("Uploaded %s (%d bytes) as dataset %s, ready for training", name, size, dataset)
                return self._pushed(context, dataset, size, sha256, examples, tokens)
            self.hook.upload_route(size, name)  # a file the service cannot take is refused before any request
            recorded = _digest_filename(name, sha256) if self.digest_in_filename else name
            intent = _UploadIntent(recorded, size, sha256, self.purpose, since=time.time())
            uploaded = self._made_before(context, intent)
            if uploaded is None:
                self._record(context, intent)
                uploaded = self._upload(stream, start, intent)
                self.log.info("Uploaded %s (%d bytes) as %s", recorded, size, uploaded.id)
            intent.file_id = uploaded.id
            self._record(context, intent)
        finally:
            stream.close()
        return self._pushed(
            context, uploaded.id, uploaded.bytes if uploaded.bytes is not None else size, sha256, examples, tokens
        )

    @staticmethod
    def _pushed(
        context: Context, file_id: str, size: int, sha256: str, examples: int | None, tokens: int | None
    ) -> str:
        """Push what the upload made and holds; return the file id (or dataset name)."""
        ti = context["ti"]
        ti.xcom_push(key="file_id", value=file_id)
        ti.xcom_push(key="bytes", value=size)
        ti.xcom_push(key="examples", value=examples)
        ti.xcom_push(key="estimated_tokens", value=tokens)
        # The content's digest with the file id: a create task with skip_if_unchanged compares data by it.
        ti.xcom_push(key="file_digest", value={"file_id": file_id, "sha256": sha256, "bytes": size})
        return file_id

    # -- once-only upload ----------------------------------------------------------------------------------

    def _made_before(self, context: Context, intent: _UploadIntent) -> FileObject | None:
        """The file an earlier try of this task instance made of this content, if the service shows it.

        Looked for only when an earlier try set out to upload the same content (its intent is in the state
        store), or, with the digest in the name, on any retry (since the DAG run started). ``intent.since``
        becomes the first try's time.
        """
        from airflow_provider_finetune.exceptions import NotFoundError

        store = context.get("task_state_store")
        earlier = _UploadIntent.from_json(store.get(UPLOAD_INTENT_KEY)) if store is not None else None
        if earlier is not None and earlier.same_upload(intent):
            intent.since = min(intent.since, earlier.since)
            if earlier.file_id:
                try:
                    file = self.hook.get_file(earlier.file_id)
                except NotFoundError:
                    file = None  # deleted since: upload again
                if file is not None and intent.proves(file, time.time()):
                    self.log.info("Reusing %s, uploaded by an earlier try of this task", file.id)
                    return file
        elif self.digest_in_filename and getattr(context["ti"], "try_number", 1) > 1:
            dag_run = context.get("dag_run")
            started = _timestamp(getattr(dag_run, "start_date", None))
            if started is None:
                return None
            intent.since = min(intent.since, started)
        else:
            return None
        found = self._find(intent)
        if found is not None:
            self.log.info("Adopting %s, uploaded by an earlier try of this task whose answer was lost", found.id)
        return found

    def _record(self, context: Context, intent: _UploadIntent) -> None:
        """Keep the intent where the next try finds it: the task state store, when Airflow has one."""
        store = context.get("task_state_store")
        if store is not None:
            store.set(UPLOAD_INTENT_KEY, intent.to_json())

    def _find(self, intent: _UploadIntent) -> FileObject | None:
        """The file the service holds for this intent: listed, and proven by its own fields."""
        now = time.time()
        matches = []
        for file in self.hook.iter_files(purpose=intent.purpose):
            if file.created_at is not None and file.created_at < intent.since - UPLOAD_CLOCK_SLACK:
                break  # the list is newest first: the rest is older still
            if intent.proves(file, now):
                matches.append(file)
        if not matches:
            return None
        if len(matches) > 1 and not self.digest_in_filename:
            # Without the digest in the name, two candidates mean one may be someone else's: adopt neither.
            self.log.warning(
                "%d files named %s of %d bytes were made since this task first tried (%s): not adopting any",
                len(matches),
                intent.filename,
                intent.size,
                ", ".join(file.id for file in matches),
            )
            return None
        matches.sort(key=lambda file: (file.created_at or 0, file.id))
        if len(matches) > 1:
            self.log.warning(
                "Copies of %s were made by lost answers; keeping %s, not using %s",
                intent.filename,
                matches[0].id,
                ", ".join(file.id for file in matches[1:]),
            )
        return matches[0]

    def _upload(self, stream: IO[bytes], start: int, intent: _UploadIntent) -> FileObject:
        """Upload once: after an answer that may have been lost, look for the file before sending again."""
        from airflow_provider_finetune.exceptions import FineTuningError, InvalidRequestError, UnsafeToRetryError

        hook = self.hook
        in_parts = hook.upload_route(intent.size, intent.filename) != "single"
        resends = 0
        while True:
            try:
                # The hook sends POST /files and the Uploads API's complete as creates: never again when
                # the service may have handled them (UnsafeToRetryError, caught below).
                stream.seek(start)
                return hook.upload_file(stream, purpose=intent.purpose, filename=intent.filename)
            except InvalidRequestError:
                raise
            except FineTuningError as err:
                # POST /files is sent as a create (never re-sent by the client when it may have been
                # handled); the Uploads API may have completed before anything went wrong.
                if not in_parts and not isinstance(err, UnsafeToRetryError):
                    raise
                self.log.warning(
                    "The upload of %s may have reached the service (%s); looking for it", intent.filename, err
                )
                try:
                    found = self._find(intent)
                except FineTuningError as lookup:
                    self.log.warning("Could not look for the upload of %s: %s", intent.filename, lookup)
                    raise err from None
                if found is not None:
                    self.log.info("Adopting %s, made by the upload whose answer was lost", found.id)
                    return found
                if in_parts or resends >= hook.settings.max_retries:
                    raise
                delay = hook.retry_policy.backoff(resends)
                resends += 1
                self.log.info("%s is not on the service; sending it again in %.1f s", intent.filename, delay)
                time.sleep(delay)

    def _open(self) -> tuple[IO[bytes], str]:
        """Open the source for reading; the name is the one given, else the source's own."""
        stream, name = open_source(self.source, field="source")
        return stream, self.filename or name


def open_source(source: Any, *, field: str) -> tuple[IO[bytes], str]:
    """Open a file for reading bytes; return it and its own name.

    :param source: a local path, a URL that ``ObjectStoragePath`` understands, or an object with ``open()``.
    :param field: the argument it was given as, for the error.
    :raises InvalidRequestError: naming ``field``, when it cannot be read.
    """
    from airflow_provider_finetune.exceptions import InvalidRequestError

    if isinstance(source, str) and _URL.match(source):
        from airflow.sdk import ObjectStoragePath

        source = ObjectStoragePath(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            return path.open("rb"), path.name
        except OSError as err:
            raise InvalidRequestError(f"cannot read {path}: {err.strerror or err}", field=field) from err
    opener = getattr(source, "open", None)
    if not callable(opener):
        raise InvalidRequestError(
            f"{field} must be a path, a URL or an object with open(), got {type(source).__name__}", field=field
        )
    try:
        stream = opener("rb")
    except OSError as err:
        raise InvalidRequestError(f"cannot read {source}: {err.strerror or err}", field=field) from err
    own_name = getattr(source, "name", None)
    return stream, own_name if isinstance(own_name, str) and own_name else "data.jsonl"
