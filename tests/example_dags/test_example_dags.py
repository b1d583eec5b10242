"""The example DAGs: they import cleanly, are wired as they say, and run to success against the emulator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_finetune.emulator import EmulatorServer
from airflow_provider_finetune.hooks.finetune import TASK_TAG_KEY, FineTuningHook
from airflow_provider_finetune.training_data import validate_file
from tests.example_dags.conftest import EXAMPLE_DAGS, Emulator, connection_to, dag_bag
from tests.integration.conftest import API_KEY

DATA = EXAMPLE_DAGS / "data"
DAG_IDS = {
    "example_bedrock",
    "example_finetune_control",
    "example_finetune_deploy",
    "example_finetune_dpo",
    "example_finetune_retraining",
    "example_finetune_rft",
    "example_finetune_sweep",
    "example_fireworks_finetune",
    "example_together_finetune",
    "example_guarded_sweep",
    "example_vertex",
}
OWN_CONNECTIONS = {"example_bedrock": "finetune_bedrock", "example_vertex": "finetune_vertex"}
ASSET_NAME = "finetune_support_assistant"
DATA_FILES = {
    "support_train.jsonl": ("supervised", 40),
    "support_valid.jsonl": ("supervised", 12),
    "support_preferences_train.jsonl": ("dpo", 24),
    "support_preferences_valid.jsonl": ("dpo", 10),
    "ticket_routing_train.jsonl": ("reinforcement", 24),
    "ticket_routing_valid.jsonl": ("reinforcement", 10),
}


def xcoms(run_id: str, dag_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index).all()
        )
        return {row.key: XComModel.deserialize_value(row) for row in rows}


def task_states(run_id: str, dag_id: str) -> dict[str, str | None]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id).all()
        return {row.task_id: None if row.state is None else str(row.state) for row in rows}


def asset_events(name: str, run_id: str) -> list[dict[str, Any]]:
    """The events of the asset ``name`` that the run ``run_id`` recorded: each one's extra, source task and asset."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == name, AssetEvent.source_run_id == run_id)
            .all()
        )
        return [{"extra": e.extra, "source_task_id": e.source_task_id, "asset_id": e.asset_id} for e in rows]


def run(bag: Any, dag_id: str, **conf: Any) -> Any:
    dag_run = bag.dags[dag_id].test(run_conf=conf or None)
    assert dag_run.state == "success", f"{dag_id} ended {dag_run.state}"
    return dag_run


# -- data -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), DATA_FILES.items(), ids=list(DATA_FILES))
def test_training_data_is_valid_for_its_method(name: str, expected: tuple[str, int]) -> None:
    method, examples = expected
    report = validate_file(DATA / name, method=method)  # type: ignore[arg-type]
    assert report.examples == examples


def test_data_files_are_what_the_generator_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("example_data_generate", DATA / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    monkeypatch.setattr(generate, "HERE", tmp_path)
    generate.main()
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(path.name for path in DATA.glob("*.jsonl"))
    for name in written:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), f"{name} is stale: run generate.py"
    assert sum((DATA / name).stat().st_size for name in written) < 100_000


def test_evaluation_set_is_held_out() -> None:
    train = {json.loads(line)["messages"][1]["content"] for line in (DATA / "support_train.jsonl").open()}
    rows = [json.loads(line) for line in (DATA / "support_eval.jsonl").open()]
    assert len(rows) >= 5
    for row in rows:
        assert row["messages"][-1]["role"] == "user"
        assert row["messages"][-1]["content"] not in train
        assert row["expected"]


# -- parsing ----------------------------------------------------------------------------------------------


def test_example_dags_import_with_no_errors(example_dag_bag: Any) -> None:
    assert example_dag_bag.import_errors == {}
    assert set(example_dag_bag.dag_ids) == DAG_IDS
    for dag_id in DAG_IDS:
        dag = example_dag_bag.dags[dag_id]
        assert "example" in dag.tags, dag_id
        assert dag.catchup is False, dag_id
        assert dag.start_date is not None, dag_id
        assert "What this DAG shows" in (dag.doc_md or ""), dag_id
        # One connection per example; Bedrock's and Vertex's name their own (their credentials are an AWS or a
        # Google connection's).
        expected = OWN_CONNECTIONS.get(dag_id, "finetune_default")
        for task in dag.tasks:
            if hasattr(task, "finetune_conn_id"):
                assert task.finetune_conn_id == expected, (dag_id, task.task_id)


