from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import BaseModel

from airflow_provider_finetune import models
from airflow_provider_finetune.exceptions import InvalidRequestError
from airflow_provider_finetune.models import (
    MAX_UPLOAD_BYTES,
    TERMINAL_STATUSES,
    CompleteUploadRequest,
    CreateCheckpointPermissionRequest,
    CreateFileRequest,
    CreateFineTuningJobRequest,
    CreateUploadRequest,
    FileExpiration,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    FineTuningJobStatus,
    GraderRunErrors,
    GraderValidation,
    JobError,
    JobState,
    LabelModelGrader,
    MethodRequest,
    MultiGrader,
    Page,
    PythonGrader,
    ReinforcementMethod,
    RunGraderRequest,
    StringCheckGrader,
    TextSimilarityGrader,
    ValidateGraderRequest,
    build_request,
)

BASE = {"model": "gpt-4o-mini-2024-07-18", "training_file": "file-train"}
STRING_CHECK = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}
TEXT_SIMILARITY = {
    "type": "text_similarity",
    "name": "similar",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "evaluation_metric": "fuzzy_match",
}
PYTHON = {"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0\n"}
SCORE_MODEL = {
    "type": "score_model",
    "name": "score",
    "model": "gpt-4o-mini",
    "input": [{"role": "user", "content": "Score {{sample.output_text}}"}],
}
LABEL_MODEL = {
    "type": "label_model",
    "name": "label",
    "model": "gpt-4o-mini",
    "input": [{"role": "user", "content": "Label {{item.text}}"}],
    "labels": ["good", "bad"],
    "passing_labels": ["good"],
}


def job(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


def supervised(**hyperparameters: Any) -> dict[str, Any]:
    return job(method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}})


def dpo(**hyperparameters: Any) -> dict[str, Any]:
    return job(method={"type": "dpo", "dpo": {"hyperparameters": hyperparameters}})


def reinforcement(grader: Any = STRING_CHECK, **hyperparameters: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"grader": grader}
    if hyperparameters:
        block["hyperparameters"] = hyperparameters
    return job(method={"type": "reinforcement", "reinforcement": block})


def grader(value: Any) -> dict[str, Any]:
    return {"grader": value}


def multi(graders: Any, **fields: Any) -> dict[str, Any]:
    return {"type": "multi", "name": "combined", "graders": graders, "calculate_output": "exact", **fields}


def upload(**fields: Any) -> dict[str, Any]:
    return {
        "filename": "train.jsonl",
        "purpose": "fine-tune",
        "bytes": 1024,
        "mime_type": "text/jsonl",
        **fields,
    }


def metadata(count: int) -> dict[str, str]:
    return {f"key{i}": f"value{i}" for i in range(count)}


# Short names for the tables below.
JOB = CreateFineTuningJobRequest
VALIDATE = ValidateGraderRequest
RUN = RunGraderRequest
UPLOAD = CreateUploadRequest
COMPLETE = CompleteUploadRequest
PERMISSION = CreateCheckpointPermissionRequest
SH = "method.supervised.hyperparameters"
DH = "method.dpo.hyperparameters"
RH = "method.reinforcement.hyperparameters"
RG = "method.reinforcement.grader"

