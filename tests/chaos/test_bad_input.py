"""Bad input: refused before any request, with the exact message the user sees, and every error one clear line.

* one table over every constraint of the create request and of the other operators, run through the
  operators' ``execute`` (the mocked service records any request: there must be none);
* training files through the upload operator: each refused with its line and reason, nothing uploaded;
* connection problems against the emulator: wrong key, no admin key, unknown job, unreachable host, missing
  connection; each a clear one-line message, sent once where retrying cannot help;
* property-based tests: any input to the request models (and to the operators that build them) either
  validates or fails with ``InvalidRequestError``, never with another exception.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import respx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from airflow_provider_finetune.emulator import EmulatorConfig
from airflow_provider_finetune.exceptions import (
    AuthenticationError,
    FineTuningConnectionError,
    FineTuningError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from airflow_provider_finetune.hooks.finetune import TASK_TAG_KEY
from airflow_provider_finetune.models import (
    CompleteUploadRequest,
    CreateCheckpointPermissionRequest,
    CreateFileRequest,
    CreateFineTuningJobRequest,
    CreateUploadRequest,
    RunGraderRequest,
    ValidateGraderRequest,
    build_request,
)
from airflow_provider_finetune.operators.finetune import (
    FineTuningCheckpointPermissionOperator,
    FineTuningCheckpointPermissionRevokeOperator,
    FineTuningFileUploadOperator,
    FineTuningGraderRunOperator,
    FineTuningGraderValidateOperator,
    FineTuningJobCancelOperator,
    FineTuningJobOperator,
    FineTuningJobPauseOperator,
    FineTuningJobResumeOperator,
)
from airflow_provider_finetune.rules.once import REQUEST_KEY
from airflow_provider_finetune.training_data import TrainingDataError
from airflow_provider_finetune.triggers.finetune import FineTuningJobTrigger
from tests.chaos.conftest import (
    MODEL,
    Emulator,
    FakeTI,
    assert_one_clear_line,
    dag_bag,
    free_port,
    run_trigger,
    serving,
    set_connection,
)
from tests.hooks.conftest import GRADER, FakeAPI

CHECKPOINT = f"ft:{MODEL}:org:sfx:abc12345:ckpt-step-10"
LABEL_MODEL = {
    "type": "label_model",
    "name": "label",
    "model": "gpt-4o-mini",
    "input": [{"role": "user", "content": "Label {{item.text}}"}],
    "labels": ["good", "bad"],
    "passing_labels": ["good"],
}
GRADER_TAGS = "'string_check', 'text_similarity', 'python', 'score_model'"


def create(**kwargs: Any) -> FineTuningJobOperator:
    return FineTuningJobOperator(**{"task_id": "fine_tune", "model": MODEL, "training_file": "file-abc", **kwargs})


def supervised(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


def dpo(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


def reinforcement(grader: Any = GRADER, **hyperparameters: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"grader": grader}
    if hyperparameters:
        block["hyperparameters"] = hyperparameters
    return {"type": "reinforcement", "reinforcement": block}


def multi(graders: Any) -> dict[str, Any]:
    return {"type": "multi", "name": "m", "calculate_output": "a", "graders": graders}


JOB = "Invalid fine-tuning request: "
HP = "method.supervised.hyperparameters"
RL = "method.reinforcement"
GRADER_REQUEST = "Invalid grader request: "

# (id, the operator as the DAG gives it, the field named, the exact message)
BAD_INPUT: list[tuple[str, Callable[[], Any], str, str]] = [
    # -- the create request: model -----------------------------------------------------------------------------
    ("model-empty", lambda: create(model=""), "model", JOB + "model: must not be empty"),
    (
        "model-space",
        lambda: create(model="gpt 4o"),
        "model",
        JOB + "model: 'gpt 4o' is not a model name (letters, digits and . _ : - / only, no spaces)",
    ),
    (
        "model-unknown-character",
        lambda: create(model="gpt-4o$mini"),
        "model",
        JOB + "model: 'gpt-4o$mini' is not a model name (letters, digits and . _ : - / only, no spaces)",
    ),
    (
        "model-non-ascii",
        lambda: create(model="gpt-4ö"),
        "model",
        JOB + "model: 'gpt-4ö' is not a model name (letters, digits and . _ : - / only, no spaces)",
    ),
    ("model-not-text", lambda: create(model=123), "model", JOB + "model: Input should be a valid string (got 123)"),
    # -- files ---------------------------------------------------------------------------------------------------
    (
        "training-file-empty",
        lambda: create(training_file=""),
        "training_file",
        JOB + "training_file: must be a non-empty id without spaces (got '')",
    ),
    ("training-file-none", lambda: create(training_file=None), "training_file", JOB + "training_file: Field required"),
    (
        "training-file-space",
        lambda: create(training_file="file abc"),
        "training_file",
        JOB + "training_file: must be a non-empty id without spaces (got 'file abc')",
    ),
    (
        "validation-file-space",
        lambda: create(validation_file="file x"),
        "validation_file",
        JOB + "validation_file: must be a non-empty id without spaces (got 'file x')",
    ),
    (
        "validation-file-same",
        lambda: create(validation_file="file-abc"),
        "validation_file",
        JOB + "validation_file: validation_file must differ from training_file (the same file was given)",
    ),
    # -- suffix and seed -----------------------------------------------------------------------------------------
    (
        "suffix-65",
        lambda: create(suffix="s" * 65),
        "suffix",
        JOB + "suffix: String should have at most 64 characters (got '" + "s" * 65 + "')",
    ),
    ("suffix-not-text", lambda: create(suffix=7), "suffix", JOB + "suffix: Input should be a valid string (got 7)"),
    (
        "seed-negative",
        lambda: create(seed=-1),
        "seed",
        JOB + "seed: Input should be greater than or equal to 0 (got -1)",
    ),
    (
        "seed-2**31",
        lambda: create(seed=2**31),
        "seed",
        JOB + "seed: Input should be less than or equal to 2147483647 (got 2147483648)",
    ),
    (
        "seed-templated-negative",
        lambda: create(seed="-5"),
        "seed",
        JOB + "seed: Input should be greater than or equal to 0 (got -5)",
    ),
    ("seed-text", lambda: create(seed="abc"), "seed", JOB + "seed: Input should be a valid integer (got 'abc')"),
    ("seed-fraction", lambda: create(seed=1.5), "seed", JOB + "seed: Input should be a valid integer (got 1.5)"),
    # -- metadata sizes (the task's tag and the request's fingerprint take two of the 16 places) -------------------
    (
        "metadata-15-keys",
        lambda: create(metadata={f"k{i}": "v" for i in range(15)}),
        "metadata",
        JOB + f"metadata: 15 keys given, at most 14 are allowed (the other 2 are the provider's own: "
        f"{REQUEST_KEY}, {TASK_TAG_KEY})",
    ),
    (
        "metadata-17-keys",
        lambda: create(metadata={f"k{i}": "v" for i in range(17)}),
        "metadata",
        JOB + f"metadata: 17 keys given, at most 14 are allowed (the other 2 are the provider's own: "
        f"{REQUEST_KEY}, {TASK_TAG_KEY})",
    ),
    (
        "metadata-key-65",
        lambda: create(metadata={"k" * 65: "v"}),
        "metadata",
        JOB + "metadata: key '" + "k" * 65 + "' must be 1 to 64 characters",
    ),
    (
        "metadata-key-empty",
        lambda: create(metadata={"": "v"}),
        "metadata",
        JOB + "metadata: key '' must be 1 to 64 characters",
    ),
    (
        "metadata-value-513",
        lambda: create(metadata={"k": "v" * 513}),
        "metadata",
        JOB + "metadata: the value of key 'k' is 513 characters long, at most 512 are allowed",
    ),
    (
        "metadata-value-number",
        lambda: create(metadata={"k": 1}),
        "metadata.k",
        JOB + "metadata.k: Input should be a valid string (got 1)",
    ),
    # -- hyperparameter ranges -----------------------------------------------------------------------------------
    (
        "n_epochs-0",
        lambda: create(method=supervised(n_epochs=0)),
        f"{HP}.n_epochs",
        JOB + f"{HP}.n_epochs: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "n_epochs-51",
        lambda: create(method=supervised(n_epochs=51)),
        f"{HP}.n_epochs",
        JOB + f"{HP}.n_epochs: Input should be less than or equal to 50 (got 51)",
    ),
    (
        "n_epochs-text",
        lambda: create(method=supervised(n_epochs="many")),
        f"{HP}.n_epochs",
        JOB + f"{HP}.n_epochs: Input should be 'auto' or a valid integer (got 'many')",
    ),
    (
        "batch_size-0",
        lambda: create(method=supervised(batch_size=0)),
        f"{HP}.batch_size",
        JOB + f"{HP}.batch_size: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "batch_size-257",
        lambda: create(method=supervised(batch_size=257)),
        f"{HP}.batch_size",
        JOB + f"{HP}.batch_size: Input should be less than or equal to 256 (got 257)",
    ),
    (
        "learning_rate-0",
        lambda: create(method=supervised(learning_rate_multiplier=0)),
        f"{HP}.learning_rate_multiplier",
        JOB + f"{HP}.learning_rate_multiplier: Input should be greater than 0 (got 0)",
    ),
    (
        "learning_rate-templated-negative",
        lambda: create(hyperparameters={"learning_rate_multiplier": "-0.5"}),  # the deprecated top-level ones
        "hyperparameters.learning_rate_multiplier",
        JOB + "hyperparameters.learning_rate_multiplier: Input should be greater than 0 (got -0.5)",
    ),
    (
        "beta-0",
        lambda: create(method=dpo(beta=0)),
        "method.dpo.hyperparameters.beta",
        JOB + "method.dpo.hyperparameters.beta: Input should be greater than 0 (got 0)",
    ),
    (
        "beta-3",
        lambda: create(method=dpo(beta=3)),
        "method.dpo.hyperparameters.beta",
        JOB + "method.dpo.hyperparameters.beta: Input should be less than or equal to 2 (got 3)",
    ),
    (
        "compute_multiplier-0",
        lambda: create(method=reinforcement(compute_multiplier=0)),
        f"{RL}.hyperparameters.compute_multiplier",
        JOB + f"{RL}.hyperparameters.compute_multiplier: Input should be greater than 0.00001 (got 0)",
    ),
    (
        "compute_multiplier-11",
        lambda: create(method=reinforcement(compute_multiplier=11)),
        f"{RL}.hyperparameters.compute_multiplier",
        JOB + f"{RL}.hyperparameters.compute_multiplier: Input should be less than or equal to 10 (got 11)",
    ),
    (
        "eval_interval-0",
        lambda: create(method=reinforcement(eval_interval=0)),
        f"{RL}.hyperparameters.eval_interval",
        JOB + f"{RL}.hyperparameters.eval_interval: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "eval_samples-0",
        lambda: create(method=reinforcement(eval_samples=0)),
        f"{RL}.hyperparameters.eval_samples",
        JOB + f"{RL}.hyperparameters.eval_samples: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "reasoning_effort-max",
        lambda: create(method=reinforcement(reasoning_effort="max")),
        f"{RL}.hyperparameters.reasoning_effort",
        JOB
        + f"{RL}.hyperparameters.reasoning_effort: Input should be 'default', 'low', 'medium' or 'high' (got 'max')",
    ),
    (
        "hyperparameter-unknown",
        lambda: create(method=supervised(epochs=3)),
        f"{HP}.epochs",
        JOB + f"{HP}.epochs: Extra inputs are not permitted (got 3)",
    ),
    (
        "hyperparameter-of-another-method",
        lambda: create(method=supervised(beta=0.1)),
        f"{HP}.beta",
        JOB + f"{HP}.beta: Extra inputs are not permitted (got 0.1)",
    ),
    (
        "hyperparameters-deprecated-conflict",
        lambda: create(hyperparameters={"n_epochs": 2}, method=dpo(beta=0.1)),
        "hyperparameters",
        JOB + "hyperparameters: the deprecated top-level hyperparameters conflict with method 'dpo'; "
        "give them only as method.dpo.hyperparameters",
    ),
    # -- method blocks and graders -------------------------------------------------------------------------------
    (
        "method-type-unknown",
        lambda: create(method={"type": "rlhf"}),
        "method.type",
        JOB + "method.type: Input should be 'supervised', 'dpo' or 'reinforcement' (got 'rlhf')",
    ),
    (
        "method-type-missing",
        lambda: create(method={"supervised": {}}),
        "method.type",
        JOB + "method.type: Field required",
    ),
    (
        "method-block-of-another-type",
        lambda: create(method={"type": "supervised", "dpo": {}}),
        "method.dpo",
        JOB + "method.dpo: a 'dpo' block does not go with method type 'supervised'; set type to 'dpo'",
    ),
    (
        "method-not-a-mapping",
        lambda: create(method="supervised"),
        "method",
        JOB + "method: Input should be a valid dictionary or instance of MethodRequest (got 'supervised')",
    ),
    (
        "grader-missing",
        lambda: create(method={"type": "reinforcement"}),
        f"{RL}.grader",
        JOB + f"{RL}.grader: reinforcement fine-tuning needs a grader",
    ),
    (
        "grader-missing-in-block",
        lambda: create(method={"type": "reinforcement", "reinforcement": {}}),
        f"{RL}.grader",
        JOB + f"{RL}.grader: reinforcement fine-tuning needs a grader",
    ),
    (
        "grader-field-missing",
        lambda: create(method=reinforcement({k: v for k, v in GRADER.items() if k != "reference"})),
        f"{RL}.grader.reference",
        JOB + f"{RL}.grader.reference: Field required",
    ),
    (
        "grader-operation-unknown",
        lambda: create(method=reinforcement({**GRADER, "operation": "contains"})),
        f"{RL}.grader.operation",
        JOB + f"{RL}.grader.operation: Input should be 'eq', 'ne', 'like' or 'ilike' (got 'contains')",
    ),
    (
        "grader-label-model-alone",
        lambda: create(method=reinforcement(LABEL_MODEL)),
        f"{RL}.grader",
        JOB + f"{RL}.grader: Input tag 'label_model' found using 'type' does not match any of the expected tags: "
        f"{GRADER_TAGS}, 'multi'; a label_model grader goes only among a multi grader's graders "
        "(got {'type': 'label_model', 'name': 'label', 'model': 'gpt-4o-mini', 'input': [{'...)",
    ),
    (
        "grader-python-blank",
        lambda: create(method=reinforcement({"type": "python", "name": "p", "source": "  "})),
        f"{RL}.grader.source",
        JOB + f"{RL}.grader.source: must not be empty or blank (got '  ')",
    ),
    # -- integrations --------------------------------------------------------------------------------------------
    (
        "integrations-6",
        lambda: create(integrations=[{"type": "wandb", "wandb": {"project": "p"}}] * 6),
        "integrations",
        JOB + "integrations: List should have at most 5 items after validation, not 6 (got [{'type': 'wandb', "
        "'wandb': {'project': 'p'}}, {'type': 'wandb', 'wandb': {'p...)",
    ),
    (
        "integration-blank-project",
        lambda: create(integrations=[{"type": "wandb", "wandb": {"project": " "}}]),
        "integrations.0.wandb.project",
        JOB + "integrations.0.wandb.project: must not be empty or blank (got ' ')",
    ),
    # -- the job actions: empty ids ------------------------------------------------------------------------------
    (
        "cancel-empty-id",
        lambda: FineTuningJobCancelOperator(task_id="cancel", job_id=""),
        "job_id",
        "job_id must be a non-empty string, got ''",
    ),
    (
        "cancel-blank-id",
        lambda: FineTuningJobCancelOperator(task_id="cancel", job_id="  "),
        "job_id",
        "job_id must be a non-empty string, got '  '",
    ),
    (
        "pause-empty-id",
        lambda: FineTuningJobPauseOperator(task_id="pause", job_id=""),
        "job_id",
        "job_id must be a non-empty string, got ''",
    ),
    (
        "resume-none-id",
        lambda: FineTuningJobResumeOperator(task_id="resume", job_id=None),
        "job_id",
        "job_id must be a non-empty string, got None",
    ),
    # -- checkpoint permissions ----------------------------------------------------------------------------------
    (
        "grant-no-projects",
        lambda: FineTuningCheckpointPermissionOperator(task_id="grant", checkpoint=CHECKPOINT, project_ids=[]),
        "project_ids",
        "Invalid checkpoint permission request: project_ids: List should have at least 1 item after validation, "
        "not 0 (got [])",
    ),
    (
        "grant-empty-project",
        lambda: FineTuningCheckpointPermissionOperator(task_id="grant", checkpoint=CHECKPOINT, project_ids=[""]),
        "project_ids",
        "project_ids must be a list of non-empty strings, got ['']",
    ),
    (
        "grant-project-with-space",
        lambda: FineTuningCheckpointPermissionOperator(task_id="grant", checkpoint=CHECKPOINT, project_ids="proj a"),
        "project_ids.0",
        "Invalid checkpoint permission request: project_ids.0: must be a non-empty id without spaces (got 'proj a')",
    ),
    (
        "grant-empty-checkpoint",
        lambda: FineTuningCheckpointPermissionOperator(task_id="grant", checkpoint="", project_ids=["proj_a"]),
        "checkpoint",
        "checkpoint must be a fine-tuned model checkpoint name, got ''",
    ),
    (
        "revoke-empty-checkpoint",
        lambda: FineTuningCheckpointPermissionRevokeOperator(task_id="revoke", checkpoint=" ", project_ids=["p"]),
        "checkpoint",
        "checkpoint must be a fine-tuned model checkpoint name, got ' '",
    ),
    (
        "revoke-empty-permission-id",
        lambda: FineTuningCheckpointPermissionRevokeOperator(
            task_id="revoke", checkpoint=CHECKPOINT, permission_ids=[""]
        ),
        "permission_ids",
        "permission_ids must be a list of non-empty strings, got ['']",
    ),
    # -- graders -------------------------------------------------------------------------------------------------
    (
        "validate-grader-not-json",
        lambda: FineTuningGraderValidateOperator(task_id="check", grader="{not json"),
        "grader",
        "grader is not a JSON object: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ),
    (
        "validate-grader-type-unknown",
        lambda: FineTuningGraderValidateOperator(task_id="check", grader={"type": "regex", "name": "g"}),
        "grader",
        GRADER_REQUEST + "grader: Input tag 'regex' found using 'type' does not match any of the expected tags: "
        f"{GRADER_TAGS}, 'multi' (got {{'type': 'regex', 'name': 'g'}})",
    ),
    (
        "validate-grader-fields-missing",
        lambda: FineTuningGraderValidateOperator(task_id="check", grader={"type": "string_check", "name": "g"}),
        "grader.input",
        GRADER_REQUEST + "grader.input: Field required; grader.reference: Field required; "
        "grader.operation: Field required",
    ),
    (
        "validate-grader-multi-nested",
        lambda: FineTuningGraderValidateOperator(task_id="check", grader=multi({"a": multi({"b": GRADER})})),
        "grader.graders.a",
        GRADER_REQUEST + "grader.graders.a: Input tag 'multi' found using 'type' does not match any of the expected "
        f"tags: {GRADER_TAGS}, 'label_model'; multi graders do not nest (got {{'type': 'multi', 'name': 'm', "
        "'calculate_output': 'a', 'graders': {'b': {'ty...)",
    ),
    (
        "validate-grader-passing-label-unknown",
        lambda: FineTuningGraderValidateOperator(
            task_id="check", grader=multi({"a": {**LABEL_MODEL, "passing_labels": ["great"]}})
        ),
        "grader.graders.a.passing_labels",
        GRADER_REQUEST + "grader.graders.a.passing_labels: passing_labels ['great'] are not among labels "
        "['good', 'bad']",
    ),
    (
        "validate-grader-range-reversed",
        lambda: FineTuningGraderValidateOperator(
            task_id="check",
            grader={"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user"}], "range": [1, 0]},
        ),
        "grader.range",
        GRADER_REQUEST + "grader.range: range must be two numbers [low, high] with low < high, got [1.0, 0.0]",
    ),
    (
        "validate-grader-multi-empty",
        lambda: FineTuningGraderValidateOperator(task_id="check", grader=multi({})),
        "grader.graders",
        GRADER_REQUEST + "grader.graders: a multi grader needs at least one grader",
    ),
    (
        "run-grader-no-samples",
        lambda: FineTuningGraderRunOperator(task_id="run", grader=GRADER, samples=[]),
        "samples",
        "samples must be a non-empty list, got []",
    ),
    (
        "run-grader-sample-not-a-mapping",
        lambda: FineTuningGraderRunOperator(task_id="run", grader=GRADER, samples=["yes"]),
        "samples[0]",
        "samples[0] must be a mapping, got str",
    ),
    (
        "run-grader-sample-unknown-key",
        lambda: FineTuningGraderRunOperator(task_id="run", grader=GRADER, samples=[{"output": "yes"}]),
        "samples[0]",
        "samples[0] has unknown keys output; a sample has model_sample and item",
    ),
    (
        "run-grader-sample-not-text",
        lambda: FineTuningGraderRunOperator(task_id="run", grader=GRADER, samples=[{"model_sample": 1}]),
        "samples[0].model_sample",
        "samples[0]: " + GRADER_REQUEST + "model_sample: Input should be a valid string (got 1)",
    ),
    (
        "run-grader-bad-grader",
        lambda: FineTuningGraderRunOperator(
            task_id="run", grader={"type": "string_check", "name": "g"}, samples=[{"model_sample": "x"}]
        ),
        "grader.input",
        GRADER_REQUEST + "grader.input: Field required; grader.reference: Field required; "
        "grader.operation: Field required",
    ),
    # -- uploads -------------------------------------------------------------------------------------------------
    (
        "upload-method-unknown",
        lambda: FineTuningFileUploadOperator(task_id="upload", source="train.jsonl", method="rlhf"),
        "method",
        "method must be one of supervised, dpo, reinforcement, got 'rlhf'",
    ),
    (
        "upload-file-missing",
        lambda: FineTuningFileUploadOperator(task_id="upload", source="/nonexistent/train.jsonl"),
        "source",
        "cannot read /nonexistent/train.jsonl: No such file or directory",
    ),
    (
        "upload-source-not-a-file",
        lambda: FineTuningFileUploadOperator(task_id="upload", source=42),
        "source",
        "source must be a path, a URL or an object with open(), got int",
    ),
]


@pytest.mark.parametrize(("make", "field", "message"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_before_any_request_with_the_exact_message(
    api: FakeAPI, context: dict[str, Any], make: Callable[[], Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        make().execute(context)
    assert assert_one_clear_line(info.value) == message
    assert info.value.field == field
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, OSError)
    assert api.requests == []
    assert api.router.calls.call_count == 0


# -- training files ------------------------------------------------------------------------------------------------

CHAT = {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}
PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "Hi"}]},
    "preferred_output": [{"role": "assistant", "content": "Hello!"}],
    "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
}
GOOD = json.dumps(CHAT).encode()
GOOD_PREFERENCE = json.dumps(PREFERENCE).encode()


def lines(*first: bytes, good: bytes = GOOD, count: int = 11) -> bytes:
    """Some lines, then good ones: enough examples that only the bad lines are reported."""
    return b"\n".join([*first, *[good] * count]) + b"\n"


def without(key: str) -> bytes:
    return json.dumps({k: v for k, v in PREFERENCE.items() if k != key}).encode()


def chat(*messages: dict[str, Any]) -> bytes:
    return json.dumps({"messages": list(messages)}, ensure_ascii=False).encode()


USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}
MAX_LINE = 4 * 1024 * 1024  # the upload operator's limit (the validator's default)
OVERSIZED = chat({"role": "user", "content": "x" * MAX_LINE}, ASSISTANT)

# (id, method, file content, the issues as (line, field, reason))
BAD_FILES: list[tuple[str, str, bytes, list[tuple[int | None, str | None, str]]]] = [
    ("not-json", "supervised", lines(b'{"messages": ['), [(1, None, "not valid JSON (Expecting value: column 15)")]),
    ("not-an-object", "supervised", lines(b"[1, 2]"), [(1, None, "must be a JSON object, not array")]),
    ("empty-line", "supervised", b"\n".join([GOOD] * 3 + [b""] + [GOOD] * 9) + b"\n", [(4, None, "empty line")]),
    ("blank-line", "supervised", b"\n".join([GOOD] * 3 + [b" \t "] + [GOOD] * 9) + b"\n", [(4, None, "empty line")]),
    (
        "wrong-role",
        "supervised",
        lines(GOOD, chat({"role": "human", "content": "hi"}, ASSISTANT)),
        [(2, "messages[0].role", "'human' is not one of system, developer, user, assistant, tool, function")],
    ),
    (
        "no-assistant-message",
        "supervised",
        lines(chat(USER)),
        [(1, "messages", "no assistant message to learn from")],
    ),
    (
        "fewer-than-10-examples",
        "supervised",
        b"\n".join([GOOD] * 9) + b"\n",
        [(None, None, "the file has 9 examples; at least 10 are required")],
    ),
    (
        "preference-without-non-preferred",
        "dpo",
        lines(without("non_preferred_output"), good=GOOD_PREFERENCE),
        [(1, "non_preferred_output", "a preference line needs both preferred_output and non_preferred_output")],
    ),
    (
        "preference-without-preferred",
        "dpo",
        lines(GOOD_PREFERENCE, GOOD_PREFERENCE, without("preferred_output"), good=GOOD_PREFERENCE),
        [(3, "preferred_output", "a preference line needs both preferred_output and non_preferred_output")],
    ),
    (
        "oversized-line",
        "supervised",
        lines(GOOD, OVERSIZED),
        [(2, None, f"line is {len(OVERSIZED)} bytes; at most {MAX_LINE}")],
    ),
    (
        "latin-1",
        "supervised",
        lines(chat({"role": "user", "content": "café"}, ASSISTANT).decode().encode("latin-1")),
        [(1, None, "not UTF-8 text (byte 0xe9 at column 47)")],
    ),
]


@pytest.mark.parametrize(("method", "content", "issues"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_training_file_is_refused_with_its_lines_before_upload(
    api: FakeAPI, context: dict[str, Any], tmp_path: Path, method: str, content: bytes, issues: list[Any]
) -> None:
    source = tmp_path / "train.jsonl"
    source.write_bytes(content)
    with pytest.raises(TrainingDataError) as info:
        FineTuningFileUploadOperator(task_id="upload", source=source, method=method).execute(context)
    error = info.value
    assert [(i.line, i.field, i.message) for i in error.issues] == issues
    shown = "; ".join(str(issue) for issue in error.issues)
    assert assert_one_clear_line(error) == f"train.jsonl is not valid {method} training data: {shown}"
    assert error.field == "training_file"
    assert api.requests == []
    assert context["ti"].xcoms == {}


def test_a_utf16_file_is_refused_on_its_first_line(api: FakeAPI, context: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "train.jsonl"
    source.write_bytes("\n".join([json.dumps(CHAT)] * 12).encode("utf-16"))
    with pytest.raises(TrainingDataError) as info:
        FineTuningFileUploadOperator(task_id="upload", source=source).execute(context)
    text = assert_one_clear_line(info.value)
    assert text.startswith("train.jsonl is not valid supervised training data: line 1: not UTF-8 text (byte 0xff")
    assert text.endswith("(and 7 more problems)")
    assert api.requests == []


# -- connection problems, against the emulator ---------------------------------------------------------------------

GET_JOB = "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}"
LIST_JOBS = "GET /v1/fine_tuning/jobs"
REQUEST_ID = r" \(request id: req_[0-9a-f]{32}\)"


@pytest.fixture
def ti_context() -> dict[str, Any]:
    """A task context, without pointing the default connection anywhere (the emulator fixture does)."""
    return {"ti": FakeTI()}


def assert_api_error(error: FineTuningError, pattern: str) -> None:
    text = assert_one_clear_line(error)
    assert re.fullmatch(pattern + REQUEST_ID, text), text
    # The service's answer says it all: no chained traceback of the HTTP library under it.
    assert error.__cause__ is None
    assert error.__suppress_context__


@pytest.mark.integration
def test_a_wrong_key_is_a_401_sent_once(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, ti_context: dict[str, Any]
) -> None:
    set_connection(monkeypatch, "finetune_wrong", emulator.base_url, "sk-wrong-key-0000")
    with pytest.raises(AuthenticationError) as info:
        create(finetune_conn_id="finetune_wrong").execute(ti_context)
    assert_api_error(info.value, re.escape("401 [invalid_api_key] Incorrect API key provided."))
    assert emulator.counters()["requests"] == {LIST_JOBS: 1}  # the tag lookup, once; no create


@pytest.mark.integration
def test_permissions_without_an_admin_key_are_a_403_sent_once(
    monkeypatch: pytest.MonkeyPatch, ti_context: dict[str, Any]
) -> None:
    config = EmulatorConfig(api_key="sk-user-5ecret", admin_key="sk-admin-5ecret")
    with serving(config) as server:
        set_connection(monkeypatch, "finetune_default", server.base_url, "sk-user-5ecret")
        op = FineTuningCheckpointPermissionOperator(task_id="grant", checkpoint=CHECKPOINT, project_ids=["proj_a"])
        with pytest.raises(PermissionDeniedError) as info:
            op.execute(ti_context)  # type: ignore[arg-type]
        counters = server.emulator.counters.as_dict()
    assert_api_error(
        info.value,
        re.escape(
            "403 [insufficient_permissions] You have insufficient permissions for this operation: "
            "checkpoint permissions need an admin API key."
        ),
    )
    assert counters["requests"] == {"GET /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions": 1}


@pytest.mark.integration
def test_an_unknown_job_is_a_404_sent_once(emulator: Emulator, ti_context: dict[str, Any]) -> None:
    with pytest.raises(NotFoundError) as info:
        FineTuningJobCancelOperator(task_id="cancel", job_id="ftjob-nope").execute(ti_context)  # type: ignore[arg-type]
    assert_api_error(
        info.value,
        re.escape("404 [fine_tune_not_found] Could not find fine-tuning job: ftjob-nope (param: fine_tuning_job_id)"),
    )
    assert emulator.counters()["requests"] == {GET_JOB: 1}


@pytest.mark.integration
def test_a_deferred_wait_on_an_unknown_job_ends_at_once_with_the_404(
    emulator: Emulator, ti_context: dict[str, Any]
) -> None:
    (event,) = run_trigger(FineTuningJobTrigger("ftjob-nope", poll_interval=0.1))
    assert event["status"] == "error"
    with pytest.raises(FineTuningError) as info:
        create(deferrable=True).execute_complete(ti_context, event)  # type: ignore[arg-type]
    text = assert_one_clear_line(info.value)
    assert re.fullmatch(
        re.escape("Could not read job ftjob-nope: 404 [fine_tune_not_found] Could not find fine-tuning job: ")
        + re.escape("ftjob-nope (param: fine_tuning_job_id)")
        + REQUEST_ID,
        text,
    ), text
    # One listing (the job is not among the newest), one read by id: no retry, no second poll.
    assert emulator.counters()["requests"] == {"GET /v1/fine_tuning/jobs": 1, GET_JOB: 1}


@pytest.mark.integration
def test_an_unreachable_host_names_the_host(monkeypatch: pytest.MonkeyPatch, ti_context: dict[str, Any]) -> None:
    port = free_port()  # nothing listens there
    set_connection(monkeypatch, "finetune_default", f"http://127.0.0.1:{port}/v1", "sk-x-5ecret", max_retries=1)
    with pytest.raises(FineTuningConnectionError) as info:
        FineTuningJobCancelOperator(task_id="cancel", job_id="ftjob-1").execute(ti_context)  # type: ignore[arg-type]
    text = assert_one_clear_line(info.value)
    assert text == (
        f"GET http://127.0.0.1:{port}/v1/fine_tuning/jobs/ftjob-1 failed: ConnectError: [Errno 111] Connection refused"
    )


@pytest.mark.integration
def test_a_missing_connection_fails_the_task_naming_it(
    chaos_airflow_db: None, capfd: pytest.CaptureFixture[str]
) -> None:
    run = dag_bag().get_dag("ft_missing_connection").test()
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {"cancel": "failed"}
    out, err = capfd.readouterr()
    assert "The conn_id `finetune_missing` isn't defined" in out + err


def test_a_deferred_wait_whose_connection_is_missing_fires_an_error_event() -> None:
    events = run_trigger(FineTuningJobTrigger("ftjob-1", finetune_conn_id="finetune_missing", poll_interval=0.1))
    assert [e["status"] for e in events] == ["error"]
    assert "finetune_missing" in events[0]["message"]


# -- property-based: any input validates or fails with InvalidRequestError ----------------------------------------
# Each field draws a valid value or anything at all, so that whole requests come out valid often enough to
# check that a valid request is accepted and round-trips, and invalid ones in every combination.

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=300)
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["auto", "3", "-0.5", "1e400", "nan", "", " ", "file-abc", MODEL, "ft:x:y::z"])
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


def valid_or_not(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, anything)


auto = st.just("auto")
VALID_HYPERPARAMETERS: dict[str, st.SearchStrategy[Any]] = {
    "n_epochs": auto | st.integers(1, 50),
    "batch_size": auto | st.integers(1, 256),
    "learning_rate_multiplier": auto | st.integers(1, 5) | st.floats(min_value=1e-6, max_value=10),
}
VALID_DPO = {**VALID_HYPERPARAMETERS, "beta": auto | st.floats(min_value=1e-6, max_value=2)}
VALID_REINFORCEMENT = {
    **VALID_HYPERPARAMETERS,
    "reasoning_effort": st.sampled_from(["default", "low", "medium", "high"]),
    "compute_multiplier": auto | st.floats(min_value=1e-4, max_value=10),
    "eval_interval": auto | st.integers(1, 100),
    "eval_samples": auto | st.integers(1, 100),
}


def hyperparameters(valid: dict[str, st.SearchStrategy[Any]], *, junk: bool = True) -> st.SearchStrategy[Any]:
    values = {name: valid_or_not(value) if junk else value for name, value in valid.items()}
    return st.fixed_dictionaries({}, optional=values)


sub_graders = st.sampled_from(
    [
        GRADER,
        LABEL_MODEL,
        {"type": "python", "name": "p", "source": "def grade(s, i):\n    return 1.0\n"},
        {"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": "bleu"},
        {"type": "score_model", "name": "s", "model": "m", "input": [{"role": "user"}], "range": [0, 1]},
    ]
)
valid_graders = sub_graders.filter(lambda g: g["type"] != "label_model") | st.builds(
    lambda graders: {"type": "multi", "name": "m", "graders": graders, "calculate_output": "a"},
    st.dictionaries(st.sampled_from(["a", "b"]), sub_graders, min_size=1) | st.lists(sub_graders, min_size=1),
)
graders = st.one_of(
    valid_graders,
    valid_graders,
    st.builds(lambda g, extra: {**g, **extra}, sub_graders, st.dictionaries(st.sampled_from(list(GRADER)), anything)),
    st.builds(
        lambda graders, formula: {"type": "multi", "name": "m", "graders": graders, "calculate_output": formula},
        st.dictionaries(st.text(max_size=4), graders_any := sub_graders | anything, max_size=3)
        | st.lists(graders_any, max_size=3),
        st.text(max_size=6),
    ),
    st.dictionaries(st.sampled_from(["type", "name", "input", "graders", "source"]), anything, max_size=4),
    anything,
)
methods = valid_or_not(
    st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("supervised")}, optional={"supervised": st.fixed_dictionaries({}, optional={
                "hyperparameters": hyperparameters(VALID_HYPERPARAMETERS)})}),
        st.fixed_dictionaries(
            {"type": st.just("dpo")}, optional={"dpo": st.fixed_dictionaries({}, optional={
                "hyperparameters": hyperparameters(VALID_DPO)})}),
        st.fixed_dictionaries(
            {"type": st.just("reinforcement"), "reinforcement": st.fixed_dictionaries(
                {"grader": graders}, optional={"hyperparameters": hyperparameters(VALID_REINFORCEMENT)})}),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["supervised", "dpo", "reinforcement", "rlhf"])},
            optional={"supervised": anything, "dpo": anything, "reinforcement": anything},
        ),
    )
)  # fmt: skip
job_fields: dict[str, st.SearchStrategy[Any]] = {
    "model": valid_or_not(st.sampled_from([MODEL, "gpt-4o-mini", "ft:gpt-4o-mini:org::abc", "org/Llama-3.1_8B"])),
    "training_file": valid_or_not(st.just("file-abc")),
    "validation_file": valid_or_not(st.just("file-def")),
    "suffix": valid_or_not(st.text(min_size=1, max_size=64)),
    "seed": valid_or_not(st.integers(0, 2**31 - 1)),
    "method": methods,
    "hyperparameters": valid_or_not(hyperparameters(VALID_HYPERPARAMETERS)),
    "metadata": valid_or_not(
        st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=512), max_size=16)
        | st.dictionaries(st.text(max_size=70), st.text(max_size=600) | scalars, max_size=18)
    ),
    "integrations": valid_or_not(
        st.lists(
            st.fixed_dictionaries(
                {"wandb": st.fixed_dictionaries({"project": st.text(min_size=1, max_size=5).filter(str.strip)})},
                optional={"type": st.just("wandb")},
            ),
            max_size=5,
        )
    ),
}
job_requests = st.fixed_dictionaries(
    {"model": job_fields["model"], "training_file": job_fields["training_file"]},
    optional={**{k: v for k, v in job_fields.items() if k not in ("model", "training_file")}, "unknown": anything},
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def built_or_refused(model_cls: type[Any], data: Any) -> Any:
    """Build a request: a model whose body validates again, or ``None`` after an ``InvalidRequestError``."""
    try:
        request = build_request(model_cls, data)
    except InvalidRequestError as err:
        refused = err
    else:
        refused = None
    if refused is not None:
        assert refused.message.startswith("Invalid ")
        event(f"{model_cls.__name__} refused")
        return None
    event(f"{model_cls.__name__} valid")
    body = request.to_body()
    assert build_request(model_cls, json.loads(json.dumps(body))).to_body() == body
    return request


@PROPERTY
@given(job_requests)
def test_any_create_request_validates_or_is_refused(data: dict[str, Any]) -> None:
    built_or_refused(CreateFineTuningJobRequest, data)


@PROPERTY
@given(
    st.fixed_dictionaries(
        {"model": job_fields["model"].filter(lambda v: v in (MODEL, "gpt-4o-mini")), "training_file": st.just("f-1")},
        optional={
            "suffix": st.text(min_size=1, max_size=64),
            "seed": st.integers(0, 2**31 - 1),
            "method": st.fixed_dictionaries(
                {"type": st.just("dpo")},
                optional={
                    "dpo": st.fixed_dictionaries({"hyperparameters": st.fixed_dictionaries({}, optional=VALID_DPO)})
                },
            )
            | st.fixed_dictionaries(
                {"type": st.just("reinforcement"), "reinforcement": st.fixed_dictionaries({"grader": valid_graders})}
            ),
            "metadata": st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=512), max_size=16),
        },
    )
)
def test_any_valid_create_request_is_accepted(data: dict[str, Any]) -> None:
    assert built_or_refused(CreateFineTuningJobRequest, data) is not None


@PROPERTY
@given(
    st.sampled_from([ValidateGraderRequest, RunGraderRequest]),
    st.fixed_dictionaries(
        {"grader": graders},
        optional={
            "model_sample": valid_or_not(st.text(max_size=10)),
            "item": valid_or_not(st.dictionaries(st.text(max_size=4), anything)),
        },
    ),
)
def test_any_grader_request_validates_or_is_refused(model_cls: type[Any], data: dict[str, Any]) -> None:
    if model_cls is ValidateGraderRequest:
        data = {k: v for k, v in data.items() if k == "grader"}
    built_or_refused(model_cls, data)


valid_ids = st.text(alphabet="abcdefghij_-0123456789", min_size=1, max_size=12)
OTHER_REQUESTS: dict[type[Any], st.SearchStrategy[dict[str, Any]]] = {
    CreateUploadRequest: st.fixed_dictionaries(
        {
            "filename": valid_or_not(st.text(min_size=1, max_size=10).filter(str.strip)),
            "purpose": valid_or_not(st.sampled_from(["fine-tune", "batch", "assistants", "vision"])),
            "bytes": valid_or_not(st.integers(1, 8 * 1024**3)),
            "mime_type": valid_or_not(st.just("text/jsonl")),
        },
        optional={"expires_after": valid_or_not(st.fixed_dictionaries({"seconds": st.integers(3600, 2_592_000)}))},
    ),
    CompleteUploadRequest: st.fixed_dictionaries(
        {"part_ids": valid_or_not(st.lists(valid_ids, min_size=1, max_size=3))},
        optional={"md5": valid_or_not(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32))},
    ),
    CreateCheckpointPermissionRequest: st.fixed_dictionaries(
        {"project_ids": valid_or_not(st.lists(valid_ids, min_size=1, max_size=3))}
    ),
    CreateFileRequest: st.fixed_dictionaries(
        {},
        optional={
            "purpose": valid_or_not(st.sampled_from(["fine-tune", "batch", "evals", "user_data"])),
            "expires_after": valid_or_not(st.fixed_dictionaries({"seconds": st.integers(3600, 2_592_000)})),
        },
    ),
}


@PROPERTY
@given(st.sampled_from(list(OTHER_REQUESTS)).flatmap(lambda cls: st.tuples(st.just(cls), OTHER_REQUESTS[cls])))
def test_any_other_request_validates_or_is_refused(case: tuple[type[Any], dict[str, Any]]) -> None:
    built_or_refused(*case)


@PROPERTY
@given(st.fixed_dictionaries({}, optional=job_fields))
def test_any_operator_arguments_build_a_request_or_are_refused(fields: dict[str, Any]) -> None:
    # As a DAG renders them: numbers may come as text, empty values mean "not given".
    op = FineTuningJobOperator(task_id="fine_tune", **{"model": MODEL, "training_file": "file-abc", **fields})
    try:
        request = op.build_request()
    except InvalidRequestError:
        event("refused")
        return
    event("valid")
    assert isinstance(request, CreateFineTuningJobRequest)


samples = valid_or_not(
    st.lists(
        st.fixed_dictionaries(
            {"model_sample": valid_or_not(st.text(max_size=8))},
            optional={"item": valid_or_not(st.dictionaries(st.sampled_from(["label", "text"]), st.text(max_size=4)))},
        ),
        min_size=1,
        max_size=3,
    )
)


@PROPERTY
@given(graders | graders.map(json.dumps) | st.text(max_size=20), samples)
def test_any_grader_operator_arguments_are_checked_or_refused(grader: Any, samples: Any) -> None:
    conn = {"conn_type": "finetune", "host": "https://api.test/v1", "password": "sk-5ecret"}
    conn["extra"] = {"max_retries": 0}
    with (
        mock.patch.dict(os.environ, {"AIRFLOW_CONN_FINETUNE_DEFAULT": json.dumps(conn)}),
        respx.mock(assert_all_called=False) as router,
    ):
        router.post(url__regex=r"/graders/").mock(side_effect=httpx.ConnectError("no service in this test"))
        for op in (
            FineTuningGraderValidateOperator(task_id="check", grader=grader),
            FineTuningGraderRunOperator(task_id="run", grader=grader, samples=samples),
        ):
            sent = router.calls.call_count
            try:
                op.execute({"ti": FakeTI()})  # type: ignore[arg-type]
            except InvalidRequestError:
                assert router.calls.call_count == sent  # refused: nothing was sent
                event(f"{op.task_id}: refused")
            except FineTuningConnectionError:
                assert router.calls.call_count == sent + 1  # valid: it went on to the (absent) service
                event(f"{op.task_id}: sent")
            op.hook.close()


def test_the_deferred_create_refuses_bad_input_before_deferring(api: FakeAPI, context: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        create(deferrable=True, seed=-1).execute(context)
    assert api.requests == []


def test_an_unexpected_trigger_event_is_refused_clearly(api: FakeAPI, context: dict[str, Any]) -> None:
    with pytest.raises(FineTuningError) as info:
        create(deferrable=True).execute_complete(context, {"status": "succeeded"})
    assert assert_one_clear_line(info.value) == "Unexpected trigger event: {'status': 'succeeded'}"
    assert api.requests == []
