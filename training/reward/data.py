"""Preference pairs from disk: hh-rlhf dialogues, explicit JSONL, conversations, or a saved `datasets` dataset.

    report = load_pairs()                       # the embedded 2,000 hh-rlhf harmless pairs
    report = load_pairs("pairs.jsonl.gz")       # any of the formats below, gz or plain
    train, val = split_pairs(report.pairs, val_fraction=0.1, seed=0)

Formats (detected from the first record, then every record must match it):

* hh-rlhf: ``{"chosen": dialogue, "rejected": dialogue}``, cut by ``training.data.split_hh_dialogue``
  (the question keeps the last ``"\\n\\nAssistant:"``; the answer is the rest). Rows whose two
  questions differ (or that have no assistant turn) are skipped and counted, never silently dropped.
* explicit: ``{"question": ..., "chosen": answer, "rejected": answer}``.
* conversation (TRL's conversational preference format, implicit prompt):
  ``{"chosen": [messages], "rejected": [messages]}``, each a whole conversation of ``{"role",
  "content"}`` messages ending with the assistant answer; the prompt is what they share before it.
* conversation-prompt (TRL's explicit prompt): ``{"prompt": [messages], "chosen": [messages],
  "rejected": [messages]}``; ``prompt + chosen`` and ``prompt + rejected`` are the two conversations.
* a directory written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``; of a
  dict, the ``train`` split or the only split) whose rows are any of the above.

A conversation follows the service's rules (`service.conversation.validate_conversation`: known
roles, string contents, a system message only first, the assistant last). Its pair keeps the messages
before the answers as ``prompt`` (system message included), so a ``chat`` run renders the conversation
it is and a ``pair`` run reads it as hh turns (`conversation_to_hh`), as the service reads conversations
sent to a bundle of either format. Two conversations that differ before their final answers are the
hh format's mismatched questions: skipped and counted as ``question_mismatch``.

Pairs whose two answers are identical carry no preference and are skipped and counted too.
A malformed line raises :class:`DataError` naming the file and line, because a loader that guesses
turns a broken file into a quietly worse model.

torch-free: the export and evaluation commands load data without the training stack.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.conversation import (
    Conversation,
    ConversationError,
    Message,
    conversation_to_hh,
    validate_conversation,
)
from training.data import embedded_pairs_path, split_hh_dialogue

_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A data source cannot be read as preference pairs; the message names the file (and line)."""


@dataclass(frozen=True)
class PreferencePair:
    """One preference: for ``question``, answer ``chosen`` was preferred over ``rejected``.

    A conversational row also keeps ``prompt``, its messages before the two answers; ``chosen`` and
    ``rejected`` are then the contents of the final assistant messages, and ``question`` is the prompt
    as hh text (`conversation_to_hh`) for the readers that want one string (the policy's prompts).
    Encoders read such a pair as its conversations (`batching.encode_pairs`), never as that string.
    """

    question: str
    chosen: str
    rejected: str
    prompt: Conversation | None = None  # None: a text pair, encoded as (question, answer)

    def conversation(self, answer: str) -> Conversation:
        """The prompt followed by ``answer`` as the assistant message (a conversational pair only)."""
        assert self.prompt is not None, "a text pair has no conversation; encode its question and answer"
        return (*self.prompt, Message("assistant", answer))


@dataclass
class LoadReport:
    """The pairs read from ``source`` plus what was skipped and why (reason -> count)."""

    pairs: list[PreferencePair]
    skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    source: str = ""


def load_pairs(source: str | Path | None = None) -> LoadReport:
    """Read preference pairs from a JSONL file (gz or plain) or a saved dataset directory."""
    if source is None:
        try:
            path = embedded_pairs_path()
        except FileNotFoundError as err:
            raise DataError(str(err)) from err
    else:
        path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    records = _dataset_records(path) if path.is_dir() else _jsonl_records(path)
    pairs: list[PreferencePair] = []
    skipped: Counter[str] = Counter()
    fmt: str | None = None
    for where, record in records:
        if fmt is None:
            fmt = _detect_format(record, where)
        pair_or_reason = _to_pair(record, fmt, where)
        if isinstance(pair_or_reason, str):
            skipped[pair_or_reason] += 1
        else:
            pairs.append(pair_or_reason)
    if fmt is None:
        raise DataError(f"{path}: no records (empty file or dataset)")
    if not pairs:
        raise DataError(f"{path}: every record was skipped ({dict(skipped)})")
    return LoadReport(pairs, sum(skipped.values()), dict(skipped), str(path))