# (id, request model, input, the field the error must name)
REFUSED: list[tuple[str, type[BaseModel], dict[str, Any], str]] = [
    # model
    ("model-missing", JOB, {"training_file": "file-a"}, "model"),
    ("model-empty", JOB, job(model=""), "model"),
    ("model-space", JOB, job(model="gpt 4o"), "model"),
    ("model-leading-space", JOB, job(model=" gpt-4o"), "model"),
    ("model-newline", JOB, job(model="gpt-4o\n"), "model"),
    ("model-star", JOB, job(model="gpt*4o"), "model"),
    ("model-not-str", JOB, job(model=4), "model"),
    # files
    ("training-file-missing", JOB, {"model": "gpt-4o-mini"}, "training_file"),
    ("training-file-empty", JOB, job(training_file=""), "training_file"),
    ("training-file-space", JOB, job(training_file="file a"), "training_file"),
    ("training-file-none", JOB, job(training_file=None), "training_file"),
    ("validation-file-empty", JOB, job(validation_file=""), "validation_file"),
    ("validation-same-as-training", JOB, job(validation_file="file-train"), "validation_file"),
    # suffix
    ("suffix-empty", JOB, job(suffix=""), "suffix"),
    ("suffix-65", JOB, job(suffix="s" * 65), "suffix"),
    ("suffix-not-str", JOB, job(suffix=7), "suffix"),
    # seed
    ("seed-negative", JOB, job(seed=-1), "seed"),
    ("seed-too-big", JOB, job(seed=2147483648), "seed"),
    ("seed-bool", JOB, job(seed=True), "seed"),
    ("seed-float", JOB, job(seed=1.5), "seed"),
    ("seed-str", JOB, job(seed="42"), "seed"),
    # metadata
    ("metadata-17-keys", JOB, job(metadata=metadata(17)), "metadata"),
    ("metadata-key-65", JOB, job(metadata={"k" * 65: "v"}), "metadata"),
    ("metadata-key-empty", JOB, job(metadata={"": "v"}), "metadata"),
    ("metadata-value-513", JOB, job(metadata={"k": "v" * 513}), "metadata"),
    ("metadata-value-int", JOB, job(metadata={"k": 1}), "metadata.k"),
    ("metadata-not-dict", JOB, job(metadata=["k"]), "metadata"),
    # integrations
    ("integrations-6", JOB, job(integrations=[{"wandb": {"project": "p"}}] * 6), "integrations"),
    (
        "integration-type",
        JOB,
        job(integrations=[{"type": "mlflow", "wandb": {"project": "p"}}]),
        "integrations.0.type",
    ),
    ("integration-no-wandb", JOB, job(integrations=[{"type": "wandb"}]), "integrations.0.wandb"),
    ("wandb-no-project", JOB, job(integrations=[{"wandb": {"name": "n"}}]), "integrations.0.wandb.project"),
    (
        "wandb-blank-project",
        JOB,
        job(integrations=[{"wandb": {"project": " "}}]),
        "integrations.0.wandb.project",
    ),
    (
        "wandb-tags-not-list",
        JOB,
        job(integrations=[{"wandb": {"project": "p", "tags": "t"}}]),
        "integrations.0.wandb.tags",
    ),
    (
        "wandb-unknown-key",
        JOB,
        job(integrations=[{"wandb": {"project": "p", "team": "t"}}]),
        "integrations.0.wandb.team",
    ),
    # unknown top-level field
    ("unknown-field", JOB, job(epochs=3), "epochs"),
    # deprecated top-level hyperparameters
    ("legacy-n-epochs-0", JOB, job(hyperparameters={"n_epochs": 0}), "hyperparameters.n_epochs"),
    ("legacy-beta", JOB, job(hyperparameters={"beta": 0.1}), "hyperparameters.beta"),
    ("legacy-with-dpo", JOB, {**dpo(beta=0.1), "hyperparameters": {"n_epochs": 2}}, "hyperparameters"),
    (
        "legacy-conflicts",
        JOB,
        {**supervised(n_epochs=3), "hyperparameters": {"n_epochs": 2}},
        "hyperparameters",
    ),
    # method
    ("method-type-missing", JOB, job(method={"supervised": {}}), "method.type"),
    ("method-type-unknown", JOB, job(method={"type": "rlhf"}), "method.type"),
    ("method-dpo-block-with-supervised", JOB, job(method={"type": "supervised", "dpo": {}}), "method.dpo"),
    (
        "method-supervised-block-with-dpo",
        JOB,
        job(method={"type": "dpo", "supervised": {}}),
        "method.supervised",
    ),
    (
        "method-rl-block-with-supervised",
        JOB,
        job(method={"type": "supervised", "reinforcement": {"grader": STRING_CHECK}}),
        "method.reinforcement",
    ),
    ("method-rl-without-block", JOB, job(method={"type": "reinforcement"}), RG),
    ("method-rl-without-grader", JOB, job(method={"type": "reinforcement", "reinforcement": {}}), RG),
    ("method-rl-grader-unknown-type", JOB, reinforcement({"type": "vibes", "name": "v"}), RG),
    ("method-rl-grader-label-model", JOB, reinforcement(LABEL_MODEL), RG),
    (
        "method-rl-grader-bad-operation",
        JOB,
        reinforcement({**STRING_CHECK, "operation": "contains"}),
        f"{RG}.operation",
    ),
    ("method-unknown-key", JOB, job(method={"type": "supervised", "lora": {}}), "method.lora"),
    # supervised hyperparameters
    ("n-epochs-0", JOB, supervised(n_epochs=0), f"{SH}.n_epochs"),
    ("n-epochs-51", JOB, supervised(n_epochs=51), f"{SH}.n_epochs"),
    ("n-epochs-bool", JOB, supervised(n_epochs=True), f"{SH}.n_epochs"),
    ("n-epochs-float", JOB, supervised(n_epochs=2.5), f"{SH}.n_epochs"),
    ("n-epochs-str-number", JOB, supervised(n_epochs="3"), f"{SH}.n_epochs"),
    ("n-epochs-str", JOB, supervised(n_epochs="max"), f"{SH}.n_epochs"),
    ("batch-size-0", JOB, supervised(batch_size=0), f"{SH}.batch_size"),
    ("batch-size-257", JOB, supervised(batch_size=257), f"{SH}.batch_size"),
    ("batch-size-bool", JOB, supervised(batch_size=False), f"{SH}.batch_size"),
    ("lr-0", JOB, supervised(learning_rate_multiplier=0), f"{SH}.learning_rate_multiplier"),
    ("lr-negative", JOB, supervised(learning_rate_multiplier=-0.1), f"{SH}.learning_rate_multiplier"),
    ("lr-bool", JOB, supervised(learning_rate_multiplier=True), f"{SH}.learning_rate_multiplier"),
    ("lr-str", JOB, supervised(learning_rate_multiplier="0.1"), f"{SH}.learning_rate_multiplier"),
    ("lr-inf", JOB, supervised(learning_rate_multiplier=math.inf), f"{SH}.learning_rate_multiplier"),
    ("lr-nan", JOB, supervised(learning_rate_multiplier=math.nan), f"{SH}.learning_rate_multiplier"),
    ("supervised-beta", JOB, supervised(beta=0.1), f"{SH}.beta"),
    # dpo hyperparameters
    ("beta-0", JOB, dpo(beta=0), f"{DH}.beta"),
    ("beta-negative", JOB, dpo(beta=-1), f"{DH}.beta"),
    ("beta-above-2", JOB, dpo(beta=2.0001), f"{DH}.beta"),
    ("beta-bool", JOB, dpo(beta=True), f"{DH}.beta"),
    ("beta-str", JOB, dpo(beta="high"), f"{DH}.beta"),
    ("dpo-n-epochs-51", JOB, dpo(n_epochs=51), f"{DH}.n_epochs"),
    # reinforcement hyperparameters
    ("reasoning-effort", JOB, reinforcement(reasoning_effort="extreme"), f"{RH}.reasoning_effort"),
    ("compute-at-min", JOB, reinforcement(compute_multiplier=0.00001), f"{RH}.compute_multiplier"),
    ("compute-0", JOB, reinforcement(compute_multiplier=0), f"{RH}.compute_multiplier"),
    ("compute-above-10", JOB, reinforcement(compute_multiplier=10.5), f"{RH}.compute_multiplier"),
    ("compute-bool", JOB, reinforcement(compute_multiplier=True), f"{RH}.compute_multiplier"),
    ("eval-interval-0", JOB, reinforcement(eval_interval=0), f"{RH}.eval_interval"),
    ("eval-interval-bool", JOB, reinforcement(eval_interval=True), f"{RH}.eval_interval"),
    ("eval-samples-0", JOB, reinforcement(eval_samples=0), f"{RH}.eval_samples"),
    ("eval-samples-float", JOB, reinforcement(eval_samples=1.5), f"{RH}.eval_samples"),
    ("rl-n-epochs-51", JOB, reinforcement(n_epochs=51), f"{RH}.n_epochs"),
    # graders
    ("grader-missing", VALIDATE, {}, "grader"),
    ("grader-not-object", VALIDATE, grader("exact"), "grader"),
    ("grader-no-type", VALIDATE, grader({"name": "x"}), "grader"),
    ("grader-unknown-type", VALIDATE, grader({"type": "vibes", "name": "x"}), "grader"),
    ("grader-label-model-top-level", VALIDATE, grader(LABEL_MODEL), "grader"),
    (
        "string-check-operation",
        VALIDATE,
        grader({**STRING_CHECK, "operation": "contains"}),
        "grader.operation",
    ),
    (
        "string-check-no-reference",
        VALIDATE,
        grader({k: v for k, v in STRING_CHECK.items() if k != "reference"}),
        "grader.reference",
    ),
    (
        "string-check-no-name",
        VALIDATE,
        grader({k: v for k, v in STRING_CHECK.items() if k != "name"}),
        "grader.name",
    ),
    ("string-check-unknown-key", VALIDATE, grader({**STRING_CHECK, "case": "lower"}), "grader.case"),
    (
        "text-similarity-metric",
        VALIDATE,
        grader({**TEXT_SIMILARITY, "evaluation_metric": "rouge_6"}),
        "grader.evaluation_metric",
    ),
    ("python-empty-source", VALIDATE, grader({**PYTHON, "source": ""}), "grader.source"),
    ("python-blank-source", VALIDATE, grader({**PYTHON, "source": " \n"}), "grader.source"),
    ("python-no-source", VALIDATE, grader({"type": "python", "name": "py"}), "grader.source"),
    (
        "score-model-no-model",
        VALIDATE,
        grader({k: v for k, v in SCORE_MODEL.items() if k != "model"}),
        "grader.model",
    ),
    ("score-model-empty-input", VALIDATE, grader({**SCORE_MODEL, "input": []}), "grader.input"),
    ("score-model-input-not-objects", VALIDATE, grader({**SCORE_MODEL, "input": ["hi"]}), "grader.input.0"),
    ("score-model-range-reversed", VALIDATE, grader({**SCORE_MODEL, "range": [1, 0]}), "grader.range"),
    ("score-model-range-three", VALIDATE, grader({**SCORE_MODEL, "range": [0, 1, 2]}), "grader.range"),
    (
        "score-model-sampling-params",
        VALIDATE,
        grader({**SCORE_MODEL, "sampling_params": "hot"}),
        "grader.sampling_params",
    ),
    ("multi-empty-dict", VALIDATE, grader(multi({})), "grader.graders"),
    ("multi-empty-list", VALIDATE, grader(multi([])), "grader.graders"),
    (
        "multi-blank-formula",
        VALIDATE,
        grader(multi({"exact": STRING_CHECK}, calculate_output="")),
        "grader.calculate_output",
    ),
    (
        "multi-nested-multi",
        VALIDATE,
        grader(multi({"inner": multi({"exact": STRING_CHECK})})),
        "grader.graders.inner",
    ),
    (
        "multi-named-bad-member",
        VALIDATE,
        grader(multi({"exact": {**STRING_CHECK, "operation": "is"}})),
        "grader.graders.exact.operation",
    ),
    (
        "multi-list-bad-member",
        VALIDATE,
        grader(multi([STRING_CHECK, {**PYTHON, "source": ""}])),
        "grader.graders.1.source",
    ),
    ("multi-single-bad", VALIDATE, grader(multi({"type": "python", "name": "py"})), "grader.graders.source"),
    (
        "label-passing-not-in-labels",
        VALIDATE,
        grader(multi({"l": {**LABEL_MODEL, "passing_labels": ["meh"]}})),
        "grader.graders.l.passing_labels",
    ),
    (
        "label-passing-empty",
        VALIDATE,
        grader(multi({"l": {**LABEL_MODEL, "passing_labels": []}})),
        "grader.graders.l.passing_labels",
    ),
    (
        "label-labels-empty",
        VALIDATE,
        grader(multi({"l": {**LABEL_MODEL, "labels": []}})),
        "grader.graders.l.labels",
    ),
    ("run-no-sample", RUN, grader(STRING_CHECK), "model_sample"),
    ("run-sample-not-str", RUN, {**grader(STRING_CHECK), "model_sample": 5}, "model_sample"),
    ("run-item-not-object", RUN, {**grader(STRING_CHECK), "model_sample": "x", "item": "row"}, "item"),
    # uploads
    ("upload-filename-empty", UPLOAD, upload(filename=""), "filename"),
    ("upload-purpose", UPLOAD, upload(purpose="fine_tune"), "purpose"),
    ("upload-bytes-0", UPLOAD, upload(bytes=0), "bytes"),
    ("upload-bytes-over-8gb", UPLOAD, upload(bytes=MAX_UPLOAD_BYTES + 1), "bytes"),
    ("upload-bytes-bool", UPLOAD, upload(bytes=True), "bytes"),
    ("upload-bytes-str", UPLOAD, upload(bytes="1024"), "bytes"),
    ("upload-no-mime-type", UPLOAD, {k: v for k, v in upload().items() if k != "mime_type"}, "mime_type"),
    ("upload-expires-3599", UPLOAD, upload(expires_after={"seconds": 3599}), "expires_after.seconds"),
    ("upload-expires-30d+1", UPLOAD, upload(expires_after={"seconds": 2592001}), "expires_after.seconds"),
    (
        "upload-expires-anchor",
        UPLOAD,
        upload(expires_after={"anchor": "now", "seconds": 3600}),
        "expires_after.anchor",
    ),
    ("complete-no-parts", COMPLETE, {"part_ids": []}, "part_ids"),
    ("complete-parts-missing", COMPLETE, {}, "part_ids"),
    ("complete-blank-part", COMPLETE, {"part_ids": ["part_a", ""]}, "part_ids.1"),
    ("complete-md5", COMPLETE, {"part_ids": ["part_a"], "md5": "xyz"}, "md5"),
    ("expiration-seconds-bool", FileExpiration, {"seconds": True}, "seconds"),
    ("file-purpose", CreateFileRequest, {"purpose": "training"}, "purpose"),
    # checkpoint permissions
    ("permission-empty", PERMISSION, {"project_ids": []}, "project_ids"),
    ("permission-blank-id", PERMISSION, {"project_ids": [""]}, "project_ids.0"),
    ("permission-not-list", PERMISSION, {"project_ids": "proj_a"}, "project_ids"),
    ("permission-missing", PERMISSION, {}, "project_ids"),
]


