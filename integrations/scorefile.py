"""`rlhf score`'s file side: JSONL(.gz) rows in, one scored row out per input row, in order, resumable.

    summary = score_file(Path("in.jsonl.gz"), Path("scores.jsonl"), client, resume=True)

A row is one of (first match wins):

==========================================  =================================================
``{"question", "answer"}``                  sent as is, exactly like ``POST /score``
``{"prompt", "completion" | "response"}``   converted by `integrations.convert` (string or messages)
``{"chosen", "rejected"}`` (+ ``prompt``)   a preference row: both sides scored, and their margin
``{"messages" | "conversation"}``           a conversation ending in the answer (chat messages)
``{"text" | "dialogue"}``                   one text: an hh dialogue, or chat-templated text
==========================================  =================================================

Converted rows are sent in the input the served bundle reads (`integrations.served_format`): hh pairs
for a `pair` bundle, conversations (system messages and contents as written) for a `chat` bundle.

Out: ``{"row", "score", "normalized", "truncated", "model_version"}`` per row (``"chosen"`` /
``"rejected"`` objects and ``"margin"`` for a preference row; the input's ``"id"`` when it has one).
The output is append-only and written block by block in input order, only up to the first row the
service could not score, so after an interruption (or a service that gave up) ``--resume`` counts the
complete lines already there (cutting a torn last line), skips that many input rows and goes on: the
file ends up as an uninterrupted run would have written it. Every input row is read and checked
before the first request, so a malformed line fails the run before it costs any scoring.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from integrations.convert import InputFormat, Item, split_conversation_item, to_item
from integrations.served_format import BlockingClient, score_as_served
from service.client import ScoreResult

SHAPES = (
    "{question, answer}, {prompt, completion|response}, {chosen, rejected} (+ prompt), "
    "{messages|conversation} or {text|dialogue}"
)
SINGLE = ""  # the item key of a row that holds one pair


class ScoreFileError(ValueError):
    """The input or output file cannot be used as asked; the message names the file (and line)."""


class ScoringStopped(RuntimeError):
    """The service could not score a row after the client's retries; the rows before it are written."""


Scorer = BlockingClient  # what score_file needs of its client: `service.client.RewardClient`


@dataclass(frozen=True)
class Row:
    index: int  # 0-based position in the input file (blank lines do not count)
    id: Any
    items: dict[str, Item]  # SINGLE -> item, or "chosen"/"rejected" -> item; pairs for a pair bundle
    chat_items: dict[str, Item]  # the same for a chat bundle

    def items_for(self, input_format: InputFormat) -> dict[str, Item]:
        return self.chat_items if input_format == "chat" else self.items


@dataclass
class Summary:
    rows: int  # rows in the input
    skipped: int  # rows already in the output when the run started (--resume)
    written: int  # rows this run appended
    model_version: str | None


def items_of(record: Mapping[str, Any], input_format: InputFormat = "pair") -> dict[str, Item] | None:
    """The item(s) a row holds for a bundle of ``input_format`` (pairs for ``pair``), or None when it
    has none of the accepted shapes. A ``{question, answer}`` row is a pair for either format."""
    if isinstance(record.get("question"), str) and isinstance(record.get("answer"), str):
        return {SINGLE: (record["question"], record["answer"])}
    completion = record.get("completion", record.get("response"))
    if "prompt" in record and completion is not None and "chosen" not in record:
        return {SINGLE: to_item(record["prompt"], completion, input_format)}
    sides = ("chosen", "rejected")
    if "chosen" in record and "rejected" in record:
        if "prompt" in record:
            return {side: to_item(record["prompt"], record[side], input_format) for side in sides}
        return {side: split_conversation_item(record[side], input_format) for side in sides}
    for key in ("messages", "conversation", "text", "dialogue"):
        if isinstance(record.get(key), str | list) and record[key]:
            return {SINGLE: split_conversation_item(record[key], input_format)}
    return None


def _open_text(path: Path) -> IO[str]:
    if not path.is_file():
        raise ScoreFileError(f"{path}: no such file")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_rows(path: Path) -> Iterator[Row]:
    """The rows of a JSONL or JSONL.gz file, in order; ScoreFileError names the first bad line."""
    with _open_text(path) as handle:
        index = 0
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ScoreFileError(f"{path}:{lineno}: not JSON ({err.msg})") from err
            items = items_of(record) if isinstance(record, dict) else None
            if items is None:
                raise ScoreFileError(f"{path}:{lineno}: expected one of {SHAPES}")
            chat_items = items_of(record, "chat")
            assert chat_items is not None, "a row's shape does not depend on the format"
            yield Row(index, record.get("id"), items, chat_items)
            index += 1


