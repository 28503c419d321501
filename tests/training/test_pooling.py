"""`reward_logits`: a decoder's score is read at each row's last real token, from the attention mask.

The decoder here is a tiny random Llama with SmolLM2's real tokenizer whose config says pad id 2
(``<|im_end|>``, also its EOS), while the encoder pads with 0: the mismatch that made transformers
read padding positions in the issue. The export gate on such a model is tested in test_import_rm.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.encoding import EncodedPair, PairEncoder, TruncationPolicy, pad_batch
from tests.training.decoder_helpers import EOS, VOCAB, smollm_tokenizer_dir
from training.reward.pooling import PoolingError, classifier_head, last_real_position, reward_logits

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [
    "Hi there?",
    "How do I bake bread? <|im_end|> Please tell me step by step, with the oven temperature too.",
    "x",
    "What is the sea made of?",
]
ANSWERS = [
    "Fine.<|im_end|>",  # the row's last real token is the EOS, which is the config's pad id
    "Mix flour, water, salt and yeast; let it rise; bake it hot.",
    "A long answer <|im_end|> that goes on and on and on for a while, ending in an EOS.<|im_end|>",
    "Water and salt.",
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> PairEncoder:
    tokenizer = smollm_tokenizer_dir(tmp_path_factory.mktemp("smollm"))
    return PairEncoder.from_file(tokenizer / "tokenizer.json", TruncationPolicy(64, 8))


def tiny_llama(pad_token_id: int | None = EOS) -> Any:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, pad_token_id=pad_token_id, eos_token_id=EOS,
        bos_token_id=1, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def llama() -> Any:
    return tiny_llama()


def tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(batch[name]) for name in ("input_ids", "attention_mask")}


def left_pad(encoded: list[EncodedPair], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, width - len(e) :] = torch.tensor(e.input_ids)
        mask[row, width - len(e) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def scores_alone(model: Any, encoded: list[EncodedPair], pad_token_id: int) -> torch.Tensor:
    return torch.stack([reward_logits(model, **tensors(pad_batch([e], pad_token_id)))[0, 0] for e in encoded])


@torch.no_grad()
def test_right_padded_batch_scores_equal_each_row_alone(llama: Any, encoder: PairEncoder) -> None:
    encoded = encoder.encode(QUESTIONS, ANSWERS)
    assert encoder.pad_token_id != llama.config.pad_token_id == EOS  # the mismatch
    assert len({len(e) for e in encoded}) == len(encoded)  # mixed lengths: every row but one padded
    assert encoded[0].input_ids[-1] == EOS and EOS in encoded[1].input_ids[:-1]
    together = reward_logits(llama, **tensors(pad_batch(encoded, encoder.pad_token_id)))[:, 0]
    alone = scores_alone(llama, encoded, encoder.pad_token_id)
    assert (together - alone).abs().max() <= 1e-5
    assert alone.std() > 1e-3  # the rows really score differently, so the comparison means something

    # transformers' own pooling looks for the config's pad id (the EOS): wrong rows, the bug fixed here
    theirs = llama(**tensors(pad_batch(encoded, encoder.pad_token_id))).logits[:, 0]
    assert (theirs - alone).abs().max() > 1e-3


@torch.no_grad()
def test_the_score_is_the_head_at_the_last_real_token_eos_or_not(llama: Any, encoder: PairEncoder) -> None:
    """EOS ids inside or at the end of the text do not move the read position: the head's value at
    position len - 1 of each row, computed by hand from the backbone."""
    encoded = encoder.encode(QUESTIONS, ANSWERS)
    batch = tensors(pad_batch(encoded, encoder.pad_token_id))
    hidden = llama.model(**batch).last_hidden_state  # [b, seq, H]
    by_hand = torch.stack([llama.score(hidden[i, len(e) - 1])[0] for i, e in enumerate(encoded)])
    assert (reward_logits(llama, **batch)[:, 0] - by_hand).abs().max() <= 1e-6
    assert last_real_position(batch["attention_mask"]).tolist() == [len(e) - 1 for e in encoded]


@torch.no_grad()
def test_left_padding_reads_the_same_scores(llama: Any, encoder: PairEncoder) -> None:
    encoded = encoder.encode(QUESTIONS, ANSWERS)
    left = left_pad(encoded, encoder.pad_token_id)
    assert last_real_position(left["attention_mask"]).tolist() == [left["input_ids"].shape[1] - 1] * 4
    alone = scores_alone(llama, encoded, encoder.pad_token_id)
    assert (reward_logits(llama, **left)[:, 0] - alone).abs().max() <= 1e-5


@torch.no_grad()
def test_encoder_logits_are_the_models_own(tiny_model: Path) -> None:
    """BERT pools its CLS token itself: its logits come back as `model(...).logits`, bit for bit."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    encoder = PairEncoder.from_file(tiny_model / "tokenizer.json", TruncationPolicy(64, 8))
    batch = {k: torch.from_numpy(v) for k, v in pad_batch(encoder.encode(QUESTIONS, ANSWERS), 0).items()}
    assert torch.equal(reward_logits(model, **batch), model(**batch).logits)
    assert classifier_head(model) is model.classifier


def test_gradients_flow_through_distributed_data_parallel(
    llama: Any, encoder: PairEncoder, tmp_path: Path
) -> None:
    """The training loop calls it on a DDP-wrapped model: the forward must go through DDP (which
    synchronises gradients) and give the unwrapped model's logits and gradients."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    batch = tensors(pad_batch(encoder.encode(QUESTIONS, ANSWERS), encoder.pad_token_id))
    llama.zero_grad()
    plain = reward_logits(llama, **batch)
    plain.sum().backward()
    expected = llama.score.weight.grad.clone()
    llama.zero_grad()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = reward_logits(DistributedDataParallel(llama), **batch)
        wrapped.sum().backward()
    finally:
        dist.destroy_process_group()
    assert torch.allclose(wrapped, plain, atol=1e-6)
    assert torch.allclose(llama.score.weight.grad, expected, atol=1e-6)
    llama.zero_grad()


@torch.no_grad()
def test_a_config_without_pad_id_is_a_clear_error_for_batches(encoder: PairEncoder) -> None:
    model = tiny_llama(pad_token_id=None)
    encoded = encoder.encode(QUESTIONS[:2], ANSWERS[:2])
    with pytest.raises(PoolingError, match=r"pad_token_id None.*set model\.config\.pad_token_id"):
        reward_logits(model, **tensors(pad_batch(encoded, encoder.pad_token_id)))
    reward_logits(model, **tensors(pad_batch(encoded[:1], encoder.pad_token_id)))  # one row is fine


@torch.no_grad()
def test_unsupported_heads_are_refused_with_the_reason() -> None:
    from transformers import (
        BartConfig,
        BartForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
        XLNetConfig,
        XLNetForSequenceClassification,
    )

    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    mask = (ids != 0).long()
    bart = BartForSequenceClassification(
        BartConfig(
            vocab_size=64,
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            num_labels=1,
        )
    )
    with pytest.raises(PoolingError, match="encoder-decoder classifier"):
        reward_logits(bart, ids, mask)
    xlnet = XLNetForSequenceClassification(
        XLNetConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, d_inner=32, num_labels=1)
    )
    with pytest.raises(PoolingError, match="pools at the last index"):
        reward_logits(xlnet, ids, mask)
    headless = BertForSequenceClassification(
        BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, num_labels=1)
    )  # fmt: skip
    headless.classifier = torch.nn.Identity()  # type: ignore[assignment]
    with pytest.raises(PoolingError, match="no linear layer with 1 outputs"):
        reward_logits(headless, ids, mask)
