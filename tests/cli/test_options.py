"""The option generator: one typer option per config field, only given options reach the config."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from typer.testing import CliRunner

from cli.options import RUN_CONTROL_PANEL, ConfigOptions, Flag, cli_type, config_fields
from service.configuration import Check, DataclassConfig

WIDE = {"COLUMNS": "250"}


@dataclass
class ToyConfig(DataclassConfig):
    rate: float = field(default=0.5, metadata={"help": "A rate."})
    mode: str = field(default="fast", metadata={"help": "fast | slow."})
    label: str | None = field(default=None, metadata={"help": "An optional label."})
    on: bool = field(default=True, metadata={"help": "A switch."})
    names: list[str] = field(default_factory=lambda: ["a"], metadata={"help": "Names, comma-separated."})
    threads: int = field(default=1, metadata={"help": "Threads.", "run_control": True})

    def checks(self) -> list[Check]:
        return [
            ("rate", 0 < self.rate <= 1, "must be in (0, 1]"),
            ("mode", self.mode in ("fast", "slow"), "fast or slow"),
        ]


TOY = ConfigOptions(
    ToyConfig,
    flags={
        "rate": Flag(names=("--r",)),
        "on": Flag(off="--off"),
        "names": Flag(type=str, parse=lambda s: s.split(","), help="e.g. a,b"),
        "threads": Flag(envvar="TOY_THREADS"),
    },
)


def _app(options: ConfigOptions, seen: list[tuple[dict[str, Any], Any]]) -> typer.Typer:
    @options.command
    def toy(given: dict[str, Any], verbose: bool = typer.Option(False, "--verbose", help="Talk.")) -> None:
        """A toy command."""
        seen.append((given, options.build(given)))

    app = typer.Typer()
    app.command("toy")(toy)
    app.command("other")(lambda: None)  # two commands: `toy` stays a sub-command
    return app


def test_help_has_one_option_per_field_with_type_default_and_panel() -> None:
    result = CliRunner().invoke(_app(TOY, []), ["toy", "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "--r,--rate" in out and "A rate. [default: 0.5]" in out  # the kept name comes first
    assert "--on" in out and "--off" in out and "[default: on]" in out
    assert "Names, comma-separated. e.g. a,b" in out and "[default: ['a']]" not in out  # factories: not shown
    assert "--verbose" in out and "A toy command." in out
    assert RUN_CONTROL_PANEL in out and out.index(RUN_CONTROL_PANEL) < out.index("--threads")


def test_only_given_options_reach_the_config_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[dict[str, Any], Any]] = []
    app = _app(TOY, seen)
    assert CliRunner().invoke(app, ["toy"]).exit_code == 0
    assert seen[-1][0] == {} and seen[-1][1] == ToyConfig()
    result = CliRunner().invoke(
        app, ["toy", "--r", "0.25", "--off", "--names", "x,y", "--mode", "fast", "--verbose"]
    )
    assert result.exit_code == 0, result.output
    given, config = seen[-1]
    assert given == {
        "rate": 0.25,
        "on": False,
        "names": ["x", "y"],
        "mode": "fast",
    }  # default-valued but given
    assert config == ToyConfig(rate=0.25, on=False, names=["x", "y"])
    assert CliRunner().invoke(app, ["toy", "--rate", "1"]).exit_code == 0  # the field's own name works too
    assert seen[-1][0] == {"rate": 1.0}
    monkeypatch.setenv("TOY_THREADS", "3")
    assert CliRunner().invoke(app, ["toy"]).exit_code == 0
    assert seen[-1][0] == {"threads": 3}  # an env var the CLI reads counts as given


def test_an_invalid_value_is_a_usage_error_naming_the_flag() -> None:
    result = CliRunner().invoke(_app(TOY, []), ["toy", "--r", "2", "--mode", "warp"], env=WIDE)
    assert result.exit_code == 2
    assert (
        "Invalid value for --r, --mode: invalid ToyConfig value(s): rate=2.0: must be in (0, 1]"
        in result.output
    )


class ToySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOY_")

    level: Literal["low", "high"] = Field(default="low", description="low | high.")
    root: Path | None = Field(default=None, description="A directory.")
    key: SecretStr | None = Field(default=None, description="A secret.")


def test_pydantic_settings_fields_and_env_names() -> None:
    options = ConfigOptions(ToySettings, env_prefix="TOY_")
    seen: list[tuple[dict[str, Any], Any]] = []
    app = _app(options, seen)
    out = CliRunner().invoke(app, ["toy", "--help"], env=WIDE).output
    assert "low | high. (env TOY_LEVEL) [default: low]" in out and "(env TOY_KEY)" in out
    assert CliRunner().invoke(app, ["toy", "--root", "d", "--key", "k"]).exit_code == 0
    given, settings = seen[-1]
    assert given == {"root": Path("d"), "key": "k"} and settings.key.get_secret_value() == "k"


def test_cli_types() -> None:
    assert cli_type(int | None) is int and cli_type(Literal["a", "b"]) is str and cli_type(SecretStr) is str
    assert cli_type(list[str]) == list[str] and cli_type(Path) is Path
    with pytest.raises(TypeError, match="Flag"):
        cli_type(dict[str, int])


def test_misdeclared_configs_and_flags_are_refused() -> None:
    @dataclass
    class Undocumented(DataclassConfig):
        x: int = 1

    with pytest.raises(TypeError, match="no help metadata"):
        ConfigOptions(Undocumented)
    with pytest.raises(TypeError, match="does not expose"):
        ConfigOptions(ToyConfig, flags={"nope": Flag()})
    with pytest.raises(TypeError, match="declares options the config generates"):

        @TOY.command
        def clash(given: dict[str, Any], rate: float = 1.0) -> None: ...


# Every `rlhf` command whose options are generated from a config: the config and the fields it leaves
# out. A command not listed here must have no generated options (the test below says which one has).
GENERATED = {
    "train-rm": ("RewardConfig", set()),
    "export": ("ExportConfig", {"recipes"}),
    "import-rm": ("ImportConfig", {"recipes"}),
    "correct-length": ("CorrectionConfig", set()),
    "train-policy": ("PolicyConfig", set()),
    "serve": ("ServiceSettings", set()),
}


def registered_commands() -> dict[str, Callable[..., Any]]:
    """Every command registered on `rlhf` (cli/main.py), sub-apps included, by its command line."""
    from cli.main import app

    found: dict[str, Callable[..., Any]] = {}

    def walk(group: typer.Typer, prefix: tuple[str, ...]) -> None:
        for info in group.registered_commands:
            assert info.name and info.callback, f"{info} is registered without a name or function"
            found[" ".join((*prefix, info.name))] = info.callback
        for sub in group.registered_groups:
            assert sub.name and sub.typer_instance
            walk(sub.typer_instance, (*prefix, sub.name))

    walk(app, ())
    return found


def generated_options(command: Callable[..., Any]) -> list[ConfigOptions]:
    """The ConfigOptions of the command's module whose generated options the command takes."""
    takes = set(inspect.signature(command).parameters)
    module = vars(sys.modules[command.__module__]).values()
    return [o for o in module if isinstance(o, ConfigOptions) and {p.name for p in o.parameters} <= takes]


COMMANDS = registered_commands()


def test_every_listed_command_is_registered() -> None:
    assert set(GENERATED) <= set(COMMANDS)
    assert {"import-rm", "correct-length", "bench quant", "eval"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_exposes_every_field_of_its_config(command: str) -> None:
    found = generated_options(COMMANDS[command])
    if command not in GENERATED:
        assert not found, f"{command} generates options from {found[0].config.__name__}: add it to GENERATED"
    else:
        config, excluded = GENERATED[command]
        (options,) = found
        assert options.config.__name__ == config
        assert {s.name for s in options.specs} == {s.name for s in config_fields(options.config)} - excluded
    from cli.main import app

    result = CliRunner().invoke(app, [*command.split(), "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    missing = [o.flag(s.name) for o in found for s in o.specs if o.flag(s.name) not in result.output]
    assert not missing, f"rlhf {command} --help does not show {missing}"
