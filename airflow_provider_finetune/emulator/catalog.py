"""The base models the emulator fine-tunes and serves, with their aliases and methods."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BASE_MODELS", "BaseModelInfo", "find_base_model"]


@dataclass(frozen=True)
class BaseModelInfo:
    """A base model.

    :param id: the dated snapshot name jobs report (``gpt-4o-mini-2024-07-18``).
    :param aliases: names that resolve to it (``gpt-4o-mini``).
    :param methods: the fine-tuning methods it takes.
    :param legacy: whether it trains on prompt-completion files instead of chat files.
    :param created: when it was published (the ``created`` of ``GET /models``).
    """

    id: str
    aliases: tuple[str, ...]
    methods: tuple[str, ...]
    legacy: bool = False
    created: int = 1_700_000_000


#: The models ``GET /models`` lists and ``POST /fine_tuning/jobs`` accepts (besides fine-tuned ones).
BASE_MODELS: tuple[BaseModelInfo, ...] = (
    BaseModelInfo("gpt-4o-mini-2024-07-18", ("gpt-4o-mini",), ("supervised", "dpo"), created=1721172717),
    BaseModelInfo("gpt-4o-2024-08-06", ("gpt-4o",), ("supervised", "dpo"), created=1722814719),
    BaseModelInfo("gpt-4.1-2025-04-14", ("gpt-4.1",), ("supervised", "dpo"), created=1744315746),
    BaseModelInfo("gpt-4.1-mini-2025-04-14", ("gpt-4.1-mini",), ("supervised", "dpo"), created=1744317547),
    BaseModelInfo("gpt-4.1-nano-2025-04-14", ("gpt-4.1-nano",), ("supervised", "dpo"), created=1744321025),
    BaseModelInfo("gpt-3.5-turbo-0125", ("gpt-3.5-turbo",), ("supervised",), created=1706048358),
    BaseModelInfo("o4-mini-2025-04-16", ("o4-mini",), ("reinforcement",), created=1744133506),
    BaseModelInfo("babbage-002", (), ("supervised",), legacy=True, created=1692634615),
    BaseModelInfo("davinci-002", (), ("supervised",), legacy=True, created=1692634301),
)

_BY_NAME: dict[str, BaseModelInfo] = {name: model for model in BASE_MODELS for name in (model.id, *model.aliases)}


def find_base_model(name: str) -> BaseModelInfo | None:
    """Return the base model a name or alias stands for, or ``None``."""
    return _BY_NAME.get(name)