@pytest.mark.parametrize(("model_cls", "data", "field"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused(model_cls: type[BaseModel], data: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(model_cls, data)
    error = caught.value
    assert error.field == field
    assert error.message.startswith("Invalid ")
    assert f"{field}: " in error.message
    # pydantic's union-member tags are not the user's field path
    for noise in ("literal[", "constrained-", "function-", "tagged-union", "single-grader", "named-graders"):
        assert noise not in error.message
    assert len(error.message) < 600


ACCEPTED: list[tuple[str, type[BaseModel], dict[str, Any]]] = [
    ("minimal-job", JOB, job()),
    ("model-fine-tuned", JOB, job(model="ft:gpt-4o-mini-2024-07-18:my-org:custom:7q8mpxmy")),
    ("model-with-slash", JOB, job(model="meta-llama/Llama-3.1-8B_v2")),
    ("validation-file", JOB, job(validation_file="file-valid")),
    ("n-epochs-1", JOB, supervised(n_epochs=1)),
    ("n-epochs-50", JOB, supervised(n_epochs=50)),
    ("all-auto", JOB, supervised(n_epochs="auto", batch_size="auto", learning_rate_multiplier="auto")),
    ("batch-size-1", JOB, supervised(batch_size=1)),
    ("batch-size-256", JOB, supervised(batch_size=256)),
    ("lr-tiny", JOB, supervised(learning_rate_multiplier=1e-9)),
    ("lr-int", JOB, supervised(learning_rate_multiplier=2)),
    ("empty-supervised", JOB, job(method={"type": "supervised"})),
    ("beta-2", JOB, dpo(beta=2)),
    ("beta-2.0", JOB, dpo(beta=2.0)),
    ("beta-tiny", JOB, dpo(beta=1e-9)),
    ("beta-auto", JOB, dpo(beta="auto", n_epochs=50)),
    ("compute-10", JOB, reinforcement(compute_multiplier=10)),
    ("compute-above-min", JOB, reinforcement(compute_multiplier=1.1e-5)),
    ("eval-1", JOB, reinforcement(eval_interval=1, eval_samples=1)),
    ("eval-auto", JOB, reinforcement(eval_interval="auto", eval_samples="auto")),
    ("reasoning-effort", JOB, reinforcement(reasoning_effort="high")),
    ("rl-python", JOB, reinforcement(PYTHON)),
    ("rl-score-model", JOB, reinforcement({**SCORE_MODEL, "range": [0, 10]})),
    ("rl-multi", JOB, reinforcement(multi({"exact": STRING_CHECK, "sim": TEXT_SIMILARITY}))),
    ("seed-0", JOB, job(seed=0)),
    ("seed-max", JOB, job(seed=2147483647)),
    ("suffix-1", JOB, job(suffix="s")),
    ("suffix-64", JOB, job(suffix="s" * 64)),
    ("metadata-16", JOB, job(metadata=metadata(16))),
    ("metadata-key-64-value-512", JOB, job(metadata={"k" * 64: "v" * 512})),
    ("metadata-empty", JOB, job(metadata={})),
    ("integrations-5", JOB, job(integrations=[{"type": "wandb", "wandb": {"project": "p"}}] * 5)),
    (
        "wandb-full",
        JOB,
        job(integrations=[{"wandb": {"project": "p", "name": "n", "entity": "e", "tags": ["a"]}}]),
    ),
    ("explicit-nones", JOB, job(validation_file=None, suffix=None, seed=None, method=None)),
    ("grader-string-check", VALIDATE, grader(STRING_CHECK)),
    ("grader-text-similarity", VALIDATE, grader(TEXT_SIMILARITY)),
    ("grader-python-image-tag", VALIDATE, grader({**PYTHON, "image_tag": "2025-05-08"})),
    ("grader-score-model", VALIDATE, grader({**SCORE_MODEL, "sampling_params": {"seed": 1}})),
    ("grader-multi-named", VALIDATE, grader(multi({"exact": STRING_CHECK, "label": LABEL_MODEL}))),
    ("grader-multi-single", VALIDATE, grader(multi(TEXT_SIMILARITY))),
    ("grader-multi-list", VALIDATE, grader(multi([STRING_CHECK, TEXT_SIMILARITY]))),
    ("run-grader", RUN, {**grader(STRING_CHECK), "model_sample": "yes", "item": {"label": "yes"}}),
    ("run-grader-empty-sample", RUN, {**grader(STRING_CHECK), "model_sample": ""}),
    ("upload-1-byte", UPLOAD, upload(bytes=1)),
    ("upload-8gb", UPLOAD, upload(bytes=MAX_UPLOAD_BYTES)),
    ("upload-expires-1h", UPLOAD, upload(expires_after={"anchor": "created_at", "seconds": 3600})),
    ("upload-expires-30d", UPLOAD, upload(expires_after={"seconds": 2592000})),
    ("complete", COMPLETE, {"part_ids": ["part_a", "part_b"], "md5": "d41d8cd98f00b204e9800998ecf8427e"}),
    ("permission", PERMISSION, {"project_ids": ["proj_a", "proj_b"]}),
    ("file", CreateFileRequest, {"purpose": "fine-tune", "expires_after": {"seconds": 86400}}),
]


@pytest.mark.parametrize(("model_cls", "data"), [r[1:] for r in ACCEPTED], ids=[r[0] for r in ACCEPTED])
def test_accepted(model_cls: type[models.RequestModel], data: dict[str, Any]) -> None:
    request = build_request(model_cls, data)
    body = request.to_body()
    json.dumps(body)
    assert _nones(body) == []


def _nones(value: Any, path: str = "$") -> list[str]:
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _nones(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in _nones(item, f"{path}[{index}]")]
    return [path] if value is None else []


# --- messages of build_request -------------------------------------------------------------------------


def test_message_names_the_path_and_the_value() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(CreateFineTuningJobRequest, supervised(n_epochs=51))
    assert caught.value.message == (
        "Invalid fine-tuning request: method.supervised.hyperparameters.n_epochs: "
        "Input should be less than or equal to 50 (got 51)"
    )
    assert str(caught.value) == caught.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "Input should be 'auto' or a valid integer (got True)"),
        ("max", "Input should be 'auto' or a valid integer (got 'max')"),
        (0, "Input should be greater than or equal to 1 (got 0)"),
    ],
    ids=["bool", "string", "range"],
)
def test_union_errors_read_as_one(value: Any, expected: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(CreateFineTuningJobRequest, supervised(batch_size=value))
    assert caught.value.message.endswith(f"{SH}.batch_size: {expected}")


def test_every_error_is_listed_and_the_first_is_the_field() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(CreateFineTuningJobRequest, job(suffix="", seed=-1, extra=1))
    error = caught.value
    assert error.field == "suffix"
    parts = error.message.removeprefix("Invalid fine-tuning request: ").split("; ")
    assert [part.split(":")[0] for part in parts] == ["suffix", "seed", "extra"]


def test_huge_values_are_truncated() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(CreateFineTuningJobRequest, job(model="x " * 10_000, suffix="y" * 10_000))
    message = caught.value.message
    assert len(message) < 400
    assert "..." in message
    assert "x " * 50 not in message


def test_validator_messages_have_no_pydantic_prefix() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(CreateFineTuningJobRequest, job(validation_file="file-train"))
    assert "Value error" not in caught.value.message
    assert "validation_file must differ from training_file" in caught.value.message


def test_metadata_message_names_the_key() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        build_request(CreateFineTuningJobRequest, job(metadata={"run": "v" * 600}))
    assert caught.value.field == "metadata"
    assert "metadata: " in caught.value.message
    assert "'run'" in caught.value.message
    with pytest.raises(InvalidRequestError, match="17 keys"):
        build_request(CreateFineTuningJobRequest, job(metadata=metadata(17)))


def test_request_labels() -> None:
    with pytest.raises(InvalidRequestError, match=r"^Invalid upload request: bytes"):
        build_request(CreateUploadRequest, upload(bytes=0))
    with pytest.raises(InvalidRequestError, match=r"^Invalid grader request: grader"):
        build_request(ValidateGraderRequest, {})
    with pytest.raises(InvalidRequestError, match=r"^Invalid checkpoint permission request"):
        build_request(CreateCheckpointPermissionRequest, {})


def test_keywords_win_over_the_mapping() -> None:
    request = build_request(CreateFineTuningJobRequest, job(seed=1), seed=2, suffix="s")
    assert (request.seed, request.suffix) == (2, "s")
    request = build_request(CreateFineTuningJobRequest, None, **BASE)
    assert request.model == BASE["model"]


def test_non_mapping_input_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="expected a mapping"):
        build_request(CreateFineTuningJobRequest, ["model"])  # type: ignore[arg-type]


