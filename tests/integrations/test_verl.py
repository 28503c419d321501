"""veRL: its released reward loop, unmodified, against a real service: the discriminative-RM request to a
vLLM ``/classify``, and our ``compute_score`` module loaded and called the way veRL loads and calls it.

The code under test comes from the verl 0.9.1 wheel on PyPI (tests/integrations/released.py), each file
executed from the wheel as is:

* ``verl/experimental/reward_loop/reward_loop.py``: ``RewardLoopWorker.compute_score`` ->
  ``compute_score_disrm`` renders the conversation with the reward model's tokenizer, posts
  ``{"model", "input", "use_activation": false}`` to ``http://<router>/classify`` through its own
  ``_post_request`` (aiohttp, 16 tries) and reads ``data[-1].probs[-1]``. Stubbed imports (never called
  on this path): ray, ray.actor, omegaconf, tensordict, verl (DataProto), verl.protocol,
  verl.single_controller.ray.base, verl.trainer.ppo.reward, verl.utils, verl.utils.fs,
  verl.utils.ray_utils and the sibling reward_model module (all used by the Ray set-up in ``__init__``,
  which the test replaces by setting the four attributes the method reads: config, router address,
  the policy's and the reward model's tokenizers).
* ``verl/trainer/ppo/reward.py``: ``get_custom_reward_fn`` loads ``custom_reward_function.path`` /
  ``name`` / ``reward_kwargs`` with the real ``verl/utils/import_utils.py``; stubbed: verl (DataProto),
  verl.utils.reward_score.
* ``verl/experimental/reward_loop/reward_manager/naive.py`` on the real ``base.py`` and
  ``verl/utils/ray_utils.py``: ``NaiveRewardManager.run_single`` decodes the response and awaits (or runs
  in its thread pool) ``compute_score``. Stubbed: verl (DataProto), ray, omegaconf, the reward_manager
  package (its ``register`` decorator, given as the identity) and verl.utils.reward_score.

The reward model's tokenizer is a real transformers tokenizer (the bundle's tokenizer.json) with an hh
chat template, so the text veRL posts is an hh dialogue and the service's split rule applies; the
policy's tokenizer is one token per character. veRL has no "no reward" value: its own RM path raises
after its retries, and so does our compute_score; the tests require that raise, never a 0.
"""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from integrations.verl_reward import prompt_of
from service.client import RewardUnavailable
from tests.integrations.conftest import SCORE_MEAN, SCORE_STD, TOLERANCE, scores_of
from tests.integrations.released import load_released, released_package
from tests.service.conftest import LiveServer, dead_url

VERSION = "0.9.1"
# hh turns as a chat template (the newlines as jinja string literals: a template's own line breaks
# after a tag are trimmed, as transformers renders with trim_blocks)
HH_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ '\\n\\nHuman: ' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '\\n\\nAssistant: ' + m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}"
)
RAW_PROMPT = [{"role": "user", "content": "How do I bake bread?"}]
RESPONSE = "Mix flour and water."
PAIR = ("\n\nHuman: How do I bake bread?\n\nAssistant:", " Mix flour and water.")


class CharTokenizer:
    """The policy's tokenizer as veRL uses it here: decode ids (one per character), and its eos token."""

    eos_token = "</s>"

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return "".join(chr(int(i)) for i in ids)


class Sample:
    """One row of veRL's DataProto, as the reward code reads it: ``batch`` tensors and ``non_tensor_batch``."""

    def __init__(self, response: str, non_tensor: dict[str, Any], pad: int = 4) -> None:
        ids = [ord(c) for c in response] + [0] * pad  # right-padded response, as veRL stores it
        prompt_mask = [1] * 5
        self.batch = {
            "responses": np.array(ids),
            "attention_mask": np.array(prompt_mask + [1] * len(response) + [0] * pad),
        }
        self.non_tensor_batch = non_tensor


class Data:
    """The slicing veRL's reward code does on a DataProto: ``len``, ``data[-1:]``, ``data[0]``."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | slice) -> Any:
        return Data(self.samples[index]) if isinstance(index, slice) else self.samples[index]


@pytest.fixture(scope="module")
def verl_root() -> Path:
    return released_package("verl", VERSION)


def _no_wait(module: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module's retry pauses made 0 (its own asyncio name only)."""
    fast = types.ModuleType("asyncio")
    fast.__dict__.update(vars(asyncio))
    fast.sleep = lambda seconds, result=None: asyncio.sleep(0, result)  # type: ignore[attr-defined]
    monkeypatch.setattr(module, "asyncio", fast)


