"""Prompts for the policy: each one shown to the policy as chat messages, and to the RM as it came.

Default: the questions of the embedded hh-rlhf pairs that the reward model did NOT train on (its
validation split), so the policy is optimised and evaluated on dialogues the RM has not memorised.
Two views of one prompt, because the two models were trained on different formats:

* ``messages``: the dialogue as chat turns (Human -> user, Assistant -> assistant), rendered with the
  policy's chat template;
* ``question``: the raw hh text up to and including the last ``"\\n\\nAssistant:"``, which is what the
  reward model saw as the question during its training.

Which view the reward model is sent (`training.policy.scoring.rm_item`) depends on where the prompt came
from: hh text and plain strings go as the (question, answer) pair they always were; a prompt given as
chat messages (``from_chat``) goes as that conversation, because hh text cannot hold its system
message and the RM should read what the policy answered to (the service renders it per bundle: the
chat template of a ``chat`` bundle, hh turns for a ``pair`` one).

A prompts file is JSONL with ``{"prompt": str | [messages]}`` or ``{"question": str}`` per line.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from training.data import ASSISTANT_PREFIX
from training.policy.errors import PromptError
from training.reward.data import (
    DataError,
    PreferencePair,
    load_pairs,
    load_run_split,
    split_pairs,
)

_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class Prompt:
    """One prompt in the two formats the policy and the reward model expect."""

    messages: tuple[tuple[str, str], ...]  # (role, content) chat turns, the last one from the user
    question: str  # raw hh text ending in "\n\nAssistant:", sent to the RM unless `from_chat`
    from_chat: bool = False  # given as chat messages: the RM is sent `messages` + the answer instead

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


def hh_to_messages(dialogue: str) -> tuple[tuple[str, str], ...]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` -> user a, assistant b, user c."""
    parts = _TURN.split(dialogue)
    # parts = [preamble, role, text, role, text, ...]
    if len(parts) < 3 or parts[0].strip():
        raise PromptError(f"not an hh-rlhf dialogue (must start with '\\n\\nHuman:'): {dialogue[:80]!r}")
    turns = [(_ROLES[role], text.strip()) for role, text in zip(parts[1::2], parts[2::2], strict=True)]
    if turns and turns[-1][0] == "assistant" and not turns[-1][1]:
        turns = turns[:-1]  # the open assistant turn the policy is asked to write
    if not turns or turns[-1][0] != "user":
        raise PromptError(f"dialogue must end with a Human turn before the answer: {dialogue[-80:]!r}")
    return tuple(turns)


def messages_to_hh(messages: Sequence[tuple[str, str]]) -> str:
    """Chat turns -> the raw hh question the RM was trained on (ends with "\\n\\nAssistant:")."""
    names = {"user": "Human", "assistant": "Assistant"}
    text = "".join(f"\n\n{names[role]}: {content}" for role, content in messages if role in names)
    return text + ASSISTANT_PREFIX


def prompt_from_hh(question: str) -> Prompt:
    return Prompt(hh_to_messages(question), question)


def prompt_from_text(text: str) -> Prompt:
    """A plain user message (or a whole hh dialogue, detected by its "\\n\\nHuman:" start)."""
    if text.startswith("\n\nHuman:"):
        question = text if text.rstrip().endswith("Assistant:") else text + ASSISTANT_PREFIX
        return prompt_from_hh(question)
    messages = (("user", text.strip()),)
    return Prompt(messages, messages_to_hh(messages))


def load_prompts_file(path: Path) -> list[Prompt]:
    """JSONL with {"prompt": str | [{"role", "content"}, ...]} or {"question": str} per line."""
    if not path.is_file():
        raise PromptError(f"{path}: no such prompts file")
    prompts: list[Prompt] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptError(f"{where}: invalid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise PromptError(f"{where}: expected an object with 'prompt' or 'question'")
        value = record.get("prompt", record.get("question"))
        if isinstance(value, str) and value.strip():
            prompts.append(prompt_from_text(value))
        elif isinstance(value, list) and value:
            prompts.append(_prompt_from_chat(value, where))
        else:
            raise PromptError(f"{where}: needs a non-empty 'prompt' or 'question' (string or chat messages)")
    if not prompts:
        raise PromptError(f"{path}: no prompts")
    return prompts


def _prompt_from_chat(value: list, where: str) -> Prompt:
    turns: list[tuple[str, str]] = []
    for message in value:
        if not (isinstance(message, dict) and isinstance(message.get("content"), str)):
            raise PromptError(f"{where}: chat messages need 'role' and 'content' strings")
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise PromptError(f"{where}: unknown role {role!r}")
        if role == "system" and turns:  # the service's rule for the conversation the RM is sent
            raise PromptError(f"{where}: message {len(turns)}: a system message may only come first")
        turns.append((str(role), message["content"]))
    if turns[-1][0] != "user":
        raise PromptError(f"{where}: the last chat message must be from the user")
    return Prompt(tuple(turns), messages_to_hh(turns), from_chat=True)


def heldout_questions(reward_run: Path | None = None) -> list[str]:
    """hh questions of the RM's validation split that do not also occur in its training split.

    With a reward run dir, its saved split (``training.reward.data.load_run_split``); otherwise the
    deterministic split of the embedded data with RewardConfig's default val_fraction and seed.
    """
    train, val = _reward_split(reward_run)
    seen = {p.question for p in train}
    out: list[str] = []
    for pair in val:
        if pair.question not in seen and pair.question not in out:
            out.append(pair.question)
    if not out:
        raise PromptError("the reward model's validation split has no question it did not train on")
    return out


def load_prompts(prompts_file: str | None, reward_run: str | None) -> list[Prompt]:
    """A run's prompt source: its prompts file, else the held-out hh questions of its reward run (or
    of the embedded data's default split). The trainer draws from it, and re-scoring reads it back."""
    if prompts_file:
        return load_prompts_file(Path(prompts_file))
    return [prompt_from_hh(q) for q in heldout_questions(Path(reward_run) if reward_run else None)]


def _reward_split(reward_run: Path | None) -> tuple[Sequence[PreferencePair], Sequence[PreferencePair]]:
    if reward_run is not None:
        try:
            return load_run_split(reward_run)  # the split the reward run trained on, from its saved config
        except DataError as err:
            raise PromptError(f"--reward-run: {err}") from err
    from training.reward.config import RewardConfig

    defaults = RewardConfig()
    return split_pairs(load_pairs().pairs, defaults.val_fraction, defaults.seed)


@dataclass
class PromptSets:
    train: list[Prompt]
    eval: list[Prompt]
    skipped_too_long: int


def build_prompt_sets(
    prompts: Sequence[Prompt], count_tokens: Callable[[Prompt], int], max_tokens: int, n_eval: int, seed: int
) -> PromptSets:
    """Drop prompts over ``max_tokens`` (chat template applied), shuffle with ``seed``, hold out ``n_eval``.

    The evaluation prompts never appear in training.
    """
    kept = [p for p in prompts if count_tokens(p) <= max_tokens]
    skipped = len(prompts) - len(kept)
    if not kept:
        raise PromptError(f"all {len(prompts)} prompts are longer than max_prompt_tokens={max_tokens}")
    random.Random(seed).shuffle(kept)
    n_eval = min(n_eval, len(kept) - 1)
    return PromptSets(train=kept[n_eval:], eval=kept[:n_eval], skipped_too_long=skipped)