def test_invalid_request_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="seed"):
        build_request(CreateFineTuningJobRequest, job(seed=-5))


# --- the job request's body ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [None, {"type": "supervised"}, {"type": "supervised", "supervised": {}}],
    ids=["no-method", "supervised-no-block", "supervised-empty-block"],
)
def test_deprecated_hyperparameters_move_into_method(method: dict[str, Any] | None) -> None:
    legacy = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 0.5}
    request = build_request(CreateFineTuningJobRequest, job(hyperparameters=legacy, method=method))
    assert request.hyperparameters is None
    body = request.to_body()
    assert "hyperparameters" not in body
    assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": legacy}}


def test_deprecated_hyperparameters_equal_to_method_ones_are_accepted() -> None:
    data = {**supervised(n_epochs=3), "hyperparameters": {"n_epochs": 3}}
    body = build_request(CreateFineTuningJobRequest, data).to_body()
    assert "hyperparameters" not in body
    assert body["method"]["supervised"]["hyperparameters"] == {"n_epochs": 3}


def test_deprecated_hyperparameters_do_not_touch_the_callers_method() -> None:
    method = MethodRequest(type="supervised")
    request = build_request(CreateFineTuningJobRequest, job(hyperparameters={"n_epochs": 2}, method=method))
    assert method.supervised is None
    assert request.method is not None
    assert request.method.supervised is not None


