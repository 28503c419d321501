"""integrations.scorefile: every row shape, input order, scores equal /score, and resuming after a stop."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from integrations.scorefile import ScoreFileError, ScoringStopped, items_of, rows_done, score_file
from service.client import RewardClient, ScoreItem, ScoreResult
from tests.integrations.conftest import TOLERANCE, scores_of
from tests.service.conftest import LiveServer

Q = "\n\nHuman: How do I bake bread?\n\nAssistant:"
ROWS: list[dict[str, Any]] = [
    {"question": Q, "answer": " Mix flour.", "id": "a"},
    {"prompt": [{"role": "user", "content": "How do I bake bread?"}], "completion": "Knead it."},
    {"prompt": "How do I bake bread?", "response": "Use an oven.<|im_end|>"},
    {"chosen": Q + " Use yeast.", "rejected": Q + " Go away."},
    {"prompt": "How do I bake bread?", "chosen": "Use yeast.", "rejected": "No."},
    {
        "messages": [
            {"role": "user", "content": "How do I bake bread?"},
            {"role": "assistant", "content": "Slowly."},
        ]
    },
    {"text": "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\nHot.<|im_end|>"},
]
# the pairs those rows must be scored as, in order
PAIRS = [
    (Q, " Mix flour."), (Q, " Knead it."), (Q, " Use an oven."), (Q, " Use yeast."), (Q, " Go away."),
    (Q, " Use yeast."), (Q, " No."), (Q, " Slowly."), (Q, " Hot."),
]  # fmt: skip


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_row_shape_is_scored_in_input_order_as_score_would(service: LiveServer, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl.gz", ROWS)
    with RewardClient(service.url, chunk_size=2) as client:
        summary = score_file(data, tmp_path / "out.jsonl", client, block_rows=3)
    assert (summary.rows, summary.skipped, summary.written, summary.model_version) == (7, 0, 7, "7")
    out = lines(tmp_path / "out.jsonl")
    expected = scores_of(service.url, PAIRS)
    got = [out[0]["score"], out[1]["score"], out[2]["score"], out[3]["chosen"]["score"],
           out[3]["rejected"]["score"], out[4]["chosen"]["score"], out[4]["rejected"]["score"], out[5]["score"],
           out[6]["score"]]  # fmt: skip
    assert got == pytest.approx(expected, abs=TOLERANCE)
    assert [r["row"] for r in out] == list(range(7)) and out[0]["id"] == "a" and "id" not in out[1]
    assert out[3]["margin"] == pytest.approx(expected[3] - expected[4])
    assert out[0]["truncated"] is False and out[0]["model_version"] == "7"
    assert out[0]["normalized"] == pytest.approx((expected[0] - 1.0) / 2.0, abs=TOLERANCE)


def test_unknown_row_shape_and_bad_json_name_the_line_before_any_request(tmp_path: Path) -> None:
    class NoCalls:
        def score(self, pairs: Sequence[tuple[str, str]]) -> ScoreResult:
            raise AssertionError("scored before the input was checked")

    data = write_jsonl(tmp_path / "in.jsonl", [ROWS[0], {"title": "no pair here"}])
    with pytest.raises(ScoreFileError, match=r"in.jsonl:2: expected one of"):
        score_file(data, tmp_path / "out.jsonl", NoCalls())
    data.write_text(json.dumps(ROWS[0]) + "\n\n{oops\n")
    with pytest.raises(ScoreFileError, match=r"in.jsonl:3: not JSON"):
        score_file(data, tmp_path / "out.jsonl", NoCalls())
    assert items_of({"prompt": "p"}) is None


class FailsFrom:
    """The real client, except that items from ``start`` on in its first call come back unscored (NaN)."""

    def __init__(self, inner: RewardClient, start: int) -> None:
        self.inner, self.start, self.calls = inner, start, 0

    def score(self, pairs: Sequence[ScoreItem], *, raise_on_failure: bool = False) -> ScoreResult:
        result = self.inner.score(pairs, raise_on_failure=raise_on_failure)
        self.calls += 1
        if self.calls == 1:
            result.scores[self.start :] = np.nan
            result.errors.append("gave up after 5 attempts")
        return result

    def models(self) -> dict[str, Any]:
        return self.inner.models()


def test_a_stop_writes_the_rows_before_it_and_resume_completes_the_same_file(
    service: LiveServer, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", ROWS * 3)
    with RewardClient(service.url) as client:
        score_file(data, tmp_path / "whole.jsonl", client, block_rows=4)
        partial = tmp_path / "partial.jsonl"
        with pytest.raises(ScoringStopped, match="row 3 could not be scored"):
            score_file(data, partial, FailsFrom(client, start=3), block_rows=4)  # row 3 holds items 3, 4
        assert len(lines(partial)) == 3  # rows 0..2, never a NaN written
        with pytest.raises(ScoreFileError, match="pass --resume"):
            score_file(data, partial, client)
        summary = score_file(data, partial, client, resume=True, block_rows=5)
    assert (summary.skipped, summary.written) == (3, 18)
    assert partial.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_resume_cuts_a_torn_last_line_and_checks_the_output(service: LiveServer, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    with RewardClient(service.url) as client:
        score_file(data, out, client)
        whole = out.read_bytes()
        out.write_bytes(whole[: whole.index(b"\n") + 1] + b'{"row": 1, "sco')  # killed mid-write
        assert rows_done(out) == (1, "7") and out.read_bytes().endswith(b"\n")
        score_file(data, out, client, resume=True)
        assert out.read_bytes() == whole
        out.write_text('{"row": 5}\n')
        with pytest.raises(ScoreFileError, match="expected row 0"):
            score_file(data, out, client, resume=True)


def test_resume_refuses_another_model_version_unless_allowed(service: LiveServer, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"row": 0, "score": 0.0, "model_version": "6"}) + "\n")
    with RewardClient(service.url) as client:
        with pytest.raises(ScoringStopped, match="scored with 6"):
            score_file(data, out, client, resume=True)
        assert len(lines(out)) == 1
        summary = score_file(data, out, client, resume=True, allow_model_change=True)
    assert summary.written == 6 and lines(out)[-1]["model_version"] == "7"
