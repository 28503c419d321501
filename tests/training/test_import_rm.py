"""`rlhf import-rm`: small random checkpoints of six families, built here with real tokenizers (SmolLM2's
BPE for the decoders, MiniLM's WordPiece for the encoders), each through import -> gate ->
`load_bundle` -> `/score`, with parity and batch independence checked at the service too.

    pytest -s tests/training/test_import_rm.py -k every_family   # prints the measured numbers
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli.main import app
from service.app import create_app
from service.bundle import MODEL_FILES, load_bundle
from tests.service.conftest import LiveServer, settings_for
from tests.training.decoder_helpers import EOS, VOCAB, smollm_tokenizer_dir
from training.reward.export.config import ImportConfig
from training.reward.export.gate import CheckpointError, ExportError
from training.reward.export.import_rm import import_checkpoint
from training.reward.export.progress import Progress
from training.reward.model import default_base_model, score_pairs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = {  # family -> the input format `auto` must pick (chat: the checkpoint has a chat template)
    "llama": "chat",
    "qwen2": "chat",
    "gpt2": "pair",
    "deberta-v2": "pair",
    "roberta": "pair",
    "modernbert": "pair",
}
MAX_LENGTH = 96
# the gate's sample sizes, small: the tiny models are not the subject of the accuracy gate (int8 may ship)
SMALL = {
    "max_length": MAX_LENGTH,
    "eval_pairs": 12,
    "calibration_pairs": 12,
    "fidelity_pairs": 24,
    "batch_probe": 8,
    "max_int8_drop": 100.0,
    "version": "1",
}
PAIRS = [
    ("How do I bake bread?", "Mix flour, water, salt and yeast, let it rise, then bake it hot."),
    ("\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: Tell me about the sea.\n\nAssistant:", " It is deep."),
    ("Is it safe? <|im_end|> asking for a friend", "Yes.<|im_end|>"),  # EOS ids inside and at the end
    ("", ""),
    ("Explain rain. " * 30, "Clouds. " * 40),  # truncated
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("import-rm")


@pytest.fixture(scope="module")
def smollm(root: Path) -> Path:
    return smollm_tokenizer_dir(root / "smollm-tokenizer")


def make_checkpoint(path: Path, family: str, smollm: Path, num_labels: int = 1) -> Path:
    """A random 2-layer ``family`` sequence classifier saved with its tokenizer files in ``path``.

    Decoders get SmolLM2's tokenizer (Llama and Qwen2 with its chat template, GPT-2 without one);
    the Llama config's pad id is 2, its EOS, which the encoder does not pad with."""
    import transformers as tf

    torch.manual_seed(0)
    decoder = {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": EOS, "num_labels": num_labels}
    encoder = {"vocab_size": 30522, "pad_token_id": 0, "num_labels": num_labels}
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    small["initializer_range"] = 0.2  # 10x the usual: a random tiny model's scores spread enough to compare
    rope = {"num_key_value_heads": 1, "max_position_embeddings": 256}
    models = {
        "llama": lambda: tf.LlamaForSequenceClassification(
            tf.LlamaConfig(pad_token_id=EOS, **rope, **small, **decoder)
        ),
        "qwen2": lambda: tf.Qwen2ForSequenceClassification(tf.Qwen2Config(**rope, **small, **decoder)),
        "gpt2": lambda: tf.GPT2ForSequenceClassification(
            tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=256, initializer_range=0.2, **decoder)
        ),
        "deberta-v2": lambda: tf.DebertaV2ForSequenceClassification(
            tf.DebertaV2Config(max_position_embeddings=256, **small, **encoder)
        ),
        "roberta": lambda: tf.RobertaForSequenceClassification(
            tf.RobertaConfig(
                max_position_embeddings=MAX_LENGTH + 2, bos_token_id=101, eos_token_id=102, **small, **encoder
            )
        ),
        "modernbert": lambda: tf.ModernBertForSequenceClassification(
            tf.ModernBertConfig(
                max_position_embeddings=256,
                bos_token_id=101,
                eos_token_id=102,
                cls_token_id=101,
                sep_token_id=102,
                **small,
                **encoder,
            )
        ),
    }
    models[family]().save_pretrained(path)
    if family in ("llama", "qwen2"):
        names, source = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"), smollm
    else:
        names, source = ("tokenizer.json",), smollm if family == "gpt2" else Path(default_base_model())
    for name in names:
        shutil.copyfile(source / name, path / name)
    return path