def test_body_is_json_without_nones() -> None:
    request = build_request(
        CreateFineTuningJobRequest,
        reinforcement(multi({"exact": STRING_CHECK, "label": LABEL_MODEL}), n_epochs="auto", eval_samples=4),
        validation_file="file-valid",
        seed=7,
        suffix="weekly",
        metadata={"team": "ml"},
        integrations=[{"wandb": {"project": "p"}}],
    )
    body = request.to_body()
    assert json.loads(json.dumps(body)) == body
    assert _nones(body) == []
    assert "hyperparameters" not in body
    assert body["method"]["reinforcement"]["hyperparameters"] == {"n_epochs": "auto", "eval_samples": 4}
    assert body["method"]["reinforcement"]["grader"]["graders"]["label"]["type"] == "label_model"
    assert body["integrations"] == [{"type": "wandb", "wandb": {"project": "p"}}]
    assert body["metadata"] == {"team": "ml"}


def test_only_given_hyperparameters_are_sent() -> None:
    body = build_request(CreateFineTuningJobRequest, dpo(beta=0.2)).to_body()
    assert body["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}


def test_graders_built_directly_have_their_type() -> None:
    assert StringCheckGrader(name="n", input="a", reference="b", operation="ne").to_body()["type"] == "string_check"
    assert PythonGrader(name="n", source="x").type == "python"
    request = build_request(ValidateGraderRequest, grader=TextSimilarityGrader.model_validate(TEXT_SIMILARITY))
    assert isinstance(request.grader, TextSimilarityGrader)


def test_file_form_fields() -> None:
    request = build_request(CreateFileRequest, expires_after={"seconds": 7200})
    assert request.to_form_fields() == {
        "purpose": "fine-tune",
        "expires_after[anchor]": "created_at",
        "expires_after[seconds]": "7200",
    }
    assert build_request(CreateFileRequest).to_form_fields() == {"purpose": "fine-tune"}


# --- statuses ------------------------------------------------------------------------------------------

KNOWN_STATUSES = [
    ("validating_files", False),
    ("queued", False),
    ("running", False),
    ("succeeded", True),
    ("failed", True),
    ("cancelled", True),
    ("pausing", False),
    ("paused", False),
    ("resuming", False),
    ("cancelling", False),
]


@pytest.mark.parametrize(("value", "terminal"), KNOWN_STATUSES, ids=[value for value, _ in KNOWN_STATUSES])
def test_known_statuses(value: str, terminal: bool) -> None:
    job = FineTuningJob.model_validate({"id": "ftjob-1", "status": value})
    assert job.status.value == value
    assert job.status.is_known()
    assert job.status.is_terminal() is terminal
    assert (job.status in TERMINAL_STATUSES) is terminal


def test_terminal_set() -> None:
    assert {status.value for status in TERMINAL_STATUSES} == {"succeeded", "failed", "cancelled"}
    assert FineTuningJobStatus.TERMINAL == TERMINAL_STATUSES
    assert isinstance(TERMINAL_STATUSES, frozenset)


@pytest.mark.parametrize("parse", ["python", "json"])
def test_unknown_status_parses_and_is_not_terminal(parse: str) -> None:
    data = {"id": "ftjob-1", "status": "brand_new"}
    job = FineTuningJob.model_validate_json(json.dumps(data)) if parse == "json" else FineTuningJob.model_validate(data)
    assert isinstance(job.status, FineTuningJobStatus)
    assert job.status.value == "brand_new"
    assert job.status == "brand_new"
    assert str(job.status) == "brand_new"
    assert not job.status.is_terminal()
    assert not job.status.is_known()
    assert job.model_dump(mode="json")["status"] == "brand_new"
    assert "brand_new" not in [status.value for status in FineTuningJobStatus]


def test_status_is_a_string() -> None:
    assert FineTuningJobStatus("succeeded") is FineTuningJobStatus.SUCCEEDED
    assert FineTuningJobStatus.PAUSED == "paused"
    assert f"{FineTuningJobStatus.RUNNING}" == "running"
    assert str(FineTuningJobStatus.FAILED) == "failed"


@pytest.mark.parametrize("value", [None, 3, ""], ids=["none", "int", "empty"])
def test_status_must_be_a_string(value: Any) -> None:
    if value == "":
        # an empty string is still a string: a pseudo-status, not terminal
        assert not FineTuningJob.model_validate({"id": "j", "status": value}).status.is_terminal()
        return
    with pytest.raises(ValueError, match="status"):
        FineTuningJob.model_validate({"id": "j", "status": value})


# --- tolerant responses --------------------------------------------------------------------------------


def test_minimal_job() -> None:
    job = FineTuningJob.model_validate({"id": "ftjob-1", "status": "queued"})
    assert job.result_files == []
    assert job.integrations == []
    assert job.error is None
    assert job.method_type == "supervised"


def test_unknown_fields_are_kept() -> None:
    job = FineTuningJob.model_validate(
        {
            "id": "ftjob-1",
            "status": "running",
            "usage_metrics": {"tokens": 3},
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 2, "warmup": 0.1}},
            },
        }
    )
    assert job.model_extra == {"usage_metrics": {"tokens": 3}}
    hyperparameters = job.method.supervised.hyperparameters
    assert hyperparameters.model_extra == {"warmup": 0.1}
    assert job.model_dump(mode="json")["usage_metrics"] == {"tokens": 3}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, None),
        ({}, None),
        ({"code": None, "message": None, "param": None}, None),
        ({"code": "", "message": ""}, None),
        (
            {"code": "invalid_training_file", "message": "Bad line 3", "param": "training_file"},
            "invalid_training_file",
        ),
        ({"message": "Out of credits"}, None),
    ],
    ids=["null", "empty", "all-null", "all-empty", "full", "message-only"],
)
def test_job_error(error: Any, expected: str | None) -> None:
    job = FineTuningJob.model_validate({"id": "j", "status": "failed", "error": error})
    if error and (error.get("code") or error.get("message")):
        assert isinstance(job.error, JobError)
        assert job.error.code == expected
    else:
        assert job.error is None


