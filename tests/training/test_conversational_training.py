"""Reward models trained on conversational preference rows (TRL's formats), end to end: a `chat` run (tiny
random Llama, SmolLM2's real tokenizer and template) on implicit-prompt rows and a `pair` run (tiny BERT,
MiniLM's tokenizer) on explicit-prompt rows each train a few steps, export, evaluate, correct length
and serve; the ids training used == the bundle's encoder's ids for the same conversation == what
`/score` scores for it as {"messages": [...]}."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from service.app import create_app
from service.bundle import load_bundle
from service.chat import ChatEncoder
from service.conversation import conversation_to_hh, hh_turns
from service.encoding import PairEncoder
from tests.service.conftest import LiveServer, settings_for
from tests.training.conftest import tiny_config
from tests.training.decoder_helpers import make_decoder_base, smollm_tokenizer_dir
from tests.training.test_decoder_rm import decoder_config, train_capturing
from training.policy.prompts import heldout_questions, prompt_from_hh
from training.reward.correct_length import correct_bundle_length
from training.reward.correction_config import CorrectionConfig
from training.reward.data import PreferencePair, load_pairs
from training.reward.evaluate import evaluate_bundle
from training.reward.export import ExportConfig, export_bundle
from training.reward.length_correction import score_bundle_pairs
from training.reward.model import load_reward_model, score_encoded
from training.reward.train import EncodedData

SYSTEM = "You are a careful assistant."


@pytest.fixture(scope="module")
def smollm_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smollm_tokenizer_dir(tmp_path_factory.mktemp("smollm-tokenizer"))


def write_conversations(path: Path, n: int, explicit_prompt: bool) -> Path:
    """``n`` embedded hh-rlhf pairs as conversational rows (a system message on every other one),
    with the implicit prompt (whole conversations) or an explicit one; gz JSONL."""
    rows = []
    for i, pair in enumerate(load_pairs().pairs[:n]):
        turns = hh_turns(pair.question)
        assert turns is not None
        prompt = [{"role": "system", "content": SYSTEM}] * (i % 2 == 0) + [m.as_dict() for m in turns]
        answers = [{"role": "assistant", "content": a.strip()} for a in (pair.chosen, pair.rejected)]
        if explicit_prompt:
            rows.append({"prompt": prompt, "chosen": answers[:1], "rejected": answers[1:]})
        else:
            rows.append({"chosen": [*prompt, answers[0]], "rejected": [*prompt, answers[1]]})
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def messages(pair: PreferencePair, answer: str) -> list[dict[str, str]]:
    return [m.as_dict() for m in pair.conversation(answer)]


def check_run_bundle_and_service(tmp_path: Path, data: EncodedData, conversations: Path) -> Path:
    """The checks both formats share: export, the bundle's ids, `/score`, `rlhf eval`, correct-length,
    the policy's prompts. Returns the bundle directory."""
    final = tmp_path / "run" / "final"
    pairs = data.train_pairs
    assert pairs and all(p.prompt is not None for p in pairs + data.val_pairs)
    bundle_dir = tmp_path / "bundle"
    result = export_bundle(tmp_path / "run", bundle_dir, ExportConfig(int8=False, eval_pairs=6))
    assert result.gate["max_abs_diff_onnx_torch"] <= 1e-3 and result.gate["batch_diff_fp32"] <= 1e-4
    encoder = load_bundle(bundle_dir).encoder()
    assert encoder.input_format == data.encoder.input_format

    # the bundle's encoder gives the training ids for the same conversations
    for side, answers in (
        (data.chosen, [p.chosen for p in pairs]),
        (data.rejected, [p.rejected for p in pairs]),
    ):
        served = encoder.encode_conversations([messages(p, a) for p, a in zip(pairs, answers, strict=True)])
        assert served == side  # ids, truncation flags and answer tokens
    assert any(e.truncated for e in data.chosen), "max_length should cut some multi-turn conversations"
    # the run validated on the conversations too: its val margin is the bundle's on the same pairs
    val = score_bundle_pairs(load_bundle(bundle_dir), data.val_pairs).scores
    n = len(data.val_pairs)
    val_margin = json.loads((final / "metrics.json").read_text())["val_margin"]
    assert val_margin == pytest.approx(float(np.mean(val[:n] - val[n:])), abs=1e-4)

    # /score with {"messages": ...} scores what PyTorch scores for the training ids
    picked = [i for i, p in enumerate(pairs) if p.prompt and p.prompt[0].role == "system"][:1]
    picked += [i for i, p in enumerate(pairs) if p.prompt and p.prompt[0].role != "system"][:1]
    items = [{"messages": messages(pairs[i], pairs[i].chosen)} for i in picked]
    model = load_reward_model(str(final))  # PyTorch on the training encodings (token types included)
    expected = score_encoded(
        model, [data.chosen[i] for i in picked], data.encoder.pad_token_id, 1, torch.device("cpu")
    )
    with LiveServer(create_app(settings_for(bundle_dir))) as server:
        response = httpx.post(f"{server.url}/score", json={"pairs": items}, timeout=30)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["scores"], expected, atol=1e-3)

    # `rlhf eval --data` and `rlhf correct-length --data` read the conversational rows
    report = evaluate_bundle(bundle_dir, conversations, limit=6)
    assert report.pairs == 6 and report.length_pearson is not None
    corrected = correct_bundle_length(
        bundle_dir,
        CorrectionConfig(data=str(conversations), pairs=8, heldout_pairs=4),
        tmp_path / "corrected",
    )
    assert corrected.calibration_pairs >= 8 and corrected.heldout_pairs == 4
    assert corrected.length_correction["fitted_on"] == 2 * corrected.calibration_pairs

    # the policy's prompts from the run's held-out conversations: their hh text, every one a prompt
    questions = heldout_questions(tmp_path / "run")
    assert questions and all(prompt_from_hh(q).messages[-1][0] == "user" for q in questions)
    return bundle_dir