def rows_done(out: Path) -> tuple[int, str | None]:
    """(complete rows in an existing output, model version of the last); a torn last line is cut off."""
    if not out.exists():
        return 0, None
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with out.open("r+b") as handle:  # a run killed mid-write: drop the partial line
            handle.truncate(len(complete))
    version = None
    lines = complete.decode("utf-8").splitlines()
    for number, line in enumerate(lines):
        try:
            written = json.loads(line)
        except json.JSONDecodeError as err:
            raise ScoreFileError(f"{out}:{number + 1}: not JSON; is this an output of rlhf score?") from err
        if not isinstance(written, dict) or written.get("row") != number:
            raise ScoreFileError(
                f"{out}:{number + 1}: expected row {number}; is this an output of rlhf score?"
            )
        version = written.get("model_version")
    return len(lines), version


def _scored(result: ScoreResult, at: int) -> dict[str, Any]:
    return {
        "score": float(result.scores[at]),
        "normalized": float(result.normalized[at]),
        "truncated": bool(result.truncated[at]),
    }


def output_row(row: Row, result: ScoreResult, first: int) -> dict[str, Any]:
    """The output line of ``row``, whose items are ``result``'s entries from ``first`` on."""
    out: dict[str, Any] = {"row": row.index}
    if row.id is not None:
        out["id"] = row.id
    if SINGLE in row.items:
        out.update(_scored(result, first))
    else:
        out["chosen"], out["rejected"] = _scored(result, first), _scored(result, first + 1)
        out["margin"] = out["chosen"]["score"] - out["rejected"]["score"]
    out["model_version"] = result.model_version
    return out


def _items(block: Sequence[Row], input_format: InputFormat) -> list[Item]:
    return [item for row in block for item in row.items_for(input_format).values()]


def _check_version(seen: str | None, expected: str | None, allow_change: bool, out: Path) -> None:
    if expected is not None and seen is not None and seen != expected and not allow_change:
        raise ScoringStopped(
            f"the service now serves reward-model version {seen}, but {out} was scored with {expected}: "
            "scores of two versions are not comparable. Score into a new file, or pass --allow-model-change."
        )


def score_file(
    data: Path,
    out: Path,
    client: Scorer,
    *,
    resume: bool = False,
    block_rows: int = 512,
    allow_model_change: bool = False,
    on_total: Callable[[int, int], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> Summary:
    """Score every row of ``data`` into ``out``; ``on_total(rows, skipped)`` then ``on_rows(n)`` per block."""
    if block_rows < 1:
        raise ValueError("block_rows must be >= 1")
    if out.exists() and not resume:
        raise ScoreFileError(f"{out} exists: pass --resume to continue it, or choose another --out")
    total = sum(1 for _ in read_rows(data))  # checks every row before any request
    done, version = rows_done(out)
    if done > total:
        raise ScoreFileError(f"{out} holds {done} rows but {data} only {total}: it is not this file's output")
    if on_total is not None:
        on_total(total, done)
    written = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = itertools.islice(read_rows(data), done, None)
    with out.open("a", encoding="utf-8") as handle:
        while block := list(itertools.islice(rows, block_rows)):
            result, _ = score_as_served(client, functools.partial(_items, block))
            _check_version(result.model_version, version, allow_model_change, out)
            version = result.model_version or version
            failed = np.isnan(result.scores)
            lines, first = [], 0
            for row in block:
                if failed[first : first + len(row.items)].any():
                    break
                lines.append(json.dumps(output_row(row, result, first)) + "\n")
                first += len(row.items)
            handle.write("".join(lines))
            handle.flush()
            written += len(lines)
            if on_rows is not None:
                on_rows(len(lines))
            if len(lines) < len(block):
                stopped_at = block[len(lines)].index
                raise ScoringStopped(
                    f"row {stopped_at} could not be scored ({'; '.join(result.errors[:1])}); rows before it "
                    f"are in {out}: rerun with --resume to continue from there"
                )
    return Summary(total, done, written, version)
