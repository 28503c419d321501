from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from training.data import ASSISTANT_PREFIX, embedded_pairs_path, split_hh_dialogue
from training.reward.data import (
    DataError,
    PreferencePair,
    load_pairs,
    load_run_split,
    split_pairs,
)


def _write(path: Path, lines: list[str], gz: bool = False) -> Path:
    text = "".join(line + "\n" for line in lines)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _hh(question: str, chosen: str, rejected: str) -> str:
    return json.dumps({"chosen": question + chosen, "rejected": question + rejected})


Q = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I do X?\n\nAssistant:"


def test_hh_dialogue_split_at_last_assistant_turn() -> None:
    assert split_hh_dialogue(Q + " Like this.") == (Q, " Like this.")
    assert split_hh_dialogue("\n\nHuman: no answer") is None


def test_hh_split_keeps_the_marker_and_strips_nothing() -> None:
    # what training and serving see: the question ends with the marker, the answer keeps its spaces
    assert split_hh_dialogue("\n\nHuman: q \n\nAssistant:  two spaces \n") == (
        "\n\nHuman: q " + ASSISTANT_PREFIX,
        "  two spaces \n",
    )
    assert split_hh_dialogue(ASSISTANT_PREFIX) == (ASSISTANT_PREFIX, "")


def test_embedded_pairs_path_is_the_shipped_file() -> None:
    path = embedded_pairs_path()
    assert path.is_file()
    assert path.name == "hh-rlhf-harmless-2000.jsonl.gz"
    assert path.parent == Path(__file__).resolve().parents[2] / "training" / "embedded"


@pytest.mark.parametrize("gz", [False, True])
def test_hh_jsonl_counts_mismatched_questions(tmp_path: Path, gz: bool) -> None:
    path = _write(
        tmp_path / ("d.jsonl.gz" if gz else "d.jsonl"),
        [
            _hh(Q, " Good.", " Bad."),
            json.dumps({"chosen": Q + " A.", "rejected": "\n\nHuman: other?\n\nAssistant: B."}),
            "",
            _hh(Q, " Same.", " Same."),
            json.dumps({"chosen": "\n\nHuman: no turn", "rejected": "\n\nHuman: no turn either"}),
        ],
        gz=gz,
    )
    report = load_pairs(path)
    assert report.pairs == [PreferencePair(Q, " Good.", " Bad.")]
    assert report.skipped == 3
    assert report.skipped_reasons == {"question_mismatch": 1, "identical_answers": 1, "no_assistant_turn": 1}
    assert report.source == str(path)


def test_explicit_jsonl(tmp_path: Path) -> None:
    rows = [
        {"question": "q1", "chosen": "a", "rejected": "b", "extra": 1},
        {"question": "q2", "chosen": "c", "rejected": "d"},
    ]
    report = load_pairs(_write(tmp_path / "e.jsonl", [json.dumps(r) for r in rows]))
    assert report.pairs == [PreferencePair("q1", "a", "b"), PreferencePair("q2", "c", "d")]
    assert report.skipped == 0


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl.gz", [_hh(Q, " a", " b"), _hh(Q, " c", " d"), "{not json"], gz=True)
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz:3: invalid JSON"):
        load_pairs(path)


def test_missing_key_names_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "m.jsonl",
        [
            json.dumps({"question": "q", "chosen": "a", "rejected": "b"}),
            json.dumps({"question": "q", "chosen": "a"}),
        ],
    )
    with pytest.raises(DataError, match=r"m\.jsonl:2: missing key\(s\) \['rejected'\]"):
        load_pairs(path)


def test_wrong_types_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"t\.jsonl:1: 'chosen' must be a string"):
        load_pairs(_write(tmp_path / "t.jsonl", [json.dumps({"chosen": 3, "rejected": "x"})]))
    with pytest.raises(DataError, match=r"u\.jsonl:1: unknown record format"):
        load_pairs(_write(tmp_path / "u.jsonl", [json.dumps({"prompt": "p", "answer": "a"})]))
    with pytest.raises(DataError, match=r"l\.jsonl:1: expected a JSON object"):
        load_pairs(_write(tmp_path / "l.jsonl", ["[1, 2]"]))


def test_empty_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no records"):
        load_pairs(_write(tmp_path / "empty.jsonl", []))
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "absent.jsonl")
    corrupt = tmp_path / "c.jsonl.gz"
    row = json.dumps({"question": "q", "chosen": "a", "rejected": "b"}).encode() + b"\n"
    corrupt.write_bytes(gzip.compress(row * 50)[:40])
    with pytest.raises(DataError, match="corrupt gzip"):
        load_pairs(corrupt)
    with pytest.raises(DataError, match="every record was skipped"):
        load_pairs(_write(tmp_path / "same.jsonl", [_hh(Q, " x", " x")]))


@pytest.mark.parametrize("as_dict", [False, True])
def test_saved_dataset_dir(tmp_path: Path, as_dict: bool) -> None:
    import datasets

    ds = datasets.Dataset.from_list([{"chosen": Q + " yes", "rejected": Q + " no"}] * 3)
    target: datasets.Dataset | datasets.DatasetDict = datasets.DatasetDict({"train": ds}) if as_dict else ds
    target.save_to_disk(str(tmp_path / "ds"))
    report = load_pairs(tmp_path / "ds")
    assert report.pairs == [PreferencePair(Q, " yes", " no")] * 3


def test_embedded_data() -> None:
    report = load_pairs()
    assert report.source == str(embedded_pairs_path())
    assert len(report.pairs) + report.skipped == 2000
    assert report.skipped_reasons == {"question_mismatch": report.skipped}
    assert all(p.question.endswith("\n\nAssistant:") for p in report.pairs)


def test_split_is_deterministic_exact_and_disjoint() -> None:
    pairs = [PreferencePair(f"q{i}", "a", "b") for i in range(101)] + [PreferencePair("q0", "a", "b")]
    train, val = split_pairs(pairs, 0.2, seed=3)
    assert len(val) == round(102 * 0.2) and len(train) + len(val) == 102
    assert split_pairs(pairs, 0.2, seed=3) == (train, val)
    assert split_pairs(pairs, 0.2, seed=4)[1] != val
    assert sorted(train + val, key=lambda p: p.question) == sorted(pairs, key=lambda p: p.question)
    # pinned: the split must not change across runs, machines or Python versions
    assert [p.question for p in val[:3]] == PINNED_VAL_HEAD


PINNED_VAL_HEAD = ["q13", "q20", "q21"]


def test_load_run_split_recreates_split(tmp_path: Path, pairs_file: Path) -> None:
    from training.reward.config import RewardConfig

    run = tmp_path / "run" / "final"
    run.mkdir(parents=True)
    RewardConfig(base_model="unused", data=str(pairs_file), val_fraction=0.25, seed=7).save(
        run / "reward_config.json"
    )
    expected = split_pairs(load_pairs(pairs_file).pairs, 0.25, 7)
    assert load_run_split(tmp_path / "run") == expected
    assert load_run_split(run) == expected
    with pytest.raises(DataError, match=r"no reward_config\.json"):
        load_run_split(tmp_path)