def test_nulls_where_lists_are_documented() -> None:
    job = FineTuningJob.model_validate(
        {"id": "j", "status": "queued", "result_files": None, "integrations": None, "metadata": None}
    )
    assert job.result_files == []
    assert job.integrations == []
    assert job.metadata is None


def test_response_hyperparameters_have_no_range() -> None:
    job = FineTuningJob.model_validate(
        {"id": "j", "status": "queued", "hyperparameters": {"n_epochs": 100, "batch_size": 1024, "beta": 5}}
    )
    assert job.hyperparameters.n_epochs == 100
    assert job.hyperparameters.beta == 5


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (None, "supervised"),
        ({"type": "dpo"}, "dpo"),
        ({"type": "distillation"}, "distillation"),
        ({"reinforcement": {"grader": STRING_CHECK}}, "reinforcement"),
        ({}, "supervised"),
    ],
    ids=["none", "dpo", "future", "block-only", "empty"],
)
def test_method_type(method: Any, expected: str) -> None:
    assert FineTuningJob.model_validate({"id": "j", "status": "queued", "method": method}).method_type == expected


@pytest.mark.parametrize(
    ("value", "expected_type"),
    [
        (STRING_CHECK, StringCheckGrader),
        (multi({"exact": STRING_CHECK}), MultiGrader),
        (LABEL_MODEL, LabelModelGrader),
        ({"type": "endpoint", "name": "e", "url": "https://grader.example"}, dict),
        ({**STRING_CHECK, "case_sensitive": False}, dict),  # a new field on a known grader
        ({**STRING_CHECK, "operation": "regex"}, dict),  # a new operation
        ({"name": "no type"}, dict),
    ],
    ids=["string-check", "multi", "label-model", "unknown-type", "new-field", "new-operation", "no-type"],
)
def test_unknown_graders_in_responses_still_parse(value: dict[str, Any], expected_type: type) -> None:
    method = ReinforcementMethod.model_validate({"grader": value})
    assert type(method.grader) is expected_type
    validation = GraderValidation.model_validate({"grader": value})
    assert type(validation.grader) is expected_type
    if expected_type is dict:
        assert validation.grader == value
    job = FineTuningJob.model_validate(
        {
            "id": "j",
            "status": "running",
            "method": {"type": "reinforcement", "reinforcement": {"grader": value}},
        }
    )
    assert job.model_dump(mode="json")["method"]["reinforcement"]["grader"] == value


