"""`tokenizer_dir` refuses a model without a tokenizer, before caching anything, for training as for
`rlhf import-rm`: transformers 5 would build one from the model type with special tokens only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from training.reward.encoders import TOKENIZER_SOURCES, EncoderSourceError, tokenizer_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def untokenized(tiny_model: Path, path: Path) -> Path:
    """The tiny BERT reward model (config and weights) without any tokenizer file."""
    shutil.copytree(tiny_model, path)
    for name in os.listdir(path):
        if "token" in name or name.startswith("vocab") or name.endswith(".model"):
            (path / name).unlink()
    return path


def test_the_premise_transformers_makes_a_tokenizer_of_special_tokens_from_the_config(
    tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    made = AutoTokenizer.from_pretrained(untokenized(tiny_model, tmp_path / "bare"))
    assert sorted(made.get_vocab()) == sorted(SPECIALS)


def test_a_directory_without_tokenizer_files_is_refused_and_nothing_is_cached(
    tiny_model: Path, tmp_path: Path
) -> None:
    bare, cache = untokenized(tiny_model, tmp_path / "bare"), tmp_path / "cache"
    with pytest.raises(
        EncoderSourceError, match=r"bare has no tokenizer \(none of tokenizer\.json, vocab\.txt"
    ):
        tokenizer_dir(bare, cache)
    assert not cache.exists()
    assert set(TOKENIZER_SOURCES) >= {"tokenizer.json", "vocab.txt", "vocab.json", "spm.model"}


def test_a_tokenizer_of_special_tokens_only_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    bare, cache = untokenized(tiny_model, tmp_path / "bare"), tmp_path / "cache"
    (bare / "vocab.txt").write_text("\n".join(SPECIALS) + "\n", encoding="utf-8")  # a file, but empty
    with pytest.raises(EncoderSourceError, match="no vocabulary besides its special tokens"):
        tokenizer_dir(bare, cache)
    assert not cache.exists()


def test_slow_files_are_still_converted_once(tiny_model: Path, tmp_path: Path) -> None:
    slow, cache = untokenized(tiny_model, tmp_path / "slow"), tmp_path / "cache"
    shutil.copyfile(tiny_model / "vocab.txt", slow / "vocab.txt")
    converted = tokenizer_dir(slow, cache)
    assert converted.parent == cache and (converted / "tokenizer.json").is_file()
    assert tokenizer_dir(slow, cache) == converted  # the second call reads the cache


def test_training_refuses_it_with_the_reason(tiny_model: Path, pairs_file: Path, tmp_path: Path) -> None:
    bare = untokenized(tiny_model, tmp_path / "bare")
    out = tmp_path / "run"
    args = ["train-rm", "--out", str(out), "--base-model", str(bare), "--data", str(pairs_file), "--quiet"]
    result = CliRunner().invoke(app, [*args, "--max-steps", "1", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert f"error: {bare} has no tokenizer (none of tokenizer.json" in result.output
    assert not (Path(".cache/tokenizers") / str(bare).strip("/").replace("/", "--")).exists()
    assert not (out / "final").exists()