def test_a_chat_run_trains_on_implicit_prompt_conversations_system_messages_kept(
    tmp_path: Path, smollm_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversations = write_conversations(tmp_path / "conversations.jsonl.gz", 20, explicit_prompt=False)
    base = make_decoder_base(tmp_path / "base", "llama", smollm_tokenizer)
    config = decoder_config(base, conversations, input_format="auto")
    data = train_capturing(config, tmp_path / "run", monkeypatch)
    assert isinstance(data.encoder, ChatEncoder)
    before = load_file(str(base / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert not torch.equal(
        before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"]
    )

    # the run rendered the conversations: its own system message where the row has one, else the template's
    texts = [data.encoder.tokenizer.decode(e.input_ids, skip_special_tokens=False) for e in data.chosen]
    with_system = [p.prompt is not None and p.prompt[0].role == "system" for p in data.train_pairs]
    assert any(with_system) and not all(with_system)
    for text, system in zip(texts, with_system, strict=True):
        assert (SYSTEM in text) == system
    check_run_bundle_and_service(tmp_path, data, conversations)


def test_a_pair_run_reads_explicit_prompt_conversations_as_hh_turns(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversations = write_conversations(tmp_path / "conversations.jsonl.gz", 24, explicit_prompt=True)
    config = tiny_config(tiny_model, conversations, max_steps=3, score_stats_pairs=8)
    data = train_capturing(config, tmp_path / "run", monkeypatch)
    assert isinstance(data.encoder, PairEncoder)
    for pair, encoded in zip(data.train_pairs, data.chosen, strict=True):
        question, answer = conversation_to_hh(pair.conversation(pair.chosen))  # the service's rule
        assert encoded == data.encoder.encode_one(question, answer)
    bundle_dir = check_run_bundle_and_service(tmp_path, data, conversations)
    assert isinstance(load_bundle(bundle_dir).encoder(), PairEncoder)


def test_import_rm_gates_on_conversational_rows(tmp_path: Path, tiny_model: Path) -> None:
    from training.reward.export.config import ImportConfig
    from training.reward.export.import_rm import import_checkpoint

    conversations = write_conversations(tmp_path / "conversations.jsonl.gz", 12, explicit_prompt=True)
    config: Any = ImportConfig(
        data=str(conversations),
        eval_fraction=0.5,
        max_length=48,
        min_question_tokens=8,
        int8=False,
        eval_pairs=4,
    )
    result = import_checkpoint(tiny_model, tmp_path / "bundle", config)
    assert result.manifest.eval.pairs == 4
    assert result.gate["max_abs_diff_onnx_torch"] <= 1e-3