# ---- the reward loop's discriminative-RM request to a vLLM /classify ---------------------------------
@pytest.fixture
def reward_loop(verl_root: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    stubs: dict[str, dict[str, Any]] = {
        name: {}
        for name in ["ray", "ray.actor", "omegaconf", "tensordict", "verl", "verl.protocol",
                     "verl.single_controller.ray.base", "verl.trainer.ppo.reward", "verl.utils", "verl.utils.fs",
                     "verl.utils.ray_utils", "verl.experimental.reward_loop.reward_model"]
    }  # fmt: skip
    return load_released(verl_root, "verl.experimental.reward_loop.reward_loop", monkeypatch, stubs)


def rm_tokenizer(bundle_tokenizer: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(bundle_tokenizer), chat_template=HH_TEMPLATE)


def worker(reward_loop: types.ModuleType, address: str) -> Any:
    """A RewardLoopWorker with what ``compute_score`` reads set by hand instead of by its Ray set-up."""
    worker = reward_loop.RewardLoopWorker.__new__(reward_loop.RewardLoopWorker)
    worker.config = types.SimpleNamespace(
        reward=types.SimpleNamespace(
            custom_reward_function=types.SimpleNamespace(path=None),
            reward_model=types.SimpleNamespace(enable=True, model_path="tiny-rm", rollout=types.SimpleNamespace(name="vllm")),
        )
    )  # fmt: skip
    worker.reward_router_address = address
    worker.input_tokenizer = CharTokenizer()
    from tests.bundle_factory import minilm_tokenizer_json

    worker.reward_model_tokenizer = rm_tokenizer(minilm_tokenizer_json())
    return worker


def test_classify_with_verls_reward_loop_request(service: LiveServer, reward_loop: types.ModuleType) -> None:
    data = Data([Sample(RESPONSE + "</s>", {"raw_prompt": np.array(RAW_PROMPT, dtype=object)})])
    address = service.url.removeprefix("http://")
    result = asyncio.run(worker(reward_loop, address).compute_score(data))
    (expected,) = scores_of(service.url, [PAIR])
    assert result["reward_score"] == pytest.approx(expected, abs=TOLERANCE)


def test_classify_failure_raises_in_verl_never_a_zero(
    reward_loop: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_wait(reward_loop, monkeypatch)
    data = Data([Sample(RESPONSE, {"raw_prompt": np.array(RAW_PROMPT, dtype=object)})])
    with pytest.raises(aiohttp.ClientConnectorError):
        asyncio.run(worker(reward_loop, dead_url().removeprefix("http://")).compute_score(data))


# ---- our compute_score, loaded by veRL's get_custom_reward_fn, called by its NaiveRewardManager -------
@pytest.fixture
def verl_reward_path(
    verl_root: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[types.ModuleType, types.ModuleType]:
    """(verl.trainer.ppo.reward, the naive reward manager module), from the wheel."""
    verl_stub = {"DataProto": object}
    load_released(verl_root, "verl.utils.import_utils", monkeypatch, {"verl": verl_stub})
    reward = load_released(
        verl_root, "verl.trainer.ppo.reward", monkeypatch, {"verl": verl_stub, "verl.utils.reward_score": {}}
    )
    load_released(verl_root, "verl.utils.ray_utils", monkeypatch, {"verl": verl_stub, "ray": {}})
    base_stubs = {"verl": verl_stub, "omegaconf": {"DictConfig": object}}
    load_released(verl_root, "verl.experimental.reward_loop.reward_manager.base", monkeypatch, base_stubs)
    naive = load_released(
        verl_root,
        "verl.experimental.reward_loop.reward_manager.naive",
        monkeypatch,
        {
            "verl": verl_stub,
            "verl.experimental.reward_loop.reward_manager": {"register": lambda name: lambda cls: cls},
            "verl.utils.reward_score": {},
        },
    )
    return reward, naive


def run_naive(
    verl_reward_path: Any, name: str, reward_kwargs: dict[str, Any], extra_info: dict[str, Any]
) -> Any:
    """veRL's config -> get_custom_reward_fn -> NaiveRewardManager.run_single for one sample."""
    reward, naive = verl_reward_path
    config = types.SimpleNamespace(
        reward={"custom_reward_function": {"path": "pkg://integrations.verl_reward", "name": name,
                                           "reward_kwargs": reward_kwargs}}
    )  # fmt: skip
    compute_score = reward.get_custom_reward_fn(config)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # veRL's get_event_loop() takes the thread's loop
    try:
        manager = naive.NaiveRewardManager(config, CharTokenizer(), compute_score)
        assert manager.loop is loop
        non_tensor = {"data_source": "hh", "reward_model": {"ground_truth": None}, "extra_info": extra_info}
        return loop.run_until_complete(manager.run_single(Data([Sample(RESPONSE, non_tensor)])))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.mark.parametrize("name", ["compute_score", "compute_score_async"])
def test_compute_score_through_verls_loader_and_reward_manager(
    service: LiveServer, verl_reward_path: Any, name: str
) -> None:
    (expected,) = scores_of(service.url, [PAIR])
    rows: list[dict[str, Any]] = [{"question": "How do I bake bread?"}, {"prompt": RAW_PROMPT, "index": 3}]
    for extra_info in rows:
        out = run_naive(verl_reward_path, name, {"service_url": service.url}, extra_info)
        assert out["reward_score"] == pytest.approx(expected, abs=TOLERANCE)
        assert out["reward_extra_info"]["truncated"] is False
    normalized = run_naive(
        verl_reward_path, name, {"service_url": service.url, "normalized": True}, extra_info
    )
    assert normalized["reward_score"] == pytest.approx((expected - SCORE_MEAN) / SCORE_STD, abs=TOLERANCE)


def test_compute_score_reads_the_service_url_from_the_environment(
    service: LiveServer, verl_reward_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLHF_SERVICE_URL", service.url)
    out = run_naive(verl_reward_path, "compute_score_async", {}, {"question": "How do I bake bread?"})
    assert out["reward_score"] == pytest.approx(scores_of(service.url, [PAIR])[0], abs=TOLERANCE)


@pytest.mark.parametrize("name", ["compute_score", "compute_score_async"])
def test_compute_score_failure_raises_in_verl_never_a_zero(verl_reward_path: Any, name: str) -> None:
    kwargs = {"service_url": dead_url(), "max_retries": 0, "timeout": 2.0}
    with pytest.raises(RewardUnavailable):
        run_naive(verl_reward_path, name, kwargs, {"question": "How do I bake bread?"})


def test_a_row_without_its_prompt_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="extra_info as 'prompt' or 'question'"):
        prompt_of({"index": 1, "num_turns": None})
