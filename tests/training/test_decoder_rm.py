"""Reward models from decoder bases (issue 14 part 3): tiny random Llama / Qwen2 / GPT-2 bases with
SmolLM2's real tokenizer train a few steps in the chat format (auto) and the pair format, fully and
with LoRA, and export to bundles that encode exactly as training did and serve what PyTorch scores."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli.main import app
from service.app import create_app
from service.bundle import CHAT_TEMPLATE_NAME, load_bundle
from service.chat import ChatEncoder
from service.conversation import pair_to_conversation
from service.encoding import PairEncoder, pad_batch
from tests.service.conftest import LiveServer, settings_for
from tests.training.decoder_helpers import EOS, make_decoder_base, smollm_tokenizer_dir
from tests.training.reward_helpers import write_pairs
from training.reward import train as train_module
from training.reward.config import RewardConfig
from training.reward.encoders import (
    EncoderSourceError,
    model_encoder,
    prepare_run_tokenizer,
    resolve_input_format,
    run_encoder,
)
from training.reward.evaluate import evaluate_bundle
from training.reward.export import ExportConfig, export_bundle
from training.reward.heads import HeadLayout
from training.reward.model import load_reward_model
from training.reward.pooling import reward_logits
from training.reward.train import EncodedData, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
runner = CliRunner()


@pytest.fixture(scope="session")
def smollm_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smollm_tokenizer_dir(tmp_path_factory.mktemp("smollm-tokenizer"))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 embedded hh-rlhf pairs: multi-turn questions, many cut at max_length 64."""
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl.gz", n=24)


def decoder_config(base: Path, data: Path, **overrides: Any) -> RewardConfig:
    values: dict[str, Any] = {
        "base_model": str(base),
        "data": str(data),
        "max_length": 64,
        "min_question_tokens": 8,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "val_fraction": 0.25,
        "eval_every": 0,
        "checkpoint_every": 0,
        "max_steps": 3,
        "score_stats_pairs": 8,
        "device": "cpu",
        **overrides,
    }
    return RewardConfig(**values)


def train_capturing(config: RewardConfig, out: Path, monkeypatch: pytest.MonkeyPatch) -> EncodedData:
    """Run `train` and return the data it encoded (the ids the model was trained on)."""
    seen: list[EncodedData] = []
    original = train_module._encode_data

    def capture(*args: Any) -> EncodedData:
        seen.append(original(*args))
        return seen[-1]

    monkeypatch.setattr(train_module, "_encode_data", capture)
    train(config, out, progress=False)
    return seen[0]


def torch_score(final: Path, ids: list[int]) -> float:
    model = load_reward_model(str(final)).eval()
    batch = pad_batch([_Row(ids)], 0)
    with torch.no_grad():
        logits = reward_logits(
            model,
            input_ids=torch.from_numpy(batch["input_ids"]),
            attention_mask=torch.from_numpy(batch["attention_mask"]),
        )
    return float(logits[0, 0])


class _Row:
    """The minimum of an EncodedPair that `pad_batch` reads."""

    def __init__(self, ids: list[int]) -> None:
        self.input_ids, self.token_type_ids = ids, [0] * len(ids)

    def __len__(self) -> int:
        return len(self.input_ids)


CASES = [  # (family, base has a chat template, input_format asked, resolved, lora_r)
    ("llama", True, "auto", "chat", 0),
    ("llama", True, "pair", "pair", 4),
    ("qwen2", True, "auto", "chat", 4),
    ("qwen2", True, "pair", "pair", 0),
    ("gpt2", False, "auto", "pair", 0),
    ("gpt2", True, "chat", "chat", 4),
]