def test_poll_intervals_look_like_production_by_default() -> None:
    bag = dag_bag(EXAMPLE_DAGS / "example_finetune_retraining.py", FINETUNE_EXAMPLE_POLL_INTERVAL=None)
    assert bag.dags["example_finetune_retraining"].get_task("fine_tune").poll_interval == 60.0


def test_retraining_dag_is_wired_as_documented(example_dag_bag: Any) -> None:
    dag = example_dag_bag.dags["example_finetune_retraining"]
    assert dag.schedule == "@weekly"
    fine_tune = dag.get_task("fine_tune")
    assert fine_tune.deferrable is True
    assert fine_tune.poll_interval == 0.2
    assert fine_tune.upstream_task_ids == {"upload_train", "upload_valid"}
    assert dag.get_task("upload_train").method == "supervised"
    assert dag.get_task("pick_checkpoint").upstream_task_ids == {"fine_tune"}
    assert dag.get_task("evaluate").upstream_task_ids == {"fine_tune"}
    publish = dag.get_task("publish")
    assert publish.upstream_task_ids == {"fine_tune", "pick_checkpoint", "evaluate"}
    assert [asset.name for asset in publish.outlets] == [ASSET_NAME]


def test_deploy_dag_is_scheduled_by_the_asset(example_dag_bag: Any) -> None:
    retraining = example_dag_bag.dags["example_finetune_retraining"].get_task("publish").outlets[0]
    dag = example_dag_bag.dags["example_finetune_deploy"]
    assert [(asset.name, asset.uri) for asset in dag.schedule] == [(retraining.name, retraining.uri)]
    assert [asset.name for asset in dag.get_task("new_model").inlets] == [ASSET_NAME]


def test_sweep_maps_one_job_per_grid_point(example_dag_bag: Any) -> None:
    dag = example_dag_bag.dags["example_finetune_sweep"]
    fine_tune = dag.get_task("fine_tune")
    points = fine_tune.expand_input.value
    assert len(points) == 4
    grid = {tuple(sorted(p["method"]["supervised"]["hyperparameters"].items())) for p in points}
    assert len(grid) == 4
    assert len({p["suffix"] for p in points}) == 4
    assert dag.get_task("pick_best").upstream_task_ids == {"fine_tune"}


def test_rft_dag_checks_the_grader_before_uploading(example_dag_bag: Any) -> None:
    dag = example_dag_bag.dags["example_finetune_rft"]
    assert dag.get_task("check_grader_on_known_answers").upstream_task_ids == {"validate_grader"}
    for upload in ("upload_train", "upload_valid"):
        assert dag.get_task(upload).upstream_task_ids == {"check_grader_on_known_answers"}
        assert dag.get_task(upload).method == "reinforcement"
    method = dag.get_task("fine_tune").method
    assert method["type"] == "reinforcement"
    assert method["reinforcement"]["grader"]["reference"] == "{{ item.label }}"


def test_control_dag_branches_to_one_action(example_dag_bag: Any) -> None:
    dag = example_dag_bag.dags["example_finetune_control"]
    assert dag.schedule is None
    assert set(dag.params) == {"job_id", "action"}
    assert dag.params.get_param("action").schema["enum"] == ["pause", "resume", "cancel"]
    assert dag.get_task("choose_action").downstream_task_ids == {"pause_job", "resume_job", "cancel_job"}
    assert dag.get_task("report").upstream_task_ids == {"pause_job", "resume_job", "cancel_job"}


# -- runs against the emulator ----------------------------------------------------------------------------

integration = pytest.mark.integration


