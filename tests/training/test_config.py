from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from training.reward.config import ConfigError, RewardConfig


def test_every_field_is_documented() -> None:
    for f in fields(RewardConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"


def test_json_round_trip_and_unknown_fields(tmp_path: Path) -> None:
    config = RewardConfig(base_model="some/dir", lr=1e-4, data="x.jsonl")
    config.save(tmp_path / "c.json")
    assert RewardConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ConfigError, match=r"unknown RewardConfig field\(s\) \['learning_rate'\]"):
        RewardConfig.from_dict({**config.to_dict(), "learning_rate": 1.0})
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        RewardConfig.load(tmp_path / "bad.json")


def test_default_base_model_is_the_embedded_minilm() -> None:
    assert Path(RewardConfig().base_model, "config.json").is_file()


def test_invalid_values_name_the_field() -> None:
    with pytest.raises(ConfigError, match="batch_size=0"):
        RewardConfig(base_model="x", batch_size=0)
    with pytest.raises(ConfigError, match="decay='step'"):
        RewardConfig(base_model="x", decay="step")
