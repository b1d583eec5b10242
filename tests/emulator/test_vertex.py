"""The emulator's Google Vertex AI dialect, driven by Google's own SDK (``google-genai`` in Vertex mode).

Training data lives in a Cloud Storage emulator (``gcp-storage-emulator``) started here; the emulator reads it
through the JSON API. Every answer the SDK receives is recorded raw and checked against the SDK's own types: each
key of the JSON is a field of the type it parses into (nothing the emulator says is lost on the way).
"""

from __future__ import annotations

import json
import re
import socket
import time
import types as pytypes
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

genai = pytest.importorskip("google.genai")
pytest.importorskip("gcp_storage_emulator")

from google.genai import errors  # noqa: E402
from google.genai import types as gtypes  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from airflow_provider_finetune.emulator import EmulatorConfig, EmulatorServer, ManualClock  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning"),
]

TOKEN = "vertex-emulator-5ecret-token"
PROJECT = "acme-ml"
LOCATION = "us-central1"
BUCKET = "tuning-data"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"


# ---------------------------------------------------------------------------------------------------------
# Cloud Storage emulator
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Storage:
    """A Cloud Storage emulator on loopback, with one bucket."""

    url: str

    def put(self, name: str, rows: list[Any]) -> str:
        """Write rows (objects, or raw strings as lines) as JSONL; return the ``gs://`` URI."""
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        answer = httpx.post(
            f"{self.url}/upload/storage/v1/b/{BUCKET}/o",
            params={"uploadType": "media", "name": name},
            content=("\n".join(lines) + "\n").encode(),
            headers={"content-type": "application/octet-stream"},
        )
        answer.raise_for_status()
        return f"gs://{BUCKET}/{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def storage() -> Iterator[Storage]:
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        httpx.post(f"{url}/storage/v1/b", json={"name": BUCKET}).raise_for_status()
        yield Storage(url)
    finally:
        server.stop()


def sft_rows(count: int = 12, *, start: int = 0) -> list[dict[str, Any]]:
    """Supervised examples in Vertex's Gemini format: ``What is i + i?`` -> ``2i``."""
    return [
        {
            "systemInstruction": {"role": "system", "parts": [{"text": "You add numbers."}]},
            "contents": [
                {"role": "user", "parts": [{"text": f"What is {i} + {i}?"}]},
                {"role": "model", "parts": [{"text": f"{2 * i}"}]},
            ],
        }
        for i in range(start, start + count)
    ]


def preference_rows(count: int = 8) -> list[dict[str, Any]]:
    """Preference examples: the right sum scores 1, a wrong one 0."""
    return [
        {
            "contents": [{"role": "user", "parts": [{"text": f"What is {i} times 3?"}]}],
            "completions": [
                {"score": 0, "completion": {"role": "model", "parts": [{"text": f"{i + 3}"}]}},
                {"score": 1, "completion": {"role": "model", "parts": [{"text": f"{3 * i}"}]}},
            ],
        }
        for i in range(count)
    ]


# ---------------------------------------------------------------------------------------------------------
# The emulator and Google's SDK
# ---------------------------------------------------------------------------------------------------------


def lost_fields(raw: Any, model: type[BaseModel], path: str = "") -> list[str]:
    """The keys of ``raw`` (recursively) that no field of ``model`` reads: what parsing would drop."""
    lost: list[str] = []
    fields = {(item.alias or name): item for name, item in model.model_fields.items()}
    for key, value in raw.items():
        item = fields.get(key) or model.model_fields.get(key)
        if item is None:
            lost.append(path + key)
            continue
        target, many = _model_in(item.annotation)
        if target is None:
            continue
        if many and isinstance(value, list):
            for index, entry in enumerate(value):
                if isinstance(entry, dict):
                    lost += lost_fields(entry, target, f"{path}{key}[{index}].")
        elif isinstance(value, dict):
            lost += lost_fields(value, target, f"{path}{key}.")
    return lost


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, pytypes.UnionType):
        for arg in args:
            found = _model_in(arg)
            if found[0] is not None:
                return found
        return None, False
    if origin is list and args:
        return _model_in(args[0])[0], True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