def test_event_shapes() -> None:
    event = FineTuningJobEvent.model_validate(
        {"id": "ev", "level": "warning", "message": "m", "data": None, "type": "metrics", "new": 1}
    )
    assert (event.level, event.data, event.type) == ("warning", None, "metrics")
    assert event.model_extra == {"new": 1}
    assert FineTuningJobEvent.model_validate({"id": "ev"}).message == ""


def test_checkpoint_metrics() -> None:
    checkpoint = FineTuningJobCheckpoint.model_validate(
        {"id": "ck", "metrics": {"step": 10, "train_loss": 0.5, "reward": 0.9}, "step_number": 10}
    )
    assert checkpoint.metrics.train_loss == 0.5
    assert checkpoint.metrics.valid_loss is None
    assert checkpoint.metrics.model_extra == {"reward": 0.9}
    assert FineTuningJobCheckpoint.model_validate({"id": "ck", "metrics": None}).metrics.step is None
    assert FineTuningJobCheckpoint.model_validate({"id": "ck"}).metrics.model_dump(exclude_none=True) == {}


def test_grader_run_errors() -> None:
    errors = GraderRunErrors.model_validate({"other_error": False, "sample_parse_error": True, "new_error": True})
    assert errors.failed() == ["new_error", "sample_parse_error"]