def split_pairs(
    pairs: Sequence[PreferencePair], val_fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Deterministic (train, val): the ``round(n * val_fraction)`` pairs with the smallest seeded hash.

    A content hash (not Python's salted ``hash`` or a process-global RNG) gives the same split on
    every run and machine; both halves keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(pairs) * val_fraction)
    if val_fraction > 0 and len(pairs) > 1:
        n_val = min(max(n_val, 1), len(pairs) - 1)
    keys = [_pair_hash(p, seed, i) for i, p in enumerate(pairs)]
    val_idx = set(sorted(range(len(pairs)), key=keys.__getitem__)[:n_val])
    train = [p for i, p in enumerate(pairs) if i not in val_idx]
    val = [p for i, p in enumerate(pairs) if i in val_idx]
    return train, val


def _pair_hash(pair: PreferencePair, seed: int, index: int) -> bytes:
    # the index breaks ties between duplicate rows so that the split size is exact
    text = f"{seed}\x00{index}\x00{pair.question}\x00{pair.chosen}\x00{pair.rejected}"
    if pair.prompt is not None:  # the hh question drops a system message; the hash keeps it
        text += "\x00" + json.dumps([m.as_dict() for m in pair.prompt])
    return hashlib.sha256(text.encode("utf-8")).digest()


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as handle:
            text = io.TextIOWrapper(handle, encoding="utf-8")
            for lineno, line in enumerate(text, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason})") from err
    except (gzip.BadGzipFile, EOFError) as err:
        raise DataError(f"{path}: corrupt gzip file ({err})") from err


def _dataset_records(path: Path) -> Iterable[tuple[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({err})") from err
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            split = "train"
        elif len(loaded) == 1:
            split = next(iter(loaded))
        else:
            raise DataError(f"{path}: DatasetDict without a 'train' split; splits: {sorted(loaded)}")
        loaded = loaded[split]
        label = f"{path}[{split}]"
    else:
        label = str(path)
    return ((f"{label} row {i}", row) for i, row in enumerate(loaded))


def _detect_format(record: Any, where: str) -> str:
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "question" in record:
        return "explicit"
    if "chosen" in record and "rejected" in record:
        if isinstance(record["chosen"], list | tuple):  # a datasets row gives lists of dicts
            return "conversation-prompt" if "prompt" in record else "conversation"
        return "hh-rlhf"
    raise DataError(
        f"{where}: unknown record format with keys {sorted(record)}; expected chosen/rejected "
        "dialogues, question/chosen/rejected, or chosen/rejected (and prompt) message lists"
    )


_KEYS = {
    "explicit": ("question", "chosen", "rejected"),
    "hh-rlhf": ("chosen", "rejected"),
    "conversation": ("chosen", "rejected"),
    "conversation-prompt": ("prompt", "chosen", "rejected"),
}


def _to_pair(record: Any, fmt: str, where: str) -> PreferencePair | str:
    """A pair, or the reason (a short key) why the record is skipped. Raises on malformed records."""
    keys = _KEYS[fmt]
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing} for the {fmt} format")
    if fmt.startswith("conversation"):
        return _conversation_pair(record, fmt, where)
    for key in keys:
        if not isinstance(record[key], str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    if fmt == "explicit":
        question, chosen, rejected = record["question"], record["chosen"], record["rejected"]
    else:
        chosen_split = split_hh_dialogue(record["chosen"])
        rejected_split = split_hh_dialogue(record["rejected"])
        if chosen_split is None or rejected_split is None:
            return "no_assistant_turn"
        if chosen_split[0] != rejected_split[0]:
            return "question_mismatch"
        question, chosen, rejected = chosen_split[0], chosen_split[1], rejected_split[1]
    if chosen == rejected:
        return "identical_answers"
    return PreferencePair(question, chosen, rejected)


def _conversation_pair(record: Mapping[str, Any], fmt: str, where: str) -> PreferencePair | str:
    """A conversational row (module docstring) as a pair with its prompt, or the reason it is skipped."""
    if fmt == "conversation" and "prompt" in record:
        raise DataError(
            f"{where}: has a 'prompt', but the first record has none (the conversation format, implicit "
            "prompt); one format per file"
        )
    prompt = _message_list(record, "prompt", where) if fmt == "conversation-prompt" else []
    sides = []
    for key in ("chosen", "rejected"):
        messages = _message_list(record, key, where)
        if fmt == "conversation-prompt" and not messages:
            raise DataError(f"{where}: {key!r} is empty: it needs the assistant answer being scored")
        label = f"'prompt' + {key!r}" if fmt == "conversation-prompt" else repr(key)
        try:
            sides.append(validate_conversation(prompt + messages))
        except ConversationError as exc:
            raise DataError(f"{where}: {label}: {exc}") from exc
    chosen, rejected = sides
    if chosen[:-1] != rejected[:-1]:
        return "question_mismatch"  # as an hh row whose two dialogues differ before the last answer
    if chosen[-1].content == rejected[-1].content:
        return "identical_answers"
    question = conversation_to_hh(chosen)[0]
    return PreferencePair(question, chosen[-1].content, rejected[-1].content, chosen[:-1])


def _message_list(record: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = record[key]
    if not isinstance(value, list | tuple):
        raise DataError(
            f"{where}: {key!r} must be a list of messages (the first record's format), "
            f"got {type(value).__name__}"
        )
    return list(value)


def load_run_split(run_dir: str | Path) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, val) of a finished or running training run, re-created from its reward_config.json.

    ``run_dir`` may be the run's output dir or its ``final``/``checkpoint`` subdirectory.
    """
    from training.reward.config import CONFIG_NAME, RewardConfig

    root = Path(run_dir)
    for candidate in (root / CONFIG_NAME, root / "final" / CONFIG_NAME, root / "checkpoint" / CONFIG_NAME):
        if candidate.is_file():
            config = RewardConfig.load(candidate)
            return split_pairs(load_pairs(config.data).pairs, config.val_fraction, config.seed)
    raise DataError(f"{root}: no {CONFIG_NAME} (not a training run directory)")