@contextmanager
def in_process(bundle: Path) -> Iterator[TestClient]:
    """The service app on ``bundle`` at fp32, in this process (no socket), once it is ready."""
    with TestClient(create_app(settings_for(bundle, precision="fp32"))) as client:
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.02)
        yield client


def score(client: Any, items: list[dict[str, Any]]) -> np.ndarray:
    response = client.post("/score", json={"pairs": items})
    assert response.status_code == 200, response.text
    return np.array(response.json()["scores"])


def as_items(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"question": q, "answer": a} for q, a in pairs]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_imports_gates_and_serves(family: str, root: Path, smollm: Path) -> None:
    checkpoint = make_checkpoint(root / family, family, smollm)
    started = time.perf_counter()
    result = import_checkpoint(checkpoint, root / f"bundle-{family}", ImportConfig(**SMALL))  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    gate, m = result.gate, result.manifest
    print(
        f"\n{family:<11} {m.input_format:<5} max |onnx - torch| {gate['max_abs_diff_onnx_torch']:.1e}  "
        f"batch diff fp32 {gate['batch_diff_fp32']:.1e} int8 {gate['batch_diff_int8']:.1e}  "
        f"int8 shipped {m.int8.shipped}  export {seconds:.1f} s"
    )
    assert m.input_format == FAMILIES[family]
    assert gate["max_abs_diff_onnx_torch"] <= 1e-3
    assert gate["batch_diff_fp32"] <= 1e-4 and gate["batch_diff_int8"] <= 1e-4
    assert m.int8.shipped and m.precisions == ["fp32", "int8"]
    assert m.eval.pairs == SMALL["eval_pairs"] and gate["score_stats_measured"]
    assert m.score.std > 0 and m.training_config == {} and m.base_model == str(checkpoint.resolve())

    # the service scores what PyTorch scores (fp32), alone or in a mixed batch
    bundle = load_bundle(result.bundle_dir)
    from training.reward.export.import_rm import load_checkpoint

    model = load_checkpoint(checkpoint)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = m.pad_token_id
    expected = score_pairs(model, bundle.encoder(), [q for q, _ in PAIRS], [a for _, a in PAIRS])
    assert (
        len(bundle.encoder().encode_one("", "")) >= 1
    )  # even a BPE adding no special tokens: a token to read
    with in_process(result.bundle_dir) as client:
        together = score(client, as_items(PAIRS))
        alone = np.array([score(client, as_items([pair]))[0] for pair in PAIRS])
    assert np.abs(together - expected).max() <= 1e-3
    assert np.abs(together - alone).max() <= 1e-4
    assert np.std(expected) > 1e-2  # the items really score differently: the comparison means something


def test_a_decoder_whose_pad_id_is_its_eos_fails_int8_over_to_fp32_with_the_reason(
    root: Path, smollm: Path
) -> None:
    checkpoint = make_checkpoint(root / "llama-fallback", "llama", smollm)
    config = ImportConfig(**{**SMALL, "max_int8_drop": -100.0})  # type: ignore[arg-type]
    result = import_checkpoint(checkpoint, root / "bundle-fallback", config)
    m = result.manifest
    assert not m.int8.shipped and m.precisions == ["fp32"]
    assert "points below fp32" in m.int8.reason and "all 3 recipes failed" in m.int8.reason
    assert not (result.bundle_dir / MODEL_FILES["int8"]).exists()
    assert [a["batch_diff"] <= 1e-4 for a in result.gate["int8_attempts"]] == [True] * 3
    assert result.gate["max_abs_diff_onnx_torch"] <= 1e-3 and result.gate["batch_diff_fp32"] <= 1e-4


