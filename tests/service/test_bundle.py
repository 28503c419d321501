"""The bundle contract: a bundle is loaded only when its manifest is valid and every file matches its hash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MODEL_FILES,
    TOKENIZER_NAME,
    BundleError,
    BundleNotFoundError,
    IntegrityError,
    ManifestError,
    load_bundle,
    read_manifest,
    sha256_file,
    write_manifest,
)
from tests.bundle_factory import make_tiny_bundle


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return make_tiny_bundle(tmp_path / "rm")


def edit_manifest(bundle_dir: Path, **changes: object) -> None:
    path = bundle_dir / MANIFEST_NAME
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_a_valid_bundle_loads_with_both_precisions(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest.precisions == ["fp32", "int8"]
    assert bundle.default_precision() == "int8"
    assert bundle.model_path("fp32") == bundle_dir / MODEL_FILES["fp32"]
    assert bundle.sha256 == sha256_file(bundle_dir / MANIFEST_NAME)
    assert set(bundle.manifest.files) == {TOKENIZER_NAME, MODEL_FILES["fp32"], MODEL_FILES["int8"]}
    pair = bundle.encoder().encode_one("Question?", "Answer.")
    assert len(pair) <= bundle.manifest.max_length


def test_missing_directory_and_missing_manifest(tmp_path: Path, bundle_dir: Path) -> None:
    with pytest.raises(BundleNotFoundError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    (bundle_dir / MANIFEST_NAME).unlink()
    with pytest.raises(BundleNotFoundError, match=r"manifest\.json is missing"):
        load_bundle(bundle_dir)


def test_manifest_that_is_not_json_or_not_an_object(bundle_dir: Path) -> None:
    (bundle_dir / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_bundle(bundle_dir)
    (bundle_dir / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(ManifestError, match="JSON object"):
        load_bundle(bundle_dir)
    (bundle_dir / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_bundle(bundle_dir)


def test_wrong_format_and_format_version(bundle_dir: Path) -> None:
    edit_manifest(bundle_dir, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ManifestError, match=f"format_version {FORMAT_VERSION + 1} is not supported"):
        load_bundle(bundle_dir)
    edit_manifest(bundle_dir, format="something-else", format_version=FORMAT_VERSION)
    with pytest.raises(ManifestError, match="format is 'something-else'"):
        load_bundle(bundle_dir)


def test_invalid_fields_are_named(bundle_dir: Path) -> None:
    edit_manifest(bundle_dir, score={"mean": 0.0, "std": 0.0})
    with pytest.raises(ManifestError, match=r"(?s)invalid fields.*score\.std"):
        load_bundle(bundle_dir)


def test_missing_listed_file(bundle_dir: Path) -> None:
    (bundle_dir / MODEL_FILES["int8"]).unlink()
    with pytest.raises(IntegrityError, match=r"model\.int8\.onnx is listed in the manifest but missing"):
        load_bundle(bundle_dir)


def test_hash_mismatch_names_the_file(bundle_dir: Path) -> None:
    path = bundle_dir / MODEL_FILES["fp32"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.onnx is corrupt or was replaced: sha256"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("name", ["../outside.onnx", "sub/model.onnx", "/etc/passwd"])
def test_path_traversal_in_files_is_refused(bundle_dir: Path, name: str) -> None:
    outside = bundle_dir.parent / "outside.onnx"
    shutil.copyfile(bundle_dir / MODEL_FILES["fp32"], outside)
    raw = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    raw["files"][name] = sha256_file(outside)
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="must not contain directories"):
        load_bundle(bundle_dir)


def test_manifest_must_list_the_fp32_graph_and_tokenizer(bundle_dir: Path) -> None:
    raw = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    del raw["files"][MODEL_FILES["fp32"]]
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=r"must list model\.onnx and tokenizer\.json"):
        load_bundle(bundle_dir)


def test_fp32_only_bundle_says_why_int8_is_missing(tmp_path: Path) -> None:
    bundle = load_bundle(make_tiny_bundle(tmp_path / "fp32", with_int8=False))
    assert bundle.manifest.precisions == ["fp32"]
    assert bundle.default_precision() == "fp32"
    with pytest.raises(BundleError, match=r"no int8 graph \(not built \(tests\)\); available: fp32"):
        bundle.model_path("int8")


def test_write_manifest_hashes_present_files_and_refuses_without_fp32(
    bundle_dir: Path, tmp_path: Path
) -> None:
    fields = read_manifest(bundle_dir).model_dump(exclude={"format", "format_version", "files"})
    (bundle_dir / MODEL_FILES["int8"]).unlink()
    manifest = write_manifest(bundle_dir, fields)
    assert set(manifest.files) == {TOKENIZER_NAME, MODEL_FILES["fp32"]}
    assert load_bundle(bundle_dir).manifest.precisions == ["fp32"]

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copyfile(bundle_dir / TOKENIZER_NAME, empty / TOKENIZER_NAME)
    with pytest.raises(IntegrityError, match=r"model\.onnx is missing"):
        write_manifest(empty, fields)
    shutil.copyfile(bundle_dir / MODEL_FILES["fp32"], empty / MODEL_FILES["fp32"])
    with pytest.raises(ManifestError, match="refusing to write an invalid manifest"):
        write_manifest(empty, {**fields, "name": ""})


CORRECTION = {"kind": "linear", "slope": 0.25, "intercept": 1.0, "unit": "answer_tokens", "mean_length": 3.0,
              "fitted_on": 400, "pearson": -0.6}  # fmt: skip


def test_older_manifests_without_heads_or_correction_load_as_one_plain_head(bundle_dir: Path) -> None:
    raw = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    assert "heads" not in raw and "length_correction" not in raw  # what every earlier export wrote
    manifest = load_bundle(bundle_dir).manifest
    assert manifest.heads is None and manifest.length_correction is None
    assert manifest.output_names == ["score"]


def test_heads_and_length_correction_are_read_and_name_the_outputs(bundle_dir: Path) -> None:
    edit_manifest(bundle_dir, heads={"quality": 5, "length": True}, length_correction=CORRECTION)
    manifest = load_bundle(bundle_dir).manifest
    assert manifest.output_names == ["score", "uncertainty", "length_score"]
    assert manifest.length_correction is not None and manifest.length_correction.slope == 0.25
    edit_manifest(bundle_dir, heads={"quality": 1, "length": True})
    assert load_bundle(bundle_dir).manifest.output_names == ["score", "length_score"]


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("heads", {"quality": 0, "length": False}, "quality"),
        ("heads", {"quality": 2, "length": False, "members": 2}, "members"),
        ("length_correction", {**CORRECTION, "unit": "characters"}, "unit"),
        ("length_correction", {**CORRECTION, "kind": "quadratic"}, "kind"),
        ("length_correction", {**CORRECTION, "slope": "NaN"}, "slope"),
        ("length_correction", {**CORRECTION, "mean_length": -1.0}, "mean_length"),
        ("length_correction", {**CORRECTION, "fitted_on": 1}, "fitted_on"),
        ("length_correction", {**CORRECTION, "offset": 2.0}, "offset"),
        ("length_correction", {k: v for k, v in CORRECTION.items() if k != "slope"}, "slope"),
    ],
)
def test_invalid_heads_or_correction_are_refused_naming_the_field(
    bundle_dir: Path, field: str, value: object, problem: str
) -> None:
    edit_manifest(bundle_dir, **{field: value})
    with pytest.raises(ManifestError, match=problem):
        load_bundle(bundle_dir)