@dataclass
class Vertex:
    """An emulator serving the Vertex dialect, and what its SDK clients received."""

    server: EmulatorServer
    storage: Storage
    clock: ManualClock | None
    answers: list[tuple[str, str, int, Any]] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.server.url

    def client(self, *, token: str = TOKEN, api_version: str | None = "v1", location: str = LOCATION) -> Any:
        """Google's SDK in Vertex mode with a fixed-token credential; its answers are recorded raw."""
        from google.oauth2.credentials import Credentials

        def record(response: httpx.Response) -> None:
            response.read()
            try:
                payload = response.json()
            except ValueError:
                payload = response.text
            self.answers.append((response.request.method, response.request.url.path, response.status_code, payload))

        options = gtypes.HttpOptions(
            base_url=f"{self.root}/vertex/",
            api_version=api_version,
            httpx_client=httpx.Client(event_hooks={"response": [record]}, timeout=30),
        )
        return genai.Client(
            vertexai=True,
            project=PROJECT,
            location=location,
            credentials=Credentials(token=token),
            http_options=options,
        )

    def last(self, model: type[BaseModel]) -> Any:
        """The last answer's JSON, checked to parse into ``model`` whole."""
        _, path, status, payload = self.answers[-1]
        assert status == 200, (path, payload)
        assert lost_fields(payload, model) == [], (path, payload)
        return payload

    def advance(self, seconds: float) -> None:
        assert self.clock is not None
        self.clock.advance(seconds)

    def faults(self, **settings: Any) -> None:
        answer = httpx.post(
            f"{self.root}/_emulator/faults", json=settings, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        answer.raise_for_status()

    def tune(self, client: Any, uri: str, **config: Any) -> Any:
        base = config.pop("base_model", "gemini-2.5-flash")
        validation = config.pop("validation_uri", None)
        if validation:
            config["validation_dataset"] = gtypes.TuningValidationDataset(gcs_uri=validation)
        return client.tunings.tune(
            base_model=base,
            training_dataset=gtypes.TuningDataset(gcs_uri=uri),
            config=gtypes.CreateTuningJobConfig(**config),
        )


@pytest.fixture
def make_vertex(storage: Storage) -> Iterator[Callable[..., Vertex]]:
    started: list[EmulatorServer] = []

    def make(*, manual: bool = True, **overrides: Any) -> Vertex:
        clock = ManualClock() if manual else None
        settings: dict[str, Any] = {"api_key": TOKEN, "gcs_endpoint": storage.url, "seed": 5}
        if clock is not None:
            settings["clock"] = clock
        settings.update(overrides)
        server = EmulatorServer(EmulatorConfig(**settings)).start()
        started.append(server)
        return Vertex(server, storage, clock)

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def vertex(make_vertex: Callable[..., Vertex]) -> Vertex:
    """The Vertex dialect on a manual clock at speed 1: pending for 8 s, then 30 s of training for a small job."""
    return make_vertex()


# ---------------------------------------------------------------------------------------------------------
# A whole tuning lifecycle
# ---------------------------------------------------------------------------------------------------------


def test_a_supervised_job_runs_to_a_tuned_model_that_answers(vertex: Vertex) -> None:
    client = vertex.client()
    training = vertex.storage.put("sft/train.jsonl", sft_rows(12))
    validation = vertex.storage.put("sft/valid.jsonl", sft_rows(4, start=50))

    job = vertex.tune(
        client,
        training,
        validation_uri=validation,
        tuned_model_display_name="adder",
        description="adds numbers",
        epoch_count=2,
        adapter_size=gtypes.AdapterSize.ADAPTER_SIZE_FOUR,
        learning_rate_multiplier=0.5,
        labels={"airflow-task": "dag_1-tune", "team": "ml"},
    )
    created = vertex.last(gtypes.TuningJob)
    assert vertex.answers[-1][:2] == ("POST", f"/vertex/v1/{PARENT}/tuningJobs")
    assert re.fullmatch(rf"{PARENT}/tuningJobs/\d{{19}}", job.name)
    assert job.state == gtypes.JobState.JOB_STATE_PENDING
    assert job.base_model == "gemini-2.5-flash"
    assert job.tuned_model_display_name == "adder"
    assert job.description == "adds numbers"
    assert job.labels == {"airflow-task": "dag_1-tune", "team": "ml"}
    spec = job.supervised_tuning_spec
    assert spec.training_dataset_uri == training
    assert spec.validation_dataset_uri == validation
    assert spec.hyper_parameters.epoch_count == 2
    assert spec.hyper_parameters.adapter_size == gtypes.AdapterSize.ADAPTER_SIZE_FOUR
    assert spec.hyper_parameters.learning_rate_multiplier == 0.5
    assert created["supervisedTuningSpec"]["hyperParameters"]["epochCount"] == "2"  # int64 as a JSON string
    assert job.create_time is not None
    assert job.tuned_model is None
    assert job.experiment.startswith(f"{PARENT}/metadataStores/default/contexts/")

    vertex.advance(9)  # dataset processed, training started
    running = client.tunings.get(name=job.name)
    raw = vertex.last(gtypes.TuningJob)
    assert vertex.answers[-1][:2] == ("GET", f"/vertex/v1/{job.name}")
    assert running.state == gtypes.JobState.JOB_STATE_RUNNING
    assert running.start_time is not None
    stats = running.tuning_data_stats.supervised_tuning_data_stats
    assert stats.tuning_dataset_example_count == 12
    assert stats.tuning_step_count == int(raw["tuningDataStats"]["supervisedTuningDataStats"]["tuningStepCount"]) > 0
    assert stats.total_billable_token_count > 0
    assert stats.total_tuning_character_count > 0
    assert stats.user_message_per_example_distribution.mean == 2.0
    assert stats.user_dataset_examples[0].parts[0].text == "What is 0 + 0?"
    assert running.tuned_model is None  # no checkpoint yet

    vertex.advance(16)  # half of the 30 s of training: the first epoch's checkpoint
    halfway = client.tunings.get(name=job.name)
    vertex.last(gtypes.TuningJob)
    assert halfway.state == gtypes.JobState.JOB_STATE_RUNNING
    assert halfway.tuned_model.model is None
    assert [(c.checkpoint_id, c.epoch) for c in halfway.tuned_model.checkpoints] == [("1", 1)]

    vertex.advance(30)
    done = client.tunings.get(name=job.name)
    raw = vertex.last(gtypes.TuningJob)
    assert done.state == gtypes.JobState.JOB_STATE_SUCCEEDED
    assert done.end_time > done.start_time > done.create_time
    assert done.update_time == done.end_time
    assert done.error is None
    tuned = done.tuned_model
    assert re.fullmatch(rf"{PARENT}/models/\d{{19}}@1", tuned.model)
    assert re.fullmatch(rf"{PARENT}/endpoints/\d{{19}}", tuned.endpoint)
    assert [(c.checkpoint_id, c.epoch) for c in tuned.checkpoints] == [("1", 1), ("2", 2)]
    assert tuned.checkpoints[-1].endpoint == tuned.endpoint
    assert tuned.checkpoints[0].endpoint != tuned.endpoint
    assert (
        tuned.checkpoints[1].step == 2 * tuned.checkpoints[0].step == int(raw["tunedModel"]["checkpoints"][1]["step"])
    )

    answer = client.models.generate_content(model=tuned.endpoint, contents="What is 7 + 7?")
    vertex.last(gtypes.GenerateContentResponse)
    assert vertex.answers[-1][:2] == ("POST", f"/vertex/v1/{tuned.endpoint}:generateContent")
    assert answer.text == "14"
    assert answer.candidates[0].content.role == "model"
    assert answer.candidates[0].finish_reason == gtypes.FinishReason.STOP
    usage = answer.usage_metadata
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count > 0
    assert answer.model_version == "gemini-2.5-flash"

    checkpoint = client.models.generate_content(model=tuned.checkpoints[0].endpoint, contents="What is 3 + 3?")
    assert checkpoint.text == "6"
    base = client.models.generate_content(model="gemini-2.5-flash", contents="What is 3 + 3?")
    vertex.last(gtypes.GenerateContentResponse)
    assert base.text
    assert base.text != "6"  # a base model knows nothing of the training data

    requests = vertex.server.emulator.counters.requests
    assert requests["POST /vertex/{version}/projects/{project}/locations/{location}/tuningJobs"] == 1
    assert requests["GET /vertex/{version}/projects/{project}/locations/{location}/tuningJobs/{id}"] == 3


def test_a_preference_job_tunes_on_scored_completions(vertex: Vertex) -> None:
    client = vertex.client()
    training = vertex.storage.put("pref/train.jsonl", preference_rows(8))

    job = vertex.tune(client, training, method=gtypes.TuningMethod.PREFERENCE_TUNING, beta=0.2, epoch_count=1)
    raw = vertex.last(gtypes.TuningJob)
    assert "preferenceOptimizationSpec" in raw
    assert "supervisedTuningSpec" not in raw
    assert job.preference_optimization_spec.training_dataset_uri == training
    assert job.preference_optimization_spec.hyper_parameters.beta == 0.2

    vertex.advance(200)
    done = client.tunings.get(name=job.name)
    vertex.last(gtypes.TuningJob)
    assert done.state == gtypes.JobState.JOB_STATE_SUCCEEDED
    stats = done.tuning_data_stats.preference_optimization_data_stats
    assert stats.tuning_dataset_example_count == 8
    assert stats.scores_distribution.max == 1.0
    assert stats.user_dataset_examples[0].completions[1].score == 1
    answer = client.models.generate_content(model=done.tuned_model.endpoint, contents="What is 5 times 3?")
    assert answer.text == "15"  # the preferred completion


def test_the_sdks_default_version_v1beta1_is_served_and_polling_sees_the_job_end(
    make_vertex: Callable[..., Vertex],
) -> None:
    vertex = make_vertex(manual=False, speed=200.0)
    client = vertex.client(api_version=None)
    job = vertex.tune(client, vertex.storage.put("poll/train.jsonl", sft_rows(10)), epoch_count=1)
    assert vertex.answers[-1][1] == f"/vertex/v1beta1/{PARENT}/tuningJobs"
    deadline = time.monotonic() + 60
    while True:
        current = client.tunings.get(name=job.name)
        vertex.last(gtypes.TuningJob)
        if current.state == gtypes.JobState.JOB_STATE_RUNNING:
            assert current.tuning_job_state == gtypes.TuningJobState.TUNING_JOB_STATE_TUNING
            assert current.tuning_job_metadata is not None
        if current.state == gtypes.JobState.JOB_STATE_SUCCEEDED:
            break
        assert time.monotonic() < deadline, f"the job did not end in time: {current.state}"
        time.sleep(0.01)
    assert current.tuning_job_metadata.completed_epoch_count == 1
    assert client.models.generate_content(model=current.tuned_model.endpoint, contents="What is 2 + 2?").text == "4"


def test_jobs_and_their_models_survive_a_restart(storage: Storage, tmp_path: Path) -> None:
    clock = ManualClock()
    config = EmulatorConfig(api_key=TOKEN, gcs_endpoint=storage.url, clock=clock, db_path=str(tmp_path / "emu.db"))
    with EmulatorServer(config) as server:
        vertex = Vertex(server, storage, clock)
        job = vertex.tune(vertex.client(), storage.put("restart/train.jsonl", sft_rows(10)), epoch_count=1)
    clock.advance(200)
    with EmulatorServer(config) as server:
        client = Vertex(server, storage, clock).client()
        done = client.tunings.get(name=job.name)
        assert done.state == gtypes.JobState.JOB_STATE_SUCCEEDED
        assert client.models.generate_content(model=done.tuned_model.endpoint, contents="What is 4 + 4?").text == "8"
        assert [item.name for item in client.tunings.list()] == [job.name]


# ---------------------------------------------------------------------------------------------------------
# Cancel, list, failures
# ---------------------------------------------------------------------------------------------------------


def test_a_cancelled_job_is_cancelling_then_cancelled_and_an_ended_job_cannot_be_cancelled(vertex: Vertex) -> None:
    client = vertex.client()
    job = vertex.tune(client, vertex.storage.put("cancel/train.jsonl", sft_rows(12)), epoch_count=3)
    vertex.advance(9)

    client.tunings.cancel(name=job.name)
    assert vertex.answers[-1][:2] == ("POST", f"/vertex/v1/{job.name}:cancel")
    assert vertex.last(gtypes.CancelTuningJobResponse) == {}
    cancelling = client.tunings.get(name=job.name)
    vertex.last(gtypes.TuningJob)
    assert cancelling.state == gtypes.JobState.JOB_STATE_CANCELLING
    assert cancelling.end_time is None
    client.tunings.cancel(name=job.name)  # again while cancelling: nothing to do

    vertex.advance(5)
    cancelled = client.tunings.get(name=job.name)
    vertex.last(gtypes.TuningJob)
    assert cancelled.state == gtypes.JobState.JOB_STATE_CANCELLED
    assert cancelled.error.code == 1
    assert cancelled.end_time is not None
    assert cancelled.tuned_model is None or cancelled.tuned_model.model is None

    with pytest.raises(errors.ClientError) as refused:
        client.tunings.cancel(name=job.name)
    assert (refused.value.code, refused.value.status) == (400, "FAILED_PRECONDITION")
    assert "JOB_STATE_CANCELLED" in refused.value.message


def test_the_list_pages_newest_first_and_filters_by_labels_state_and_time(vertex: Vertex) -> None:
    client = vertex.client()
    uri = vertex.storage.put("list/train.jsonl", sft_rows(10))
    names = []
    for index in range(5):
        job = vertex.tune(client, uri, labels={"team": "a" if index % 2 == 0 else "b", "run": str(index)})
        names.append(job.name)
        vertex.advance(1)

    everything = list(client.tunings.list(config=gtypes.ListTuningJobsConfig(page_size=2)))
    assert [job.name for job in everything] == names[::-1]
    pages = [payload for method, path, _, payload in vertex.answers if method == "GET" and path.endswith("tuningJobs")]
    assert [len(page["tuningJobs"]) for page in pages] == [2, 2, 1]
    assert "nextPageToken" in pages[0]
    assert "nextPageToken" not in pages[-1]
    assert lost_fields(pages[0], gtypes.ListTuningJobsResponse) == []

    def listed(text: str) -> list[str]:
        return [job.name for job in client.tunings.list(config=gtypes.ListTuningJobsConfig(filter=text))]

    assert listed('labels.team="a"') == [names[4], names[2], names[0]]
    assert listed("labels.team=b") == [names[3], names[1]]
    assert listed("labels:run") == names[::-1]
    assert listed("labels.nothing:*") == []
    client.tunings.cancel(name=names[2])
    vertex.advance(10)
    assert listed("labels.team=a AND state!=JOB_STATE_CANCELLED") == [names[4], names[0]]
    assert listed("state=JOB_STATE_CANCELLED OR labels.run=1") == [names[2], names[1]]
    assert listed("NOT labels.team=a") == [names[3], names[1]]
    second = client.tunings.get(name=names[1]).create_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert listed(f'create_time>"{second}" AND (labels.team=b OR labels.run=4)') == [names[4], names[3]]

    with pytest.raises(errors.ClientError) as bad:
        listed("owner=me")
    assert (bad.value.code, bad.value.status) == (400, "INVALID_ARGUMENT")
    first = httpx.get(
        f"{vertex.root}/vertex/v1/{PARENT}/tuningJobs",
        params={"pageSize": "1", "filter": "labels.team=a"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    elsewhere = httpx.get(
        f"{vertex.root}/vertex/v1/{PARENT}/tuningJobs",
        params={"pageSize": "1", "pageToken": first["nextPageToken"]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert elsewhere.status_code == 400
    assert elsewhere.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert list(vertex.client(location="europe-west4").tunings.list()) == []


def test_bad_or_missing_data_and_a_forced_failure_fail_the_job(make_vertex: Callable[..., Vertex]) -> None:
    vertex = make_vertex()
    client = vertex.client()
    missing = vertex.tune(client, f"gs://{BUCKET}/nowhere/train.jsonl")
    bad_line = vertex.tune(client, vertex.storage.put("bad/train.jsonl", [*sft_rows(2), "not json", *sft_rows(2)]))
    no_answer = vertex.tune(
        client, vertex.storage.put("bad/ask.jsonl", [{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}])
    )
    forced = vertex.tune(
        client,
        vertex.storage.put("forced/train.jsonl", sft_rows(12)),
        epoch_count=4,
        labels={"emulator_force_failure": "tpu_lost"},
    )
    assert all(job.state == gtypes.JobState.JOB_STATE_PENDING for job in (missing, bad_line, no_answer, forced))

    vertex.advance(4)  # the datasets are processed
    failed = client.tunings.get(name=missing.name)
    vertex.last(gtypes.TuningJob)
    assert failed.state == gtypes.JobState.JOB_STATE_FAILED
    assert failed.error.code == 3
    assert f"gs://{BUCKET}/nowhere/train.jsonl does not exist" in failed.error.message
    assert failed.end_time is not None
    assert failed.start_time is None
    assert failed.tuning_data_stats is None
    line = client.tunings.get(name=bad_line.name)
    assert line.state == gtypes.JobState.JOB_STATE_FAILED
    assert "line 3" in line.error.message
    assert "bad/train.jsonl" in line.error.message
    unanswered = client.tunings.get(name=no_answer.name).error.message
    assert "line 1" in unanswered
    assert "'model'" in unanswered

    vertex.advance(200)
    broken = client.tunings.get(name=forced.name)
    vertex.last(gtypes.TuningJob)
    assert broken.state == gtypes.JobState.JOB_STATE_FAILED
    assert broken.error.code == 13
    assert "emulator_force_failure" in broken.error.message
    assert broken.tuned_model.model is None
    assert [c.epoch for c in broken.tuned_model.checkpoints] == [1]  # made before the failure, half-way


def test_without_a_storage_endpoint_the_job_fails_saying_how_to_set_one(make_vertex: Callable[..., Vertex]) -> None:
    vertex = make_vertex(gcs_endpoint=None)
    client = vertex.client()
    job = vertex.tune(client, f"gs://{BUCKET}/any/train.jsonl")
    vertex.advance(4)
    failed = client.tunings.get(name=job.name)
    assert failed.state == gtypes.JobState.JOB_STATE_FAILED
    assert "STORAGE_EMULATOR_HOST" in failed.error.message


def test_the_storage_endpoint_defaults_to_storage_emulator_host(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_finetune.emulator.__main__ import build_parser, config_from_args

    host = storage.url.removeprefix("http://")  # a bare host:port, as Google's clients take it
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    assert EmulatorConfig().gcs_endpoint == host
    assert config_from_args(build_parser().parse_args([])).gcs_endpoint == host
    assert (
        config_from_args(build_parser().parse_args(["--gcs-endpoint", "http://gcs:1"])).gcs_endpoint == "http://gcs:1"
    )
    clock = ManualClock()
    with EmulatorServer(EmulatorConfig(api_key=TOKEN, clock=clock)) as server:
        vertex = Vertex(server, storage, clock)
        client = vertex.client()
        job = vertex.tune(client, storage.put("env/train.jsonl", sft_rows(10)))
        vertex.advance(9)
        assert client.tunings.get(name=job.name).state == gtypes.JobState.JOB_STATE_RUNNING


# ---------------------------------------------------------------------------------------------------------
# Refusals, authentication, faults
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_model", "uri_name", "config", "field_path"),
    [
        ("gemini-1.0-pro-002", "ok.jsonl", {}, "tuning_job.base_model"),
        ("gemini-2.5-flash", "data.csv", {}, "tuning_job.supervised_tuning_spec.training_dataset_uri"),
        (
            "gemini-2.5-pro",
            "ok.jsonl",
            {"adapter_size": gtypes.AdapterSize.ADAPTER_SIZE_SIXTEEN},
            "tuning_job.supervised_tuning_spec.hyper_parameters.adapter_size",
        ),
        ("gemini-2.5-flash", "ok.jsonl", {"epoch_count": 0}, "supervised_tuning_spec.hyper_parameters.epoch_count"),
        (
            "gemini-2.5-flash",
            "ok.jsonl",
            {"learning_rate_multiplier": -1.0},
            "supervised_tuning_spec.hyper_parameters.learning_rate_multiplier",
        ),
        ("gemini-2.5-flash", "ok.jsonl", {"learning_rate": 0.001}, "hyper_parameters.learning_rate"),
        ("gemini-2.5-flash", "ok.jsonl", {"labels": {"Team": "ml"}}, "tuning_job.labels"),
        ("gemini-2.5-flash", "ok.jsonl", {"labels": {"team": "x" * 64}}, "tuning_job.labels"),
        (
            "gemini-2.5-pro",
            "ok.jsonl",
            {"method": gtypes.TuningMethod.PREFERENCE_TUNING},
            "tuning_job.preference_optimization_spec",
        ),
    ],
)
def test_a_create_is_refused_naming_the_field(
    vertex: Vertex, base_model: str, uri_name: str, config: dict[str, Any], field_path: str
) -> None:
    client = vertex.client()
    with pytest.raises(errors.ClientError) as refused:
        vertex.tune(client, f"gs://{BUCKET}/refused/{uri_name}", base_model=base_model, **config)
    error = refused.value
    assert (error.code, error.status) == (400, "INVALID_ARGUMENT")
    assert field_path in error.message
    (violations,) = [item["fieldViolations"] for item in error.details["error"]["details"]]
    assert any(field_path in item["field"] for item in violations)
    assert len(vertex.server.emulator.store.records("vertex-job")) == 0


def test_a_create_with_an_unknown_field_or_both_specs_is_refused(vertex: Vertex) -> None:
    url = f"{vertex.root}/vertex/v1/{PARENT}/tuningJobs"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    spec = {"trainingDatasetUri": f"gs://{BUCKET}/x.jsonl"}
    unknown = httpx.post(
        url, json={"baseModel": "gemini-2.5-flash", "supervisedTuningSpec": spec, "color": 1}, headers=auth
    )
    assert unknown.status_code == 400
    assert unknown.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert 'Unknown name "color"' in unknown.json()["error"]["message"]
    both = httpx.post(
        url,
        json={"baseModel": "gemini-2.5-flash", "supervisedTuningSpec": spec, "preferenceOptimizationSpec": spec},
        headers=auth,
    )
    assert both.status_code == 400
    assert "tuning_spec" in both.json()["error"]["message"]
    typed = httpx.post(
        url,
        json={
            "base_model": "gemini-2.5-flash",
            "supervised_tuning_spec": {**spec, "hyper_parameters": {"epoch_count": "x"}},
        },
        headers=auth,
    )
    assert typed.status_code == 400
    assert "epoch_count" in typed.json()["error"]["message"]
    snake = httpx.post(
        url,
        json={
            "base_model": "gemini-2.5-flash",
            "supervised_tuning_spec": {**spec, "hyper_parameters": {"epoch_count": "3"}},
        },
        headers=auth,
    )
    assert snake.status_code == 200, snake.text  # proto JSON takes snake_case names and int64 strings
    assert snake.json()["supervisedTuningSpec"]["hyperParameters"]["epochCount"] == "3"


def test_requests_need_the_emulators_key_as_a_bearer_token(vertex: Vertex) -> None:
    url = f"{vertex.root}/vertex/v1/{PARENT}/tuningJobs"
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"api-key": TOKEN}):
        answer = httpx.get(url, headers=headers)
        assert answer.status_code == 401
        body = answer.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message", "status"}
        assert body["error"]["code"] == 401
        assert body["error"]["status"] == "UNAUTHENTICATED"
        assert "wrong-token" not in answer.text
    with pytest.raises(errors.ClientError) as refused:
        list(vertex.client(token="not-the-key").tunings.list())
    assert (refused.value.code, refused.value.status) == (401, "UNAUTHENTICATED")


def test_unknown_jobs_endpoints_and_paths_are_not_found(vertex: Vertex) -> None:
    client = vertex.client()
    job = vertex.tune(client, vertex.storage.put("nf/train.jsonl", sft_rows(10)))
    for call in (
        lambda: client.tunings.get(name=f"{PARENT}/tuningJobs/1234567890123456789"),
        lambda: client.tunings.get(name=job.name.replace(LOCATION, "europe-west4")),
        lambda: client.models.generate_content(model=f"{PARENT}/endpoints/1234567890123456789", contents="hi"),
        lambda: client.models.generate_content(model="gemini-9-ultra", contents="hi"),
    ):
        with pytest.raises(errors.ClientError) as missing:
            call()
        assert (missing.value.code, missing.value.status) == (404, "NOT_FOUND")
    answer = httpx.get(f"{vertex.root}/vertex/v1/{PARENT}/datasets", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404
    assert answer.json()["error"]["status"] == "NOT_FOUND"


def test_quota_refuses_a_create_with_resource_exhausted(vertex: Vertex) -> None:
    client = vertex.client()
    uri = vertex.storage.put("quota/train.jsonl", sft_rows(10))
    vertex.faults(max_active_jobs=1)
    first = vertex.tune(client, uri)
    with pytest.raises(errors.ClientError) as refused:
        vertex.tune(client, uri)
    assert (refused.value.code, refused.value.status) == (429, "RESOURCE_EXHAUSTED")
    client.tunings.cancel(name=first.name)
    vertex.advance(10)
    assert vertex.tune(client, uri).state == gtypes.JobState.JOB_STATE_PENDING


def test_injected_faults_reach_the_vertex_routes_in_googles_shape(vertex: Vertex) -> None:
    client = vertex.client()
    uri = vertex.storage.put("faults/train.jsonl", sft_rows(10))

    vertex.faults(error_rate=1.0, match="/vertex/")
    with pytest.raises(errors.ServerError) as server_error:
        list(client.tunings.list())
    assert server_error.value.code in (500, 502, 503)
    assert server_error.value.status in ("INTERNAL", "UNAVAILABLE")

    vertex.faults(error_rate=0.0, rate_limit_rate=1.0, retry_after=2.0)
    with pytest.raises(errors.ClientError) as throttled:
        list(client.tunings.list())
    assert (throttled.value.code, throttled.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert throttled.value.response.headers["retry-after"] == "2"

    vertex.faults(rate_limit_rate=0.0, drop_rate=1.0, match="GET /vertex/")
    with pytest.raises(httpx.TransportError):
        list(client.tunings.list())

    # A create whose answer is lost was made all the same: a retry would make a second job.
    vertex.faults(drop_rate=0.0, error_rate=1.0, after_processing=True, match="POST /vertex/")
    with pytest.raises(errors.ServerError):
        vertex.tune(client, uri, labels={"attempt": "lost"})
    vertex.faults(error_rate=0.0, after_processing=False)
    (made,) = client.tunings.list(config=gtypes.ListTuningJobsConfig(filter="labels.attempt=lost"))
    assert made.state == gtypes.JobState.JOB_STATE_PENDING
    assert vertex.server.emulator.counters.faults["drop"] == 1
