"""The foundation models the Bedrock dialect customizes: customization types, dataset format, hyperparameters.

Hyperparameters are strings (``ModelCustomizationHyperParameters`` is a string-to-string map); each model
takes its own names, ranges and defaults, as the Bedrock user guide lists them. ``epochCount`` and
``batchSize`` drive the simulated trainer's step count; the others are checked, then kept as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BASE_MODELS", "BedrockBaseModel", "HyperParameter", "find_bedrock_model"]

FINE_TUNING = "FINE_TUNING"
CONTINUED_PRE_TRAINING = "CONTINUED_PRE_TRAINING"
DISTILLATION = "DISTILLATION"
REINFORCEMENT_FINE_TUNING = "REINFORCEMENT_FINE_TUNING"


@dataclass(frozen=True)
class HyperParameter:
    """One hyperparameter of a model: its range and default.

    :param low: smallest value.
    :param high: largest value.
    :param default: the value when the request leaves it out.
    :param integer: whether it takes whole numbers only.
    """

    low: float
    high: float
    default: str
    integer: bool = True


_TITAN = {
    "epochCount": HyperParameter(1, 10, "5"),
    "batchSize": HyperParameter(1, 64, "1"),
    "learningRate": HyperParameter(0.0, 1.0, "0.00001", integer=False),
    "learningRateWarmupSteps": HyperParameter(0, 250, "5"),
}
_NOVA = {
    "epochCount": HyperParameter(1, 5, "2"),
    "learningRate": HyperParameter(1e-6, 1e-4, "0.00001", integer=False),
    "learningRateWarmupSteps": HyperParameter(0, 100, "10"),
}
_LLAMA = {
    "epochCount": HyperParameter(1, 10, "5"),
    "batchSize": HyperParameter(1, 1, "1"),
    "learningRate": HyperParameter(5e-6, 0.1, "0.0001", integer=False),
}
_CLAUDE = {
    "epochCount": HyperParameter(1, 10, "2"),
    "batchSize": HyperParameter(4, 256, "32"),
    "learningRateMultiplier": HyperParameter(0.1, 2.0, "1.0", integer=False),
    "earlyStoppingThreshold": HyperParameter(0.0, 0.1, "0.001", integer=False),
    "earlyStoppingPatience": HyperParameter(1, 10, "2"),
}


@dataclass(frozen=True)
class BedrockBaseModel:
    """A foundation model that can be customized.

    :param model_id: its id, as in ``baseModelIdentifier`` (its ARN names it too).
    :param customizations: the customization types it takes.
    :param data_format: the record format of its fine-tuning data: ``prompt_completion`` or ``conversation``.
    :param hyperparameters: the hyperparameters it takes, by name.
    """

    model_id: str
    customizations: tuple[str, ...]
    data_format: str
    hyperparameters: dict[str, HyperParameter] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The model's name without its version suffix (``amazon.nova-micro-v1``)."""
        return self.model_id.split(":")[0]


#: The customizable foundation models.
BASE_MODELS: tuple[BedrockBaseModel, ...] = (
    BedrockBaseModel(
        "amazon.titan-text-express-v1:0:8k", (FINE_TUNING, CONTINUED_PRE_TRAINING), "prompt_completion", _TITAN
    ),
    BedrockBaseModel(
        "amazon.titan-text-lite-v1:0:4k", (FINE_TUNING, CONTINUED_PRE_TRAINING), "prompt_completion", _TITAN
    ),
    BedrockBaseModel("amazon.nova-micro-v1:0:128k", (FINE_TUNING, DISTILLATION), "conversation", _NOVA),
    BedrockBaseModel("amazon.nova-lite-v1:0:300k", (FINE_TUNING, DISTILLATION), "conversation", _NOVA),
    BedrockBaseModel("amazon.nova-pro-v1:0:300k", (FINE_TUNING, DISTILLATION), "conversation", _NOVA),
    BedrockBaseModel("amazon.nova-2-lite-v1:0:256k", (FINE_TUNING, REINFORCEMENT_FINE_TUNING), "conversation", _NOVA),
    BedrockBaseModel("meta.llama3-1-8b-instruct-v1:0:128k", (FINE_TUNING, DISTILLATION), "prompt_completion", _LLAMA),
    BedrockBaseModel("meta.llama3-1-70b-instruct-v1:0:128k", (FINE_TUNING, DISTILLATION), "prompt_completion", _LLAMA),
    BedrockBaseModel(
        "anthropic.claude-3-haiku-20240307-v1:0:200k", (FINE_TUNING, DISTILLATION), "conversation", _CLAUDE
    ),
)

_BY_ID = {model.model_id: model for model in BASE_MODELS}


def find_bedrock_model(identifier: str) -> BedrockBaseModel | None:
    """The customizable model an identifier (model id or foundation-model ARN) names, if any."""
    model_id = identifier.split(":foundation-model/", 1)[1] if ":foundation-model/" in identifier else identifier
    return _BY_ID.get(model_id)
