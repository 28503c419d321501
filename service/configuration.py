"""One config style for every part: the error an invalid config raises, and the base of the config dataclasses.

    @dataclass
    class RewardConfig(DataclassConfig):
        lr: float = field(default=6e-5, metadata={"help": "Peak learning rate of AdamW."})

        def checks(self) -> list[Check]:
            return [("lr", self.lr > 0, "must be > 0")]

    RewardConfig(lr=-1)                       # ConfigError: invalid RewardConfig value(s): lr=-1: must be > 0
    config.save(path); RewardConfig.load(path)

Every config (``RewardConfig``, ``ExportConfig``, ``PolicyConfig`` and the pydantic ``ServiceSettings``)
documents each field where it is declared (dataclass ``metadata={"help": ...}``, pydantic
``Field(description=...)``), raises :class:`ConfigError` naming the field when a value is invalid, and
is turned into command-line options by ``cli/options.py``, so a field is written once. A field marked
``metadata={"run_control": True}`` says how and where a run executes rather than what it learns: it may
differ when a run resumes, and the CLI lists it under its own heading.

It lives in ``service/`` because the service settings raise the same error and ``service/`` never
imports ``training/``; like ``bundle`` and ``encoding``, training imports it from here. torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

from pydantic import ValidationError

Check = tuple[str, bool, str]  # (field, holds, what the field must satisfy)


class ConfigError(ValueError):
    """An invalid config value or config file; ``fields`` names the offending fields (empty for a file)."""

    def __init__(self, message: str, fields: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


def settings_error(exc: ValidationError, title: str, secrets: Iterable[str] = ()) -> ConfigError:
    """A pydantic ValidationError as a ConfigError that names each field and what it must be.

    The values of ``secrets`` fields are never quoted: the message ends up in logs."""
    hidden = set(secrets)
    problems, names = [], []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        if name:
            value = "<secret>" if name in hidden else repr(error.get("input"))
            names.append(name)
            problems.append(f"{name}={value}: {error['msg']}")
        else:  # a check across fields (model validator): its message names them
            problems.append(str(error["msg"]).removeprefix("Value error, "))
    return ConfigError(f"invalid {title} value(s): {'; '.join(problems)}", names)


class DataclassConfig:
    """Base of the config dataclasses: validation after init, JSON load/save, help texts.

    A subclass is a ``@dataclass`` whose fields carry ``metadata={"help": ...}`` and which lists its
    rules in :meth:`checks`; every rule that does not hold is reported in one ConfigError.
    """

    def __post_init__(self) -> None:
        self.validate()

    def checks(self) -> list[Check]:
        """(field, holds, rule) for every rule this config must satisfy."""
        return []

    def validate(self) -> None:
        bad = [(name, rule) for name, holds, rule in self.checks() if not holds]
        if bad:
            problems = "; ".join(f"{name}={getattr(self, name)!r}: {rule}" for name, rule in bad)
            raise ConfigError(f"invalid {type(self).__name__} value(s): {problems}", [n for n, _ in bad])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}", unknown)
        return cls(**values)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Self:
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: cannot read a {cls.__name__} ({err})") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(values)

    @classmethod
    def help_texts(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def run_control_fields(cls) -> frozenset[str]:
        """Fields that say how and where a run executes, not what it learns: they may change on resume."""
        return frozenset(
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.metadata.get("run_control")
        )
