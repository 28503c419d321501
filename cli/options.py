"""Command-line options generated from a config's fields, so each knob is written once: in its config.

    REWARD = ConfigOptions(RewardConfig, flags={"disable_dropout": Flag(off="--keep-dropout")})

    @REWARD.command
    def train_rm_command(given: dict[str, Any], out: Annotated[Path, typer.Option()] = Path("runs/rm")):
        config = REWARD.build(given)           # RewardConfig(**given); a ConfigError names the flag

Each field of a config dataclass (``metadata={"help": ...}``) or of a pydantic settings model
(``Field(description=...)``) becomes one typer option: ``--field-name``, the field's type, its default
(shown in --help) and its help text. Fields marked ``run_control`` are listed under their own heading.
:class:`Flag` records what the command line adds to a field: a flag name kept from before the options
were generated (``--threads`` for ``intra_op_threads``), a bool's off switch, a different parsed type.

The decorated command receives, as its first argument, only the options given on the command line
(or through their env var), already converted to field values: what was not given is left to the
config's own defaults, to the environment (service settings) or to a checkpoint's config (``--resume``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import types
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

import typer
from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from service.configuration import ConfigError

RUN_CONTROL_PANEL = "Run control (may change on --resume)"
_CONTEXT = "typer_context"  # typer passes the click context to a parameter annotated typer.Context
_SCALARS = (str, int, float, bool, Path)


@dataclass(frozen=True)
class Flag:
    """What the command line adds to one field; every part is optional."""

    names: tuple[str, ...] = ()  # flag names kept from before (listed first); --field-name is added
    off: str | None = None  # a bool's off switch when it is not --no-<name>
    type: Any = None  # the type typer parses when it is not the field's (e.g. a comma-separated str)
    parse: Callable[[Any], Any] | None = None  # the parsed value -> the field's value
    help: str = ""  # appended to the field's help: what only the command line needs saying
    envvar: str | None = None  # read by the CLI itself (not by the config)
    required: bool = False


@dataclass(frozen=True)
class FieldSpec:
    """One config field as the generator sees it, from a dataclass or a pydantic model."""

    name: str
    type: Any  # resolved annotation
    has_default: bool  # False when a factory computes it (it may import torch): not shown
    default: Any
    help: str
    run_control: bool


def config_fields(config: type) -> Iterator[FieldSpec]:
    """The fields of a config dataclass or pydantic model, in declaration order."""
    if issubclass(config, BaseModel):
        for name, info in config.model_fields.items():
            if not info.description:
                raise TypeError(f"{config.__name__}.{name} has no description (its --help text)")
            has_default = info.default is not PydanticUndefined
            default = info.default if has_default else None
            yield FieldSpec(name, info.annotation, has_default, default, info.description, run_control=False)
        return
    namespace = vars(sys.modules[config.__module__])
    for f in dataclasses.fields(cast(Any, config)):
        if "help" not in f.metadata:
            raise TypeError(f"{config.__name__}.{f.name} has no help metadata (its --help text)")
        has_default = f.default is not dataclasses.MISSING
        yield FieldSpec(
            f.name,
            _LazyType(f.type, namespace) if isinstance(f.type, str) else f.type,
            has_default,
            f.default if has_default else None,
            f.metadata["help"],
            bool(f.metadata.get("run_control")),
        )


@dataclass(frozen=True)
class _LazyType:
    """A string annotation (``from __future__ import annotations``), resolved only for fields that get a
    flag: an excluded field may name a type its module imports only for type checkers."""

    source: str
    namespace: Mapping[str, Any]

    def resolve(self) -> Any:
        return eval(self.source, dict(self.namespace))  # what typing.get_type_hints does, field by field


def cli_type(annotation: Any) -> Any:
    """The type typer parses for a field annotation; Optional is added by the caller."""
    if isinstance(annotation, _LazyType):
        annotation = annotation.resolve()
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return cli_type(inner[0])
    elif origin is Literal:
        return type(args[0])  # the config validates the choice: one place
    elif origin is list and len(args) == 1:
        return list[cli_type(args[0])]  # type: ignore[misc]
    elif annotation is SecretStr:
        return str
    elif annotation in _SCALARS:
        return annotation
    raise TypeError(f"no command-line type for {annotation!r}: give the field a Flag(type=..., parse=...)")


class ConfigOptions:
    """The typer options of one config class: every field but ``exclude``, shaped by ``flags``.

    ``env_prefix`` (pydantic settings) adds the field's environment variable to its help."""

    def __init__(
        self,
        config: type,
        *,
        flags: Mapping[str, Flag] | None = None,
        exclude: Collection[str] = (),
        env_prefix: str | None = None,
    ) -> None:
        self.config = config
        self.flags = dict(flags or {})
        self.specs = [spec for spec in config_fields(config) if spec.name not in exclude]
        unknown = set(self.flags) - {spec.name for spec in self.specs}
        if unknown:
            raise TypeError(f"flags for fields {config.__name__} does not expose: {sorted(unknown)}")
        self.env_prefix = env_prefix
        self.parameters = [self._parameter(spec) for spec in self.specs]

    def flag(self, name: str) -> str:
        """The flag a user types for field ``name`` (the kept name when there is one)."""
        flag = self.flags.get(name, Flag())
        return flag.names[0] if flag.names else "--" + name.replace("_", "-")

    def build(self, given: Mapping[str, Any]) -> Any:
        """``config(**given)``; an invalid value becomes a usage error naming its flag (exit code 2)."""
        try:
            return self.config(**given)
        except ConfigError as err:
            raise self.usage_error(err) from err

    def usage_error(self, err: ConfigError) -> typer.BadParameter:
        hint = ", ".join(self.flag(name) for name in err.fields if self._has(name))
        return typer.BadParameter(str(err), param_hint=hint or None)

    def given(self, values: Mapping[str, Any], ctx: typer.Context | None = None) -> dict[str, Any]:
        """The options given on the command line or by env var (not left at their default), as field values.

        Without a context (a direct Python call) every value counts as given."""
        given = {}
        for name, value in values.items():
            source = ctx.get_parameter_source(name) if ctx is not None else None
            if ctx is not None and (source is None or source.name == "DEFAULT"):
                continue
            parse = self.flags.get(name, Flag()).parse
            given[name] = parse(value) if parse is not None and value is not None else value
        return given

    def command(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Give ``func(given, **own_options)`` one extra option per field; typer sees the combined signature."""
        own = list(inspect.signature(func, eval_str=True).parameters.values())[1:]  # [0] receives `given`
        clash = {p.name for p in own} & {p.name for p in self.parameters}
        if clash:
            raise TypeError(f"{func.__name__} declares options the config generates: {sorted(clash)}")
        names = [p.name for p in self.parameters]

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            ctx = kwargs.pop(_CONTEXT)
            values = {name: kwargs.pop(name) for name in names}
            return func(self.given(values, ctx), **kwargs)

        context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        params = [context, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own), *self.parameters]
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must read the generated signature, not the original one
        return wrapper

    def _has(self, name: str) -> bool:
        return any(spec.name == name for spec in self.specs)

    def _parameter(self, spec: FieldSpec) -> inspect.Parameter:
        flag = self.flags.get(spec.name, Flag())
        kind = flag.type or cli_type(spec.type)
        help_text = " ".join(part for part in (spec.help, flag.help) if part)
        if self.env_prefix:
            help_text += f" (env {self.env_prefix}{spec.name.upper()})"
        option = typer.Option(
            *self._decls(spec.name, flag, kind),
            help=help_text,
            envvar=flag.envvar,
            show_default=spec.has_default and spec.default is not None,
            rich_help_panel=RUN_CONTROL_PANEL if spec.run_control else None,
        )
        default = ... if flag.required else (spec.default if spec.has_default else None)
        return inspect.Parameter(
            spec.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=Annotated[kind | None, option],
        )

    @staticmethod
    def _decls(name: str, flag: Flag, kind: Any) -> list[str]:
        own = "--" + name.replace("_", "-")
        names = list(dict.fromkeys([*flag.names, own]))
        if kind is bool:
            if len(flag.names) > 1:
                raise TypeError(f"a bool option takes one kept name, got {flag.names} for {name}")
            return [f"{names[0]}/{flag.off or '--no-' + names[0].removeprefix('--')}"]
        return names