def test_the_gate_refuses_a_decoder_read_where_transformers_reads_it(
    root: Path, smollm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's failure, reproduced: pooled by the config's pad id (its EOS, not the pad the encoder
    uses), padded rows are read at a padding position and the fp32 gate refuses the graph."""
    from training.reward.export import onnx_graph
    from training.reward.export.gate import BatchDependenceError

    monkeypatch.setattr(onnx_graph, "reward_logits", lambda model, **inputs: model(**inputs).logits)
    checkpoint = make_checkpoint(root / "llama-transformers-pooling", "llama", smollm)
    config = ImportConfig(**{**SMALL, "int8": False, "input_format": "pair"})  # type: ignore[arg-type]
    with pytest.raises(BatchDependenceError, match="fp32 graph is batch-dependent"):
        import_checkpoint(checkpoint, root / "never", config)


def test_each_gate_phase_shows_a_bar_and_records_its_time(
    root: Path, smollm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = make_checkpoint(root / "gpt2-progress", "gpt2", smollm)
    result = import_checkpoint(
        checkpoint,
        root / "bundle-progress",
        ImportConfig(**{**SMALL, "batch_probe": 5, "batch_size": 4}),  # type: ignore[arg-type]
        Progress(enabled=True),
    )
    err = capsys.readouterr().err
    phases = [
        "fp32 parity",
        "fp32 batch independence",
        "fp32 calibration-pair scores",
        "int8 calibration",
        "int8 gate (recipe 1)",
    ]
    for phase in phases:
        assert phase in err, phase
    assert "12/12" in err  # fp32 parity: 24 sequences in batches of 4, PyTorch then onnxruntime
    assert "6/6" in err  # batch independence: 5 sequences alone, then one batch
    assert set(phases) <= set(result.gate["phase_seconds"])


def test_the_cli_imports_with_data_format_and_sample_sizes(root: Path, smollm: Path) -> None:
    checkpoint = make_checkpoint(root / "llama-cli", "llama", smollm)
    data = root / "pairs.jsonl.gz"
    with gzip.open(data, "wt", encoding="utf-8") as handle:
        for i in range(40):
            row = {"question": f"Question {i}?", "chosen": f"A kind answer {i}.", "rejected": f"No {i}."}
            handle.write(json.dumps(row) + "\n")
    out = root / "bundle-cli"
    args = ["import-rm", str(checkpoint), "--out", str(out), "--data", str(data), "--input-format", "pair"]
    args += [
        "--eval-fraction",
        "0.25",
        "--eval-pairs",
        "6",
        "--calibration-pairs",
        "8",
        "--fidelity-pairs",
        "10",
    ]
    args += [
        "--batch-probe",
        "4",
        "--max-length",
        "64",
        "--min-question-tokens",
        "8",
        "--no-int8",
        "--name",
        "my-rm",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "pair format" in result.output
    assert "int8 NOT shipped: disabled (--no-int8)" in result.output
    m = load_bundle(out).manifest
    assert (m.name, m.input_format, m.max_length, m.eval.pairs) == ("my-rm", "pair", 64, 6)
    assert str(data) in m.eval.dataset and "eval_fraction 0.25" in m.eval.dataset
    assert m.export_config["batch_probe"] == 4 and m.export_config["input_format"] == "pair"


def test_one_imported_chat_bundle_over_a_real_socket(root: Path, smollm: Path) -> None:
    """A Llama chat bundle on a real server: a pair and the same exchange as a conversation score alike."""
    import httpx

    checkpoint = make_checkpoint(root / "llama-live", "llama", smollm)
    bundle = root / "bundle-live"
    import_checkpoint(checkpoint, bundle, ImportConfig(**{**SMALL, "int8": False}))  # type: ignore[arg-type]
    conversation = [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Bake."},
    ]
    with LiveServer(create_app(settings_for(bundle))) as server:
        items = [{"question": "How do I bake bread?", "answer": "Bake."}, {"messages": conversation}]
        response = httpx.post(f"{server.url}/score", json={"pairs": items}, timeout=30)
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    assert abs(scores[0] - scores[1]) <= 1e-5


def test_checkpoints_that_cannot_be_reward_models_are_refused_with_the_reason(
    root: Path, smollm: Path
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = ImportConfig(**SMALL)  # type: ignore[arg-type]
    causal = root / "causal-lm"
    LlamaForCausalLM(
        LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1)
    ).save_pretrained(causal)  # fmt: skip
    shutil.copyfile(smollm / "tokenizer.json", causal / "tokenizer.json")
    with pytest.raises(CheckpointError, match=r"not a sequence classifier.*LlamaForCausalLM.*rlhf train-rm"):
        import_checkpoint(causal, root / "never", config)

    two = make_checkpoint(root / "two-labels", "gpt2", smollm, num_labels=2)
    with pytest.raises(CheckpointError, match="has 2 labels"):
        import_checkpoint(two, root / "never", config)

    no_tokenizer = make_checkpoint(root / "no-tokenizer", "gpt2", smollm)
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no tokenizer \(none of tokenizer\.json"):
        import_checkpoint(no_tokenizer, root / "never", config)
    mismatched = make_checkpoint(root / "mismatched", "roberta", smollm)
    shutil.copyfile(smollm / "tokenizer.json", mismatched / "tokenizer.json")  # another model's tokenizer
    with pytest.raises(CheckpointError, match="49152 tokens but the model's embedding table 30522 rows"):
        import_checkpoint(mismatched, root / "never", config)

    gpt2 = make_checkpoint(root / "gpt2-no-template", "gpt2", smollm)
    chat = ImportConfig(**{**SMALL, "input_format": "chat"})  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="'chat' needs a chat template"):
        import_checkpoint(gpt2, root / "never", chat)
    too_long = ImportConfig(**{**SMALL, "max_length": 300})  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"cannot read 300 tokens.*--max-length"):
        import_checkpoint(gpt2, root / "never", too_long)

    with pytest.raises(CheckpointError, match=r"no config\.json"):
        import_checkpoint(root / "nowhere", root / "never", config)
    assert not (root / "never").exists()

    existing = root / "existing"
    existing.mkdir()
    with pytest.raises(ExportError, match="already exists"):
        import_checkpoint(gpt2, existing, config)
    result = CliRunner().invoke(app, ["import-rm", str(causal), "--out", str(root / "never")])
    assert result.exit_code == 1 and "import failed: " in result.output


def test_every_import_knob_is_an_option_with_help_and_bad_values_name_their_flag(root: Path) -> None:
    from cli.import_rm import IMPORT
    from cli.options import config_fields
    from tests.training.test_config import FIGURE

    fields = {spec.name for spec in config_fields(ImportConfig)}
    assert {spec.name for spec in IMPORT.specs} == fields - {"recipes"}
    assert {
        "eval_pairs",
        "calibration_pairs",
        "fidelity_pairs",
        "batch_probe",
    } <= fields  # the gate's samples
    for name, text in ImportConfig.help_texts().items():
        assert text and not FIGURE.search(text), name
    result = CliRunner().invoke(
        app, ["import-rm", str(root), "--out", str(root / "x"), "--eval-fraction", "1.5"]
    )
    assert result.exit_code == 2 and "--eval-fraction" in result.output
    result = CliRunner().invoke(app, ["import-rm", str(root), "--out", str(root / "x"), "--batch-probe", "1"])
    assert result.exit_code == 2 and "--batch-probe" in result.output