@pytest.mark.parametrize(("family", "template", "asked", "resolved", "lora_r"), CASES)
def test_decoder_base_trains_and_exports_with_the_ids_training_used(
    tmp_path: Path,
    smollm_tokenizer: Path,
    pairs: Path,
    monkeypatch: pytest.MonkeyPatch,
    family: str,
    template: bool,
    asked: str,
    resolved: str,
    lora_r: int,
) -> None:
    base = make_decoder_base(tmp_path / "base", family, smollm_tokenizer, chat_template=template)
    config = decoder_config(base, pairs, input_format=asked, lora_r=lora_r)
    data = train_capturing(config, tmp_path / "run", monkeypatch)
    final = tmp_path / "run" / "final"

    # -- the run resolved and saved its format; OUT/final is a plain model directory ----------------
    saved = RewardConfig.load(final / "reward_config.json")
    assert saved.input_format == resolved and data.encoder.input_format == resolved
    assert (final / CHAT_TEMPLATE_NAME).is_file() == template
    assert not (final / "adapter_config.json").exists()  # a LoRA run is saved merged
    model_config = json.loads((final / "config.json").read_text())
    assert model_config["pad_token_id"] == data.encoder.pad_token_id  # one pad id
    if resolved == "chat":
        assert data.encoder.pad_token_id == EOS  # the template's pad token: also the EOS ending each turn
        assert data.chosen[0].input_ids[0] == 1  # <|im_start|>: the chat template rendered the pair
    else:  # a decoder's pair ends with its end-of-text token: tokenizer_config's eos, else <|endoftext|>
        end = EOS if template else 0
        assert {e.input_ids[-1] for e in data.chosen + data.rejected} == {end}

    # -- export: a bundle of the run's format whose encoder gives the training ids ----------------------
    bundle_dir = tmp_path / "bundle"
    result = export_bundle(tmp_path / "run", bundle_dir, ExportConfig(int8=False, eval_pairs=6))
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    assert manifest.input_format == resolved and manifest.pad_token_id == data.encoder.pad_token_id
    encoder = bundle.encoder()
    assert isinstance(encoder, ChatEncoder if resolved == "chat" else PairEncoder)
    if resolved == "chat":
        assert manifest.chat_template_sha256 == encoder.template.sha256 == data.encoder.template.sha256  # type: ignore[attr-defined]
    questions = [p.question for p in data.train_pairs]
    for trained, served in (
        (data.chosen, encoder.encode(questions, [p.chosen for p in data.train_pairs])),
        (data.rejected, encoder.encode(questions, [p.rejected for p in data.train_pairs])),
    ):
        assert [e.input_ids for e in served] == [e.input_ids for e in trained]
        assert [e.truncated for e in served] == [e.truncated for e in trained]
    assert any(e.truncated for e in data.chosen), "max_length 64 should cut some hh-rlhf pairs"
    assert len(encoder.encode_one("", "")) >= 1  # an empty pair is still a sequence to score
    assert [
        e.input_ids for e in run_encoder(final).encode(questions, [p.chosen for p in data.train_pairs])
    ] == [e.input_ids for e in data.chosen]
    assert result.gate["max_abs_diff_onnx_torch"] <= 1e-3 and result.gate["batch_diff_fp32"] <= 1e-4
    report = evaluate_bundle(bundle_dir, pairs, limit=6)  # `rlhf eval`: the bundle's own encoder
    assert (
        report.pairs == 6 and report.input_format == resolved and f"{resolved} format" in report.format_text()
    )

    # -- the service scores a pair (and, for chat, the conversation) as PyTorch scores the training ids
    pair = data.train_pairs[0]
    expected = torch_score(final, data.chosen[0].input_ids)
    items: list[dict[str, Any]] = [{"question": pair.question, "answer": pair.chosen}]
    if resolved == "chat":  # the same pair sent as the conversation it is rendered as
        messages = [m.as_dict() for m in pair_to_conversation(pair.question, pair.chosen)]
        items.append({"messages": messages})
    with LiveServer(create_app(settings_for(bundle_dir))) as server:
        scores = httpx.post(f"{server.url}/score", json={"pairs": items}, timeout=30).json()["scores"]
    np.testing.assert_allclose(scores, [expected] * len(items), atol=1e-3)


