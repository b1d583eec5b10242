"""Once-only job creation that trusts no server: the rules, as a generator that does no I/O.

One task instance creates at most one job, whatever crashes, retries or lost answers. A found job is adopted
only when its *own* fields say it is ours, never because a list returned it:

* where jobs carry metadata (OpenAI, Azure v1), the job carries the task's tag (:data:`TASK_TAG_KEY`) and a
  fingerprint of its request (:data:`REQUEST_KEY`); the list is filtered by the tag where the service can,
  and every job is checked for the tag all the same; where the service ignores the filter, the walk goes
  through the jobs made since the task instance's first try (with slack for clock skew), never further;
* where the client chooses the job's id (Fireworks' job ids, Bedrock's job names), the ids are derived from the
  task's tag and the request's fingerprint (:func:`client_job_id`), one per generation; the job known by an id
  is adopted only when its own record of that id says so (the ``client_job_id`` field of the canonical job),
  and a create whose outcome is unknown, or that meets an id in use, is resolved by retrieving that id;
* where jobs carry no metadata (Azure's authoring API), an intent record is written to the task's state
  store before the create and the job id after it; only a task instance that recorded an intent looks for
  a job it may have made, and adopts one whose request fields (model, files, seed) match and that was made
  after the intent.

A found job whose request differs from this try's (the DAG or its data changed) is handled by
``on_changed_request``: ``cancel_and_create`` (the default) cancels it when it still runs and creates a new
one; ``fail`` fails the task and names the job.

:func:`ensure_job` yields the operations below and is told what came back; the hook carries them out with its
sync or its async client (the vocabulary follows Airflow's ``common.ai`` batch state: identity key, input
fingerprint, intent record).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from airflow_provider_finetune.core.client import RetryPolicy, Sleep
from airflow_provider_finetune.core.digests import request_fingerprint
from airflow_provider_finetune.core.flows import NO_STATE_STORE, ReadState, WriteState
from airflow_provider_finetune.core.statuses import FAILURE_STATUSES
from airflow_provider_finetune.exceptions import (
    ChangedRequestError,
    ConflictError,
    FineTuningError,
    InvalidRequestError,
    UnsafeToRetryError,
)
from airflow_provider_finetune.models import FineTuningJob, Page

__all__ = [
    "CLIENT_JOB_ID_FIELD",
    "CLOCK_SKEW",
    "ECHOED_REQUEST",
    "MAX_GENERATIONS",
    "MAX_WALK",
    "NO_STATE_STORE",
    "REQUEST_KEY",
    "TASK_TAG_KEY",
    "CancelJob",
    "CreateJob",
    "GetJob",
    "JobIdentity",
    "ListJobs",
    "OnChangedRequest",
    "ReadState",
    "WriteState",
    "client_job_id",
    "ensure_job",
    "room_for_tags",
]

#: Metadata key of the tag that ties a job to the task instance that created it.
TASK_TAG_KEY = "airflow_task_tag"
#: Metadata key of the fingerprint of the request a job was created from.
REQUEST_KEY = "airflow_request"
#: The provider's own metadata keys.
OWN_KEYS = frozenset({TASK_TAG_KEY, REQUEST_KEY})
#: Slack, in seconds, for the clocks of the worker and the service to disagree.
CLOCK_SKEW = 600.0
#: The most jobs a search walks through, whatever else bounds it.
MAX_WALK = 2_000
#: Page size of a search.
WALK_PAGE = 100
#: The most jobs one task instance makes under client-chosen ids (each after the previous one failed).
MAX_GENERATIONS = 50
#: The canonical job's field that carries the service's own record of the id the client chose.
CLIENT_JOB_ID_FIELD = "client_job_id"

OnChangedRequest = Literal["cancel_and_create", "fail"]
ON_CHANGED_REQUEST = ("cancel_and_create", "fail")


@dataclass(frozen=True)
class JobIdentity:
    """Who a job belongs to.

    :param tag: the task instance's tag (DAG, task, run, map index; not the try number).
    :param since: the earliest moment (Unix seconds) a job of this task instance may have been made: the DAG
        run's start; ``None`` when unknown, and then only :data:`MAX_WALK` bounds a search.
    """

    tag: str
    since: float | None = None

    def __post_init__(self) -> None:
        if not self.tag or len(self.tag) > 512:
            raise InvalidRequestError("tag must be 1 to 512 characters", field="tag")


class ListJobs(NamedTuple):
    """List a page of jobs, newest first, filtered by ``metadata`` if given; answer a ``Page``."""

    after: str | None
    metadata: Mapping[str, str] | None


class GetJob(NamedTuple):
    """Retrieve a job; answer ``None`` when the service does not know it."""

    job_id: str


class CreateJob(NamedTuple):
    """Create a job from ``body`` (as ``job_id`` where the client chooses ids).

    Answer the job, or the :class:`UnsafeToRetryError` that left it unknown, or (with a ``job_id``) the
    :class:`ConflictError` of an id already in use.
    """

    body: Mapping[str, Any]
    job_id: str | None = None


class CancelJob(NamedTuple):
    """Cancel a job; answer the job."""

    job_id: str


Step = ReadState | WriteState | ListJobs | GetJob | CreateJob | CancelJob | Sleep
Ensure = Generator[Step, Any, tuple[FineTuningJob, bool]]
_Find = Generator[Step, Any, FineTuningJob | None]


def client_job_id(tag: str, fingerprint: str, generation: int) -> str:
    """The id a task instance's job is created as, where the client chooses it: the same for every try.

    ``ft-<tag digest>-<request digest>-<generation>``: lowercase letters, digits and dashes, at most 40
    characters, starting with a letter, as the services' id and name rules all allow.
    """
    tag_digest = hashlib.sha256(tag.encode()).hexdigest()[:12]
    request_digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:10]
    return f"ft-{tag_digest}-{request_digest}-{generation}"


def room_for_tags(metadata: Mapping[str, Any] | None, max_keys: int = 16) -> dict[str, Any]:
    """The user's metadata without the provider's keys, refused when it leaves the tags no room."""
    kept = {key: value for key, value in (metadata or {}).items() if key not in OWN_KEYS}
    room = max_keys - len(OWN_KEYS)
    if len(kept) > room:
        raise InvalidRequestError(
            f"Invalid fine-tuning request: metadata: {len(kept)} keys given, at most {room} are allowed "
            f"(the other {len(OWN_KEYS)} are the provider's own: {', '.join(sorted(OWN_KEYS))})",
            field="metadata",
        )
    return kept


def tagged_body(
    body: Mapping[str, Any], tag: str, *, job_metadata: bool, metadata_field: str = "metadata"
) -> tuple[dict[str, Any], str]:
    """The body to send and its fingerprint; the tags go into the metadata where jobs carry it.

    :param metadata_field: the body's field that holds the job's metadata (the service's word for it).
    """
    fingerprint = request_fingerprint(body, ignore_metadata=OWN_KEYS, metadata_field=metadata_field)
    sent = dict(body)
    if job_metadata:
        sent[metadata_field] = {**room_for_tags(body.get(metadata_field)), TASK_TAG_KEY: tag, REQUEST_KEY: fingerprint}
    return sent, fingerprint


#: Extra field of a canonical job: the create fields the service's job reports, named as in the create body
#: (its backend fills it where the service echoes more than model, files and seed; Together does).
ECHOED_REQUEST = "echoed_request"


def _same_request_fields(job: FineTuningJob, body: Mapping[str, Any]) -> bool:
    """Whether a job echoes the fields of a request: those every service echoes back, and any more it reports.

    The model is compared where the request names one.

    Each field the job reports under :data:`ECHOED_REQUEST` must equal the request's where the request gave it
    (inside an object, key by key); a field the request left out (the service's default) is not compared.
    """
    # A body without a model (a job continued from a checkpoint) says where it starts in the echoed fields.
    if ("model" in body and job.model != body["model"]) or job.training_file != body.get("training_file"):
        return False
    if (job.validation_file or None) != (body.get("validation_file") or None):
        return False
    if body.get("seed") is not None and job.seed != body.get("seed"):
        return False
    echoed = (job.model_extra or {}).get(ECHOED_REQUEST)
    if not isinstance(echoed, Mapping):
        return True
    return _agrees(echoed, body)


def _agrees(reported: Any, given: Any) -> bool:
    """Whether what a job reports agrees with what was asked: objects key by key, where both have the key."""
    if isinstance(reported, Mapping) and isinstance(given, Mapping):
        return all(_agrees(reported[key], given[key]) for key in reported if given.get(key) is not None)
    return bool(reported == given)


def _replace(job: FineTuningJob, on_changed_request: OnChangedRequest, log: Any) -> Generator[CancelJob, Any, None]:
    """Make way for a new job in place of ``job``, which this task instance made from another request.

    ``on_changed_request='fail'`` leaves it as it is and fails; otherwise it is cancelled unless it has ended.
    """
    if on_changed_request == "fail":
        raise ChangedRequestError(
            f"Job {job.id} ({job.status}) was made by this task instance from another request (the DAG "
            "or its data changed since); on_changed_request='fail' leaves it as it is"
        )
    if not job.status.is_terminal():
        if log is not None:
            log.warning("Job %s was made from another request; cancelling it to create a new one", job.id)
        yield CancelJob(job.id)


def ensure_job(
    body: Mapping[str, Any],
    identity: JobIdentity,
    *,
    job_metadata: bool,
    metadata_filter: bool,
    policy: RetryPolicy,
    on_changed_request: OnChangedRequest = "cancel_and_create",
    now: float,
    log: Any = None,
    job_ids: Callable[[str, str, int], str] | None = None,
    metadata_field: str = "metadata",
) -> Ensure:
    """Create the job of ``identity`` unless it exists: at most one job per task instance, whatever fails.

    A job in progress or succeeded is reattached to; after a failed or cancelled one a new job is made.
    When the create's outcome is unknown, the job is looked for again before anything is re-sent, as often
    as the retry policy allows.

    :param body: the create body, validated for the service (without the provider's tags).
    :param identity: whose job it is.
    :param job_metadata: the service's jobs carry metadata (else an intent record is kept).
    :param metadata_filter: the service can filter its job list by metadata (still verified on each job).
    :param policy: the retry policy (how often an unknown outcome is looked up and sent again).
    :param on_changed_request: what to do with a found job made from another request.
    :param now: the current time (Unix seconds), for the intent record.
    :param log: a logger for what is decided.
    :param job_ids: where the client chooses job ids, the id of a task instance's job of a generation, from
        its tag and request fingerprint (:func:`client_job_id` or the backend's own).
    :param metadata_field: the body's field that holds the job's metadata (the service's word for it).
    :return: the job, and whether this call created it.
    """
    if on_changed_request not in ON_CHANGED_REQUEST:
        raise InvalidRequestError(
            f"on_changed_request must be one of {', '.join(ON_CHANGED_REQUEST)}, got {on_changed_request!r}",
            field="on_changed_request",
        )
    sent, fingerprint = tagged_body(body, identity.tag, job_metadata=job_metadata, metadata_field=metadata_field)
    if job_ids is not None:
        ids = _ClientIds(job_ids, identity.tag, fingerprint)
        return (yield from _ensure_by_client_id(sent, ids, policy, on_changed_request, now, log))
    finder = _Finder(sent, identity, fingerprint, job_metadata=job_metadata, metadata_filter=metadata_filter)
    found = yield from finder.find()
    previous = found.id if found is not None else None
    if found is not None and found.status not in FAILURE_STATUSES:
        if finder.same_request(found):
            return found, False
        yield from _replace(found, on_changed_request, log)
    yield WriteState("intent", {"fingerprint": fingerprint, "at": now})
    if previous is not None:
        # Done with that job: a lookup after a lost answer must not be handed it again from the state store, but
        # list the service's jobs for the one this create made.
        yield WriteState("job_id", None)
    retry = 0
    while True:
        outcome = yield CreateJob(sent)
        if isinstance(outcome, FineTuningJob):
            yield WriteState("job_id", outcome.id)
            return outcome, True
        if not isinstance(outcome, UnsafeToRetryError):  # pragma: no cover - a driver bug
            raise TypeError(f"CreateJob answered {outcome!r}")
        if log is not None:
            log.warning("Creating the job may or may not have worked (%s); looking it up", outcome.cause)
        again = yield from finder.find()
        if again is not None and again.id != previous and finder.same_request(again):
            yield WriteState("job_id", again.id)
            return again, False
        # The lookup answered and no job of ours came of it: the request created nothing. An unknown
        # outcome is transient trouble like any other: sent again, with backoff, as often as the policy allows.
        if retry >= policy.max_retries:
            raise outcome
        yield Sleep(policy.backoff(retry))
        retry += 1


class _Finder:
    """Looks for the newest job that is this task instance's own, by the job's own fields."""

    def __init__(
        self,
        body: Mapping[str, Any],
        identity: JobIdentity,
        fingerprint: str,
        *,
        job_metadata: bool,
        metadata_filter: bool,
    ) -> None:
        self.body = body
        self.identity = identity
        self.fingerprint = fingerprint
        self.job_metadata = job_metadata
        self.metadata_filter = metadata_filter and job_metadata

    def owns(self, job: FineTuningJob, floor: float | None) -> bool:
        if self.job_metadata:
            return (job.metadata or {}).get(TASK_TAG_KEY) == self.identity.tag
        made = job.created_at
        return _same_request_fields(job, self.body) and (floor is None or (made is not None and made >= floor))

    def same_request(self, job: FineTuningJob) -> bool:
        if self.job_metadata:
            theirs = (job.metadata or {}).get(REQUEST_KEY)
            return theirs is None or theirs == self.fingerprint  # a job tagged before fingerprints existed
        return _same_request_fields(job, self.body)

    def find(self) -> _Find:
        stored = yield ReadState("job_id")
        if stored is not NO_STATE_STORE and stored:
            # The task's own state store named it, after the service answered its create: it is ours.
            job = yield GetJob(str(stored))
            if job is not None:
                return job
        floor = None if self.identity.since is None else self.identity.since - CLOCK_SKEW
        if not self.job_metadata:
            intent = yield ReadState("intent")
            if intent is not NO_STATE_STORE:
                if not intent:
                    return None  # this task instance never asked for a job: there is nothing to find
                at = float(intent.get("at", 0)) - CLOCK_SKEW
                floor = at if floor is None else max(floor, at)
        metadata = {TASK_TAG_KEY: self.identity.tag} if self.metadata_filter else None
        after: str | None = None
        walked = 0
        while True:
            page: Page[FineTuningJob] = yield ListJobs(after, metadata)
            for job in page.data:
                walked += 1
                if self.owns(job, floor):
                    return job
                # Jobs come newest first: one made before the task instance's first try ends the walk.
                if floor is not None and job.created_at is not None and job.created_at < floor:
                    return None
                if walked >= MAX_WALK:
                    return None
            after = page.next_after
            if not page.has_more or after is None:
                return None


class _ClientIds:
    """The ids a task instance's jobs of one request are created as, one per generation."""

    def __init__(self, make: Callable[[str, str, int], str], tag: str, fingerprint: str) -> None:
        self._make = make
        self.tag = tag
        self.fingerprint = fingerprint

    def __call__(self, generation: int) -> str:
        return self._make(self.tag, self.fingerprint, generation)

    def of_this_request(self, job: FineTuningJob) -> bool:
        """Whether the job was created under one of this request's ids (by its own record of its id)."""
        own = own_client_id(job)
        return own is not None and any(own == self(generation) for generation in range(MAX_GENERATIONS))


def own_client_id(job: FineTuningJob) -> str | None:
    """The service's own record of the id the client chose for ``job``, if it has one."""
    value = (job.model_extra or {}).get(CLIENT_JOB_ID_FIELD)
    return str(value) if value else None


def _ensure_by_client_id(
    sent: Mapping[str, Any],
    ids: _ClientIds,
    policy: RetryPolicy,
    on_changed_request: OnChangedRequest,
    now: float,
    log: Any,
) -> Ensure:
    """:func:`ensure_job` where the client chooses the job's id."""
    stored = yield ReadState("job_id")
    if stored is not NO_STATE_STORE and stored:
        # The task's state store names the job an earlier try made; it may come from another request.
        earlier = yield GetJob(str(stored))
        if earlier is not None and earlier.status not in FAILURE_STATUSES and not ids.of_this_request(earlier):
            yield from _replace(earlier, on_changed_request, log)
    generation = 0
    newest: FineTuningJob | None = None
    while generation < MAX_GENERATIONS:
        job = yield GetJob(ids(generation))
        if job is None:
            break
        _check_owned(job, ids(generation))
        newest = job
        generation += 1
    if newest is not None and newest.status not in FAILURE_STATUSES:
        yield WriteState("job_id", newest.id)
        return newest, False
    if generation >= MAX_GENERATIONS:
        raise FineTuningError(f"This task instance already made {MAX_GENERATIONS} jobs, each failed or cancelled")
    job_id = ids(generation)
    yield WriteState("intent", {"fingerprint": ids.fingerprint, "at": now, "job_id": job_id})
    retry = 0
    while True:
        outcome = yield CreateJob(sent, job_id)
        if isinstance(outcome, FineTuningJob):
            _check_owned(outcome, job_id)
            yield WriteState("job_id", outcome.id)
            return outcome, True
        if not isinstance(outcome, UnsafeToRetryError | ConflictError):  # pragma: no cover - a driver bug
            raise TypeError(f"CreateJob answered {outcome!r}")
        if log is not None:
            log.warning("Creating job %s may or may not have worked (%s); looking it up", job_id, outcome)
        again = yield GetJob(job_id)
        if again is not None:
            _check_owned(again, job_id)
            yield WriteState("job_id", again.id)
            return again, False
        if isinstance(outcome, ConflictError) or retry >= policy.max_retries:
            raise outcome
        yield Sleep(policy.backoff(retry))
        retry += 1


def _check_owned(job: FineTuningJob, job_id: str) -> None:
    """Refuse a job the service gave for ``job_id`` whose own record of its id says otherwise."""
    own = own_client_id(job)
    if own != job_id:
        raise FineTuningError(
            f"Asked for job {job_id}, the service answered job {job.id} whose own id is {own!r}: it is not "
            "this task instance's, and it is not adopted"
        )
