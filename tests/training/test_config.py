"""One config style: every field documented, ConfigError naming the field, JSON round trips, run control."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest

from service.configuration import ConfigError as SharedConfigError
from service.settings import ServiceSettings
from training.policy.config import RESUMABLE_CHANGES, PolicyConfig
from training.reward.config import ConfigError, RewardConfig
from training.reward.export.config import ExportConfig

DATACLASS_CONFIGS = [RewardConfig, ExportConfig, PolicyConfig]

# a measured figure (a ratio, a percentage, a gain in std, a duration): those live in the README's tables
FIGURE = re.compile(
    r"measured|\d\s?%|~\s?\d|\b\d+(\.\d+)?x (faster|slower)|[+±]\s?\d+(\.\d+)?\s?std|\d\s?(min|ms|s) vs"
)


def test_every_field_is_documented_and_help_quotes_no_figure() -> None:
    texts = {f"{c.__name__}.{n}": h for c in DATACLASS_CONFIGS for n, h in c.help_texts().items()}
    texts |= {f"ServiceSettings.{n}": f.description or "" for n, f in ServiceSettings.model_fields.items()}
    for name, text in texts.items():
        assert text, f"{name} has no help text"
        assert not FIGURE.search(text), (
            f"{name}: a figure in its help ({text!r}); point to the README instead"
        )


def test_one_error_type_for_every_config() -> None:
    assert ConfigError is SharedConfigError and issubclass(ConfigError, ValueError)
    for make in (
        lambda: RewardConfig(base_model="x", batch_size=0),
        lambda: ExportConfig(batch_size=0),
        lambda: PolicyConfig(top_p=0.0),
        lambda: ServiceSettings.from_env(max_batch_pairs=0),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        assert len(info.value.fields) == 1 and info.value.fields[0] in str(info.value)


def test_json_round_trip_and_unknown_fields(tmp_path: Path) -> None:
    config = RewardConfig(base_model="some/dir", lr=1e-4, data="x.jsonl")
    config.save(tmp_path / "c.json")
    assert RewardConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ConfigError, match=r"unknown RewardConfig field\(s\) \['learning_rate'\]"):
        RewardConfig.from_dict({**config.to_dict(), "learning_rate": 1.0})
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        RewardConfig.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read a PolicyConfig"):
        PolicyConfig.load(tmp_path / "broken.json")


def test_the_length_term_without_a_length_head_refuses_a_length_head() -> None:
    with pytest.raises(ConfigError, match=r"decorrelate_length.*--no-length-head"):
        RewardConfig(base_model="x", decorrelate_length=True, length_head=True).validate()
    RewardConfig(base_model="x", decorrelate_length=True, length_head=False).validate()


def test_a_config_saved_before_a_field_existed_keeps_its_recipe() -> None:
    """A resumed or exported old run must not pick up today's defaults (balance on, pair format)."""
    saved = RewardConfig(base_model="some/dir").to_dict()
    for field_name in ("input_format", "length_balance_bins", "length_head", "decorrelate_length"):
        saved.pop(field_name)
    old = RewardConfig.from_dict(saved)
    assert (old.input_format, old.length_balance_bins, old.length_head) == ("pair", 0, False)
    assert old.decorrelate_length is False
    assert RewardConfig(base_model="some/dir").length_balance_bins > 0  # today's default differs


def test_policy_config_round_trip_keeps_the_secret_out(tmp_path: Path) -> None:
    config = PolicyConfig(service_urls=["http://a"], api_key="s3cret", lora_target_modules=["q_proj"], k=2)
    config.save(tmp_path / "config.json")
    assert "s3cret" not in (tmp_path / "config.json").read_text()
    loaded = PolicyConfig.load(tmp_path / "config.json")
    assert loaded == PolicyConfig(**{**config.__dict__, "api_key": None})


def test_export_config_round_trip_rebuilds_the_recipes(tmp_path: Path) -> None:
    from training.reward.export.quantize import DEFAULT_RECIPES

    config = ExportConfig(version="3", int8=False, max_int8_drop=-100.0)  # negative: refuse every int8 graph
    assert config.recipes == DEFAULT_RECIPES
    config.save(tmp_path / "export.json")
    saved = json.loads((tmp_path / "export.json").read_text())
    assert saved["recipes"][1]["fp32_layers"] == [-1]  # the manifest form: plain JSON
    assert ExportConfig.load(tmp_path / "export.json") == config


def test_default_base_model_is_the_embedded_minilm() -> None:
    assert Path(RewardConfig().base_model, "config.json").is_file()


def test_invalid_values_name_the_field() -> None:
    with pytest.raises(ConfigError, match="batch_size=0") as info:
        RewardConfig(base_model="x", batch_size=0)
    assert info.value.fields == ("batch_size",)
    with pytest.raises(ConfigError, match="decay='step'"):
        RewardConfig(base_model="x", decay="step")
    with pytest.raises(ConfigError, match=r"estimator='a2c': must be one of rloo") as info:
        PolicyConfig(estimator="a2c")
    assert info.value.fields == ("estimator",)
    with pytest.raises(ConfigError, match="needs k >= 2"):
        PolicyConfig(k=1)
    assert PolicyConfig(k=1, estimator="reinforce").k == 1
    with pytest.raises(ConfigError, match="calibration_pairs=-1") as info:
        ExportConfig(calibration_pairs=-1, fidelity_pairs=-1)
    assert info.value.fields == ("calibration_pairs", "fidelity_pairs")
    assert ExportConfig(calibration_pairs=0, eval_pairs=0).calibration_pairs == 0  # 0 = all pairs


def test_run_control_is_what_may_change_on_resume() -> None:
    """The resume check compares every other field of an older checkpoint's flat config, unchanged."""
    assert {
        "steps", "resume", "service_urls", "api_key", "request_timeout", "max_retries", "merge", "skip_eval",
        "eval_greedy", "device", "checkpoint_every", "gen_threads", "train_threads", "generation_batch_prompts",
        "out", "gold_bundle", "gold_threads",
    } == RESUMABLE_CHANGES  # fmt: skip
    names = [f.name for f in fields(PolicyConfig)]
    first_run_control = min(names.index(n) for n in RESUMABLE_CHANGES)
    assert set(names[first_run_control:]) == RESUMABLE_CHANGES  # one group, after the learning knobs
    assert RewardConfig.run_control_fields() == {"device", "num_workers"}  # what train.py keeps on resume
    assert ExportConfig.run_control_fields() == frozenset()
