"""`rlhf correct-length`: a post-hoc length correction for any existing bundle, written atomically.

Real tiny bundles (tests/bundle_factory.py: a MiniLM-vocabulary graph whose score follows answer
length, so there is a trend to remove), the real command through typer, the real service model loader.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import training.reward.correct_length as correct_length
import training.reward.manifest_rewrite as manifest_rewrite
from cli.main import app
from service.bundle import MANIFEST_NAME, load_bundle
from service.chat import ChatEncoder
from service.model import load_model
from tests.bundle_factory import make_tiny_bundle
from tests.service.test_chat_bundle import make_chat_bundle, rewrite
from training.reward.correct_length import CorrectionConfig, choose_pairs, heldout_metrics
from training.reward.data import load_pairs, split_pairs
from training.reward.length_correction import fit_length_correction, score_bundle_pairs
from training.reward.manifest_rewrite import RewriteError

runner = CliRunner()


def write_pairs(path: Path, n: int = 60) -> Path:
    """Pairs whose answers differ in length from pair to pair, one word repeated: the tiny graph mean-pools
    its embeddings, so its score follows the answer length closely (question/chosen/rejected JSONL)."""
    rows = [
        {
            "question": f"\n\nHuman: Question number {i}?\n\nAssistant:",
            "chosen": " " + "maybe " * (1 + i % 7),
            "rejected": " " + "maybe " * (1 + (i * 3) % 5),
        }
        for i in range(n)
    ]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def run(*args: str) -> tuple[int, list[str], str]:
    result = runner.invoke(app, ["correct-length", *args])
    return result.exit_code, result.stdout.splitlines(), result.stderr


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return write_pairs(tmp_path / "pairs.jsonl.gz")


def test_in_place_stores_the_fit_keeps_the_hashes_and_reports_before_and_after(
    tmp_path: Path, data: Path
) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm", version="3")
    before = load_bundle(bundle_dir)
    code, lines, err = run(str(bundle_dir), "--data", str(data), "--pairs", "30", "--heldout-pairs", "20")
    assert code == 0, err
    report = json.loads(lines[0])
    assert lines[1].startswith(f"wrote {bundle_dir} (in place; version 3 -> 3-lc")
    after = load_bundle(bundle_dir)
    assert after.manifest.files == before.manifest.files  # the graphs and tokenizer are untouched
    assert after.manifest.version == report["version_after"] != "3"
    assert report["in_place"] and report["replaced"] is None
    # the entry is the least-squares fit on the chosen calibration pairs, scored by the bundle's graph
    config = CorrectionConfig(data=str(data), pairs=30, heldout_pairs=20)
    choice = choose_pairs(load_pairs(str(data)).pairs, config, {})
    calibration = score_bundle_pairs(before, choice.calibration)
    fit = fit_length_correction(calibration.scores, calibration.tokens)
    assert after.manifest.length_correction is not None
    assert after.manifest.length_correction.model_dump() == fit.to_dict() == report["length_correction"]
    # before / after are the held-out metrics of the raw and the corrected scores
    heldout = score_bundle_pairs(before, choice.heldout)
    assert report["before"] == heldout_metrics(choice.heldout, heldout.scores, heldout)
    corrected = fit.apply(heldout.scores, heldout.tokens)
    assert report["after"] == heldout_metrics(choice.heldout, corrected, heldout)
    assert abs(report["after"]["length_pearson"]) < abs(report["before"]["length_pearson"])
    assert report["heldout_pairs"] == 20 and not set(choice.heldout) & set(choice.calibration)
    record = json.loads((bundle_dir / MANIFEST_NAME).read_text())["length_correction_fit"]
    assert record["previous_version"] == "3" and record["heldout"]["pairs"] == 20
    # the service loads it and subtracts exactly this trend
    model = load_model(bundle_dir, "fp32", 1)
    assert model.length_correction is not None and model.length_correction.slope == fit.slope


def test_a_new_bundle_leaves_the_source_as_it_was(tmp_path: Path, data: Path) -> None:
    source = make_tiny_bundle(tmp_path / "rm")
    manifest = (source / MANIFEST_NAME).read_bytes()
    out = tmp_path / "out" / "rm-lc"
    code, lines, err = run(str(source), "--out", str(out), "--data", str(data), "--heldout-pairs", "10")
    assert code == 0, err
    assert (source / MANIFEST_NAME).read_bytes() == manifest
    corrected = load_bundle(out)
    assert corrected.manifest.length_correction is not None
    assert corrected.manifest.files == load_bundle(source).manifest.files
    assert all((out / name).stat().st_nlink == 1 for name in corrected.manifest.files)  # copies, not links
    assert json.loads(lines[0])["in_place"] is False
    assert [p.name for p in out.parent.iterdir()] == ["rm-lc"]  # no staging directory left behind
    code, _, err = run(str(source), "--out", str(out), "--data", str(data))
    assert code == 1 and "already exists" in err


def test_a_refit_replaces_the_version_suffix_and_reports_the_old_entry(tmp_path: Path, data: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm", version="5")
    assert run(str(bundle_dir), "--data", str(data), "--pairs", "20", "--heldout-pairs", "10")[0] == 0
    first = load_bundle(bundle_dir).manifest
    code, lines, err = run(str(bundle_dir), "--data", str(data), "--pairs", "40", "--heldout-pairs", "10")
    assert code == 0, err
    report = json.loads(lines[0])
    assert first.length_correction is not None and report["replaced"] == first.length_correction.model_dump()
    assert report["version_before"] == first.version and report["version_after"].count("-lc") == 1
    assert report["version_after"] != first.version
    # "before" is what the service served: the old correction applied
    assert abs(report["before"]["length_pearson"]) < 0.3


def test_a_chat_bundle_is_fitted_with_its_chat_encoder(tmp_path: Path, data: Path) -> None:
    bundle_dir = make_chat_bundle(tmp_path / "chat")
    bundle = load_bundle(bundle_dir)
    assert isinstance(bundle.encoder(), ChatEncoder)
    code, lines, err = run(str(bundle_dir), "--data", str(data), "--pairs", "30", "--heldout-pairs", "10")
    assert code == 0, err
    config = CorrectionConfig(data=str(data), pairs=30, heldout_pairs=10)
    choice = choose_pairs(load_pairs(str(data)).pairs, config, {})
    scored = score_bundle_pairs(bundle, choice.calibration)  # chat-rendered ids and answer tokens
    assert (
        json.loads(lines[0])["length_correction"]
        == fit_length_correction(scored.scores, scored.tokens).to_dict()
    )
    manifest = load_bundle(bundle_dir).manifest
    assert manifest.input_format == "chat" and manifest.files == bundle.manifest.files


def test_the_bundles_own_training_split_is_recreated(tmp_path: Path, data: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm")
    rewrite(bundle_dir, training_config={"data": str(data), "val_fraction": 0.25, "seed": 3})
    pairs = load_pairs(str(data)).pairs
    train, val = split_pairs(pairs, 0.25, 3)
    config = CorrectionConfig(data=str(data), pairs=0, heldout_pairs=100)
    choice = choose_pairs(pairs, config, load_bundle(bundle_dir).manifest.training_config)
    assert choice.calibration == train and choice.heldout == val and "own training split" in choice.split
    # other data, or the embedded pairs the run did not use: a content-hash hold-out, said so
    other = choose_pairs(pairs, CorrectionConfig(data=None, heldout_pairs=12), {"data": str(data)})
    assert len(other.heldout) == 12 and "not known to be unseen" in other.split
    code, lines, _ = run(str(bundle_dir), "--data", str(data), "--pairs", "0", "--heldout-pairs", "100")
    assert code == 0 and json.loads(lines[0])["heldout_pairs"] == len(val)


def test_the_embedded_pairs_are_the_default(tmp_path: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm", with_int8=True)
    code, lines, err = run(str(bundle_dir), "--pairs", "40", "--heldout-pairs", "20", "--precision", "int8")
    assert code == 0, err
    report = json.loads(lines[0])
    assert report["data"].endswith(".jsonl.gz") and report["precision"] == "int8"
    assert report["length_correction"]["fitted_on"] == 80


def test_a_bundle_that_is_not_intact_is_refused_and_left_alone(tmp_path: Path, data: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm")
    with (bundle_dir / "model.onnx").open("ab") as f:
        f.write(b"\0")
    manifest = (bundle_dir / MANIFEST_NAME).read_bytes()
    code, lines, err = run(str(bundle_dir), "--data", str(data))
    assert code == 1 and "corrupt or was replaced" in err and not lines
    assert (bundle_dir / MANIFEST_NAME).read_bytes() == manifest
    code, _, err = run(str(tmp_path / "nothing"), "--data", str(data))
    assert code == 1 and "does not exist" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--precision", "fp16"], 2, "fp32 or int8"),
        (["--heldout-pairs", "1"], 2, "heldout_pairs"),
        (["--precision", "int8"], 1, "no int8 graph"),
        (["--version", "1"], 1, "trainer would not notice"),
        (["--data", "missing.jsonl"], 1, "no such file"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(
    tmp_path: Path, data: Path, args: list[str], code: int, message: str
) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm", with_int8=False)
    manifest = (bundle_dir / MANIFEST_NAME).read_bytes()
    given = args if "--data" in args else ["--data", str(data), *args]
    result = runner.invoke(app, ["correct-length", str(bundle_dir), "--heldout-pairs", "10", *given])
    assert result.exit_code == code, result.output
    assert message in result.output + result.stderr
    assert (bundle_dir / MANIFEST_NAME).read_bytes() == manifest


def test_answers_of_one_length_have_no_trend_to_fit(tmp_path: Path) -> None:
    rows = [{"question": f"Q{i}?", "chosen": "yes", "rejected": "no"} for i in range(20)]
    data = tmp_path / "flat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(str(make_tiny_bundle(tmp_path / "rm")), "--data", str(data), "--heldout-pairs", "4")
    assert code == 1 and "two distinct answer lengths" in err


def test_a_failure_while_writing_leaves_the_old_manifest(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm")
    manifest = (bundle_dir / MANIFEST_NAME).read_bytes()

    def refuse(*args: object, **kwargs: object) -> None:
        raise RewriteError("simulated failure after staging")

    monkeypatch.setattr(
        manifest_rewrite, "load_bundle", _fail_on_staging(manifest_rewrite.load_bundle, refuse)
    )
    with pytest.raises(RewriteError, match="simulated"):
        correct_length.correct_bundle_length(bundle_dir, CorrectionConfig(data=str(data), heldout_pairs=10))
    assert (bundle_dir / MANIFEST_NAME).read_bytes() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl.gz", "rm"]


def _fail_on_staging(real: object, fail: object) -> object:
    """`load_bundle` that fails on the staging directory (the verification before the swap)."""

    def load(path: object) -> object:
        if Path(str(path)).name.startswith("."):
            fail()  # type: ignore[operator]
        return real(path)  # type: ignore[operator]

    return load


def test_the_command_and_its_logic_never_import_torch() -> None:
    """An imported bundle is corrected where only the service's dependencies are installed."""
    code = (
        "import sys, cli.correct_length, training.reward.correct_length, integrations.reward_options\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