def test_lora_trains_adapters_and_the_head_and_merges_into_a_plain_model(
    tmp_path: Path, smollm_tokenizer: Path, pairs: Path
) -> None:
    base = make_decoder_base(tmp_path / "base", "llama", smollm_tokenizer)
    train(decoder_config(base, pairs, lora_r=4), tmp_path / "run", progress=False)
    before = load_file(str(base / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    torch.manual_seed(0)  # the run's seed: the head as it was initialised
    fresh_head = load_reward_model(str(base), HeadLayout(1, False)).score.weight.detach()
    assert not torch.equal(after["score.weight"], fresh_head), "the head did not train"
    adapted = [k for k in before if "q_proj" in k or "down_proj" in k]
    assert adapted and all(not torch.equal(before[k], after[k]) for k in adapted)  # merged updates
    frozen = [k for k in before if "embed_tokens" in k or "norm" in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert set(after) == set(before) - {"lm_head.weight"} | {"score.weight"}  # no lora_A/B, no peft names


def test_the_merged_model_scores_as_the_lora_model(
    tmp_path: Path, smollm_tokenizer: Path, tiny_model: Path
) -> None:
    from training.reward.lora import add_reward_lora, lora_target_modules, merged

    for family, kinds in (
        ("llama", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
        ("qwen2", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
        ("gpt2", {"c_attn", "c_proj", "c_fc"}),
        ("bert", {"query", "key", "value", "dense"}),  # MiniLM's family: --lora-r works there too
    ):
        base = (
            tiny_model if family == "bert" else make_decoder_base(tmp_path / family, family, smollm_tokenizer)
        )
        model = load_reward_model(str(base), HeadLayout(1, False))
        model.config.pad_token_id = EOS
        targets = lora_target_modules(model)
        assert {t.rsplit(".", 1)[-1] for t in targets} == kinds, family
        assert not any(t.startswith(("score", "classifier")) for t in targets)  # the head trains in full
        lora = add_reward_lora(model, RewardConfig(lora_r=4, base_model=str(base)))
        with torch.no_grad():
            for name, param in lora.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)  # a fresh adapter is zero: give it something to merge
        ids = torch.tensor([[1, 520, 9531, 198, 19556, 30, 2, 198], [1, 520, 9531, 2, EOS, EOS, EOS, EOS]])
        mask = torch.tensor([[1] * 8, [1] * 4 + [0] * 4])
        lora.eval()
        with torch.no_grad():
            adapted = reward_logits(lora, input_ids=ids, attention_mask=mask)
            plain = merged(lora)
            assert type(plain).__name__.endswith("ForSequenceClassification")
            np.testing.assert_allclose(
                reward_logits(plain, input_ids=ids, attention_mask=mask).numpy(), adapted.numpy(), atol=1e-5
            )


def test_a_lora_run_resumes_to_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, smollm_tokenizer: Path, pairs: Path
) -> None:
    base = make_decoder_base(tmp_path / "base", "qwen2", smollm_tokenizer)
    config = decoder_config(base, pairs, lora_r=4, max_steps=4, checkpoint_every=2, decay="cosine")
    train(config, tmp_path / "reference", progress=False)

    class Stop(Exception):
        pass

    def stop_at(step: int) -> None:
        if step == 3:  # checkpoint at 2 holds the adapter and head, step 3 is lost
            raise Stop

    with pytest.raises(Stop):
        train(config, tmp_path / "resumed", on_step=stop_at, progress=False)
    assert (tmp_path / "resumed" / "checkpoint" / "adapter_config.json").is_file()
    train(config, tmp_path / "resumed", resume=True, progress=False)
    expected = load_file(str(tmp_path / "reference" / "final" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_the_run_tokenizer_ends_a_decoder_pair_and_leaves_others_byte_for_byte(
    tmp_path: Path, smollm_tokenizer: Path, tiny_model: Path
) -> None:
    for source, fmt in ((tiny_model, "pair"), (smollm_tokenizer, "chat")):
        out = prepare_run_tokenizer(source, fmt, tmp_path / f"{fmt}-tokenizer")
        assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    out = prepare_run_tokenizer(smollm_tokenizer, "pair", tmp_path / "decoder-pair")
    encoder = model_encoder(out, "pair", 16, 4)
    hello = encoder.encode_one("Hi?", "Hello there, how are you doing today? " * 4)
    assert hello.input_ids[-1] == EOS and len(hello) == 16 and hello.truncated  # the EOS counts in the budget
    assert encoder.encode_one("", "").input_ids == [EOS]
    bare = tmp_path / "bare"  # no tokenizer_config.json: the vocabulary's <|endoftext|>
    bare.mkdir()
    (bare / "tokenizer.json").write_bytes((smollm_tokenizer / "tokenizer.json").read_bytes())
    assert model_encoder(prepare_run_tokenizer(bare, "pair", tmp_path / "b"), "pair", 16, 4).encode_one(
        "", ""
    ).input_ids == [0]


def test_format_resolution_and_its_errors(tmp_path: Path, smollm_tokenizer: Path, tiny_model: Path) -> None:
    assert resolve_input_format(smollm_tokenizer, "auto") == "chat"
    assert resolve_input_format(smollm_tokenizer, "pair") == "pair"
    assert resolve_input_format(tiny_model, "auto") == "pair"  # MiniLM: no template, today's behaviour
    with pytest.raises(EncoderSourceError, match="needs a chat template"):
        resolve_input_format(tiny_model, "chat")
    with pytest.raises(EncoderSourceError, match="expected one of"):
        resolve_input_format(tiny_model, "jinja")
    # a run saved before the format existed trained pairs, whatever its base's tokenizer has
    legacy = RewardConfig(base_model=str(tiny_model)).to_dict()
    del legacy["input_format"]
    assert RewardConfig.from_dict(legacy).input_format == "pair"


def test_cli_takes_the_format_and_lora_options_and_refuses_chat_without_a_template(
    tmp_path: Path, tiny_model: Path, pairs: Path
) -> None:
    args = ["train-rm", "--out", str(tmp_path / "o"), "--data", str(pairs), "--base-model", str(tiny_model)]
    result = runner.invoke(app, [*args, "--input-format", "chat", "--lora-r", "4"])
    assert result.exit_code == 2, result.output
    assert "needs a chat template" in result.output
    result = runner.invoke(app, [*args, "--input-format", "xml"])
    assert result.exit_code != 0 and "input_format" in result.output
    help_text = runner.invoke(app, ["train-rm", "--help"], env={"COLUMNS": "200"}).output
    assert "--input-format" in help_text and "--lora-r" in help_text and "smollm2" in help_text


@pytest.mark.slow
def test_named_smollm2_base_is_resaved_once_and_trains(
    tmp_path: Path, pairs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--base-model smollm2`: the GGUF is re-saved as a plain directory (no quantization config) with
    its tokenizer and chat template in .cache/, then trained in the chat format."""
    from training.reward.bases import resolve_base_model

    monkeypatch.chdir(tmp_path)  # the cache is relative to the working directory
    data = write_pairs(tmp_path / "pairs8.jsonl.gz", n=8)
    config = decoder_config(Path("smollm2"), data, max_steps=2, batch_size=3, score_stats_pairs=4)
    train(config, tmp_path / "run", progress=False)
    cached = Path(resolve_base_model("smollm2"))  # the second resolve reads the cache
    assert cached.is_relative_to(tmp_path / ".cache") or not cached.is_absolute()
    saved = json.loads((cached / "config.json").read_text())
    assert "quantization_config" not in saved and saved["model_type"] == "llama"
    assert {"model.safetensors", "tokenizer.json", CHAT_TEMPLATE_NAME} <= {p.name for p in cached.iterdir()}
    final = tmp_path / "run" / "final"
    run_config = RewardConfig.load(final / "reward_config.json")
    assert run_config.base_model == "smollm2" and run_config.input_format == "chat"
    assert run_encoder(final).pad_token_id == EOS