# --- pages ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ({"data": [{"id": "a"}, {"id": "b"}], "first_id": "a", "last_id": "b", "has_more": True}, "b"),
        ({"data": [{"id": "a"}, {"id": "b"}], "has_more": True}, "b"),
        ({"data": [{"id": "a"}], "last_id": None}, "a"),
        ({"data": []}, None),
        ({"data": None}, None),
        ({}, None),
    ],
    ids=["last-id", "no-last-id", "null-last-id", "empty", "null-data", "no-data"],
)
def test_page_next_after(page: dict[str, Any], expected: str | None) -> None:
    parsed = Page[FineTuningJobEvent].model_validate({"object": "list", **page})
    assert parsed.next_after == expected


def test_page_items_are_models_and_extras_kept() -> None:
    page = Page[FineTuningJob].model_validate(
        {"object": "list", "data": [{"id": "j", "status": "paused"}], "has_more": False, "total": 1}
    )
    assert isinstance(page.data[0], FineTuningJob)
    assert page.data[0].status is FineTuningJobStatus.PAUSED
    assert page.model_extra == {"total": 1}
    assert page.has_more is False


# --- module surface ------------------------------------------------------------------------------------


def test_public_names() -> None:
    for name in models.__all__:
        assert hasattr(models, name), name
    assert "build_request" in models.__all__


def test_a_page_of_jobs_is_parsed_without_building_its_raw_json_as_python_objects() -> None:
    """The poller's pages: the fields a job state ignores never become dicts and lists, even for a moment.

    A validator that ran before parsing (to read a ``null`` list as empty) made pydantic build the whole raw
    page as Python objects first (about 190 KB for this page, then dropped); whatever of it was alive when a
    young collection came aged into the oldest generation, and brought the full collections that stall a
    triggerer's loop. The page's parse may hold, at its peak, hardly more than what it returns.
    """
    import json
    import tracemalloc

    raw = {
        "object": "fine_tuning.job",
        "model": "gpt-4o-mini-2024-07-18",
        "status": "running",
        "created_at": 1_700_000_000,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        "hyperparameters": {"n_epochs": 3},
        "result_files": None,
        "integrations": [],
        "training_file": "file-abc",
        "organization_id": "org-123",
    }
    body = json.dumps(
        {"object": "list", "data": [dict(raw, id=f"ftjob-{i}") for i in range(100)], "has_more": False}
    ).encode()
    Page[JobState].model_validate_json(body)  # pydantic's own first-use work, not the parse's
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        page = Page[JobState].model_validate_json(body)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        if not tracing:
            tracemalloc.stop()
    assert len(page.data) == 100
    assert peak - current < 16 * 1024  # the raw page would be about 190 KB
    assert Page[JobState].model_validate_json(b'{"data": null}').data == []
    first_job = json.loads(body)["data"][0]
    assert FineTuningJob.model_validate_json(json.dumps(first_job)).result_files == []