@pytest.fixture(scope="module")
def retraining_run(serialized_example_dags: Any, emulator_server: EmulatorServer) -> Any:
    """One run of the retraining DAG, shared by the tests of what it did and of the DAG it schedules."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    # DAGs are created paused; a paused DAG is not queued by the events of the assets it is scheduled on.
    with create_session() as session:
        session.query(DagModel).filter_by(dag_id="example_finetune_deploy").update({"is_paused": False})
    with connection_to(emulator_server):
        return run(serialized_example_dags, "example_finetune_retraining")


@integration
def test_retraining_publishes_the_evaluated_model(retraining_run: Any, emulator: Emulator) -> None:
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    dag_id, run_id = "example_finetune_retraining", retraining_run.run_id
    fine_tune = xcoms(run_id, dag_id, "fine_tune")
    model = fine_tune["return_value"]
    assert model.startswith("ft:gpt-4o-mini-2024-07-18:emulator:support-")
    job = FineTuningHook().get_job(fine_tune["job_id"])
    assert job.metadata is not None
    assert job.metadata[TASK_TAG_KEY].startswith("ti-")
    assert job.validation_file is not None

    best = xcoms(run_id, dag_id, "pick_checkpoint")["return_value"]
    losses = {c["fine_tuned_model_checkpoint"]: c["metrics"]["valid_loss"] for c in fine_tune["checkpoints"]}
    assert len(losses) == 3
    assert best["valid_loss"] == min(losses.values())
    assert losses[best["checkpoint"]] == best["valid_loss"]

    evaluation = xcoms(run_id, dag_id, "evaluate")["return_value"]
    assert evaluation["model"] == model
    assert 0.0 <= evaluation["score"] <= 1.0
    assert 0.0 <= evaluation["baseline_score"] <= 1.0
    # The emulator's model answers the reworded prompts from its training examples; the question whose
    # answer only the validation set holds is missed: 5 of 6.
    assert evaluation["score"] == pytest.approx(5 / 6)
    assert evaluation["baseline_score"] < evaluation["score"]

    published = xcoms(run_id, dag_id, "publish")["return_value"]
    expected_extra = {
        "fine_tuned_model": model,
        "checkpoint": best["checkpoint"],
        "valid_loss": best["valid_loss"],
        "score": evaluation["score"],
    }
    assert published.items() >= expected_extra.items()
    events = asset_events(ASSET_NAME, run_id)
    assert len(events) == 1
    assert events[0]["extra"].items() >= expected_extra.items()
    assert events[0]["source_task_id"] == "publish"
    with create_session() as session:
        # The event queued a run of the DAG it schedules.
        queued = session.query(AssetDagRunQueue).filter_by(target_dag_id="example_finetune_deploy").all()
        assert [q.asset_id for q in queued] == [events[0]["asset_id"]]


@integration
def test_deploy_dag_reads_the_model_from_the_asset_event(
    serialized_example_dags: Any, retraining_run: Any, emulator: Emulator
) -> None:
    model = xcoms(retraining_run.run_id, "example_finetune_retraining", "fine_tune")["return_value"]
    deploy = run(serialized_example_dags, "example_finetune_deploy")
    resolved = xcoms(deploy.run_id, "example_finetune_deploy", "new_model")["return_value"]
    assert resolved["fine_tuned_model"] == model
    promoted = xcoms(deploy.run_id, "example_finetune_deploy", "promote")["return_value"]
    assert promoted["fine_tuned_model"] == model
    shared = {p.project_id: p.id for p in FineTuningHook().iter_checkpoint_permissions(model)}
    assert promoted["permission_ids"] == [shared["proj_brightwave_serving"]]
    assert emulator.counters()["jobs_created"] == 0


@integration
def test_sweep_creates_one_job_per_point_and_picks_the_lowest_loss(
    serialized_example_dags: Any, emulator: Emulator
) -> None:
    dag_id = "example_finetune_sweep"
    dag_run = run(serialized_example_dags, dag_id)
    assert emulator.counters()["jobs_created"] == 4
    jobs = [xcoms(dag_run.run_id, dag_id, "fine_tune", map_index=i) for i in range(4)]
    assert len({job["job_id"] for job in jobs}) == 4
    finals = {
        job["return_value"]: max(job["checkpoints"], key=lambda c: c["step_number"])["metrics"]["valid_loss"]
        for job in jobs
    }
    picked = xcoms(dag_run.run_id, dag_id, "pick_best")["return_value"]
    assert picked["best"]["fine_tuned_model"] == min(finals, key=finals.__getitem__)
    assert picked["best"]["valid_loss"] == min(finals.values())
    assert {(r["n_epochs"], r["learning_rate_multiplier"]) for r in picked["results"]} == {
        (2, 0.5),
        (2, 1.0),
        (3, 0.5),
        (3, 1.0),
    }
    hyperparameters = {
        tuple(FineTuningHook().get_job(job["job_id"]).hyperparameters.model_dump(exclude_none=True).items())
        for job in jobs
    }
    assert len(hyperparameters) == 4


@integration
def test_dpo_dag_trains_on_preferences(serialized_example_dags: Any, emulator: Emulator) -> None:
    dag_id = "example_finetune_dpo"
    dag_run = run(serialized_example_dags, dag_id)
    summary = xcoms(dag_run.run_id, dag_id, "summarize")["return_value"]
    assert summary["fine_tuned_model"].startswith("ft:gpt-4.1-mini-2025-04-14:emulator:support-dpo:")
    assert summary["method"] == "dpo"
    assert summary["hyperparameters"]["beta"] == 0.1
    assert xcoms(dag_run.run_id, dag_id, "wait_for_job")["return_value"] == summary["fine_tuned_model"]
    assert emulator.counters()["jobs_created"] == 1


@integration
def test_rft_dag_validates_the_grader_then_trains(serialized_example_dags: Any, emulator: Emulator) -> None:
    dag_id = "example_finetune_rft"
    dag_run = run(serialized_example_dags, dag_id)
    assert xcoms(dag_run.run_id, dag_id, "check_grader_on_known_answers")["rewards"] == [1.0, 1.0, 1.0]
    summary = xcoms(dag_run.run_id, dag_id, "summarize")["return_value"]
    assert summary["fine_tuned_model"].startswith("ft:o4-mini-2025-04-16:emulator:ticket-routing:")
    # The grader's placeholders reached the service as they are, not rendered by Jinja.
    assert summary["grader"]["input"] == "{{ sample.output_text }}"
    assert summary["grader"]["reference"] == "{{ item.label }}"
    assert emulator.counters()["jobs_created"] == 1


@integration
def test_control_dag_pauses_resumes_and_cancels_a_job(
    serialized_example_dags: Any, slow_emulator: EmulatorServer
) -> None:
    dag_id = "example_finetune_control"
    with connection_to(slow_emulator):
        hook = FineTuningHook()
        training_file = hook.upload_file((DATA / "support_train.jsonl").read_bytes(), filename="train.jsonl").id
        job = hook.create_job({"model": "gpt-4o-mini-2024-07-18", "training_file": training_file})
        seen = {}
        for action in ("pause", "resume", "cancel"):
            dag_run = run(serialized_example_dags, dag_id, job_id=job.id, action=action)
            ran = {task_id for task_id, state in task_states(dag_run.run_id, dag_id).items() if state == "success"}
            assert ran == {"choose_action", f"{action}_job", "report"}
            reported = xcoms(dag_run.run_id, dag_id, "report")["return_value"]["status"]
            seen[action] = (reported, hook.get_job(job.id).status.value)
    assert seen["pause"] == ("paused", "paused")
    assert seen["resume"] in {("queued", "queued"), ("running", "running")}
    assert seen["cancel"] == ("cancelled", "cancelled")
    requests = Emulator(slow_emulator).counters()["requests"]
    for action in ("pause", "resume", "cancel"):
        assert requests[f"POST /v1/fine_tuning/jobs/{{fine_tuning_job_id}}/{action}"] == 1


# Last: each run publishes an Asset event, and the tests above read the retraining run's.
AZURE_CONNECTIONS = {
    "azure-versioned": {"service": "azure", "api_version": "2024-10-21"},
    "azure-preview": {"service": "azure", "api_version": "2025-04-01-preview"},
    "azure-v1": {"service": "azure"},
}


@integration
@pytest.mark.parametrize("extra", AZURE_CONNECTIONS.values(), ids=list(AZURE_CONNECTIONS))
def test_retraining_runs_on_azure_with_only_the_connection_changed(
    serialized_example_dags: Any, emulator_server: EmulatorServer, emulator: Emulator, extra: dict[str, str]
) -> None:
    root = emulator_server.base_url.removesuffix("/v1")
    conn = {"conn_type": "finetune", "host": root, "password": API_KEY, "extra": extra}
    before = emulator.counters()["requests"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
        dag_run = run(serialized_example_dags, "example_finetune_retraining")
        job = FineTuningHook().get_job(xcoms(dag_run.run_id, "example_finetune_retraining", "fine_tune")["job_id"])
    fine_tune = xcoms(dag_run.run_id, "example_finetune_retraining", "fine_tune")
    assert fine_tune["return_value"].startswith("ft:gpt-4o-mini-2024-07-18:emulator:support-")
    assert fine_tune["return_value"] == job.fine_tuned_model
    assert job.status == "succeeded"
    after = emulator.counters()["requests"]
    prefix = "/openai/v1/" if extra.get("api_version") is None else "/openai/"
    sent = {route: after[route] - before.get(route, 0) for route in after if after[route] != before.get(route, 0)}
    assert sent, "the run sent nothing to the emulator"
    api_routes = [route for route in sent if " /v1/" in route or " /openai/" in route]
    assert all(route.split(" ", 1)[1].startswith(prefix) for route in api_routes), api_routes
    assert sent[f"POST {prefix}fine_tuning/jobs"] == 1


VENDOR_RUNS = {
    "fireworks": (
        {"service": "fireworks", "account_id": "brightwave"},
        {
            "base_model": "accounts/fireworks/models/llama-v3p1-8b-instruct",
            "suffix": None,
            "service_options": {"output_model": "support-retraining"},
        },
    ),
    "together": (
        {"service": "together"},
        {
            "base_model": "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
            "service_options": {"lora_r": 16, "lora_alpha": 32, "n_checkpoints": 3},
        },
    ),
}


@integration
@pytest.mark.parametrize("service", list(VENDOR_RUNS))
def test_retraining_runs_on_a_vendor_with_only_the_connection_and_its_options_changed(
    serialized_example_dags: Any, emulator_server: EmulatorServer, emulator: Emulator, service: str
) -> None:
    extra, conf = VENDOR_RUNS[service]
    root = emulator_server.base_url.removesuffix("/v1")
    host = root + "/together/v1" if service == "together" else root
    conn = {"conn_type": "finetune", "host": host, "password": API_KEY, "extra": extra}
    dag_id = "example_finetune_retraining"
    before = emulator.counters()["requests"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_FINETUNE_DEFAULT", json.dumps(conn))
        dag_run = run(serialized_example_dags, dag_id, **conf)
        job = FineTuningHook().get_job(xcoms(dag_run.run_id, dag_id, "fine_tune")["job_id"])
    fine_tune = xcoms(dag_run.run_id, dag_id, "fine_tune")
    assert job.status == "succeeded"
    assert fine_tune["return_value"] == job.fine_tuned_model
    after = emulator.counters()["requests"]
    sent = {route: after[route] - before.get(route, 0) for route in after if after[route] != before.get(route, 0)}
    api_routes = [route for route in sent if not route.split(" ", 1)[1].startswith("/_emulator")]
    assert api_routes, "the run sent nothing to the emulator"
    # Together uploads through presigned addresses under /together/storage; Fireworks infers under /inference.
    prefix = "/together/" if service == "together" else ("/v1/accounts/", "/inference/v1/")
    assert all(route.split(" ", 1)[1].startswith(prefix) for route in api_routes), api_routes
    create = "POST /together/v1/fine-tunes" if service == "together" else "POST /v1/accounts/{account_id}/{collection}"
    assert sent[create] == 1, sent

    # The service's checkpoints carry no valid_loss (Together) or do not exist (Fireworks): the final model,
    # said in the log, and no metric made up.
    best = xcoms(dag_run.run_id, dag_id, "pick_checkpoint")["return_value"]
    assert best == {"checkpoint": job.fine_tuned_model, "valid_loss": None}
    published = xcoms(dag_run.run_id, dag_id, "publish")["return_value"]
    assert published["fine_tuned_model"] == job.fine_tuned_model
    assert published["base_model"] == conf["base_model"]
