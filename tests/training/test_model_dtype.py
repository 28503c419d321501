"""`load_reward_model` gives float32 whatever dtype a checkpoint was saved in (transformers 5 keeps it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def bf16_dirs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny BERT saved in bfloat16 (config.json then says dtype bfloat16): as a base model
    (BertModel, no head) and as a one-head reward checkpoint."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("bf16")
    dirs = {"base": root / "base", "reward": root / "reward"}
    AutoModel.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(dirs["base"])
    AutoModelForSequenceClassification.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(
        dirs["reward"]
    )
    for path in dirs.values():
        shutil.copyfile(tiny_model / "tokenizer.json", path / "tokenizer.json")
    return dirs


def test_the_premise_transformers_loads_a_bf16_checkpoint_in_bf16(bf16_dirs: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(bf16_dirs["reward"])
    assert {p.dtype for p in plain.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    ("source", "heads"), [("base", (3, True)), ("base", None), ("reward", None)],
    ids=["base-fresh-heads", "base-one-head", "reward-checkpoint"],
)  # fmt: skip
def test_load_reward_model_is_float32_for_a_bf16_checkpoint(
    bf16_dirs: dict[str, Path], source: str, heads: tuple[int, bool] | None
) -> None:
    import torch

    from training.reward.heads import HeadLayout
    from training.reward.model import load_reward_model

    layout = None if heads is None else HeadLayout(*heads)
    model = load_reward_model(str(bf16_dirs[source]), layout)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.dtype == torch.float32  # what save_pretrained records: a run's final/ is float32 too
    ids = torch.tensor([[101, 2054, 102]])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
