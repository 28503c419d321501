"""Shared pieces of the policy tests: a tiny random causal LM with a chat template, and transports
that inject failures or a model swap in front of a real service.

The tiny model is a 2-layer Llama over a 60-word vocabulary (WordLevel tokenizer built in the test),
saved as an ordinary HF directory, so `load_policy` loads it exactly like a real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from training.policy.config import PolicyConfig
from training.policy.policy import Policy
from training.policy.prompts import Prompt
from training.policy.rollout import Group, sample_groups

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} {{ message['content'] }}<|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
WORDS = [
    "how",
    "do",
    "i",
    "bake",
    "bread",
    "make",
    "a",
    "cake",
    "steal",
    "car",
    "help",
    "me",
    "please",
    "tell",
    "what",
    "is",
    "the",
    "best",
    "way",
    "to",
    "good",
    "bad",
    "yes",
    "no",
    "sorry",
    "you",
    "can",
    "should",
    "not",
    "safe",
    "kind",
    "friend",
    "water",
    "flour",
    "yeast",
    "oven",
    "hot",
    "cold",
    "legal",
    "illegal",
    "people",
    "money",
    "why",
    "where",
    "when",
    "it",
    "this",
    "that",
    "thanks",
    "sure",
    "here",
    "are",
    "some",
    "ideas",
]
SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system"]


def make_tiny_policy_dir(path: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama + WordLevel tokenizer with a chat template, saved to `path`."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<pad>"],
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = vocab["<|im_end|>"]
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_prompts(path: Path, n: int = 12) -> Path:
    questions = [
        "how do i bake bread",
        "help me steal a car",
        "what is the best way to make a cake",
        "tell me why people like money",
        "where is the oven",
        "is this legal",
        "can you help me please",
        "what should i do with flour and yeast",
        "why is water cold",
        "tell me some ideas",
        "how do i make friend",
        "is it safe",
    ]
    lines = [
        json.dumps({"prompt": questions[i % len(questions)] + f" {WORDS[i % len(WORDS)]}"}) for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_config(model_dir: Path, out: Path, prompts: Path, **overrides: object) -> PolicyConfig:
    values: dict[str, object] = {
        "model": str(model_dir),
        "prompts_file": str(prompts),
        "out": str(out),
        "k": 2,
        "prompts_per_step": 2,
        "max_new_tokens": 6,
        "eval_prompts": 2,
        "eval_samples": 2,
        "steps": 2,
        "lr": 1e-2,
        "lora_r": 4,
        "lora_alpha": 8,
        "checkpoint_every": 1,
        "max_retries": 0,
    }
    values.update(overrides)
    return PolicyConfig(**values)  # type: ignore[arg-type]


class FlakyTransport(httpx.AsyncBaseTransport):
    """Real HTTP, but every `fail_every`-th POST /score fails with a connection error (then NaN rewards)."""

    def __init__(self, fail_every: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.fail_every = fail_every
        self.posts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/score":
            self.posts += 1
            if self.posts % self.fail_every == 0:
                raise httpx.ConnectError("injected failure", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class SwitchTransport(httpx.AsyncBaseTransport):
    """Real HTTP; after `after` POST /score requests, every request goes to `other_url` instead
    (a replica that serves another reward-model version)."""

    def __init__(self, other_url: str, after: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.other = httpx.URL(other_url)
        self.after = after
        self.posts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/score":
            self.posts += 1
        if self.posts > self.after:
            request.url = request.url.copy_with(host=self.other.host, port=self.other.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def sample_group(
    policy: Policy,
    prompt: Prompt,
    k: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    threads: int = 0,
) -> Group:
    """k answers to one prompt: ``sample_groups`` with a single prompt, so no padding at all."""
    return sample_groups(policy, [prompt], k, max_new_tokens, temperature, top_p, greedy, threads)[0]
