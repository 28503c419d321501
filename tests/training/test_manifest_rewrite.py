"""Rewriting a bundle's manifest: validated by the one writer, the same pinned files, never half-visible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.bundle import MANIFEST_NAME, ManifestError, load_bundle, sha256_file
from tests.bundle_factory import make_tiny_bundle
from training.reward.manifest_rewrite import RewriteError, rewrite_manifest


def test_in_place_changes_only_the_manifest_and_keeps_unlisted_files(tmp_path: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm", version="1")
    (bundle_dir / "NOTES.txt").write_text("not part of the bundle")
    graph = (bundle_dir / "model.onnx").stat().st_ino
    bundle = rewrite_manifest(load_bundle(bundle_dir), {"version": "2", "note": {"why": "test"}})
    assert bundle.manifest.version == "2" and bundle.path == bundle_dir
    assert json.loads((bundle_dir / MANIFEST_NAME).read_text())["note"] == {"why": "test"}  # extras kept
    assert (bundle_dir / "model.onnx").stat().st_ino == graph and (bundle_dir / "NOTES.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]


def test_an_invalid_change_is_refused_by_the_writer(tmp_path: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm")
    before = (bundle_dir / MANIFEST_NAME).read_bytes()
    with pytest.raises(ManifestError, match="invalid manifest"):
        rewrite_manifest(load_bundle(bundle_dir), {"length_correction": {"kind": "quadratic"}})
    assert (bundle_dir / MANIFEST_NAME).read_bytes() == before


def test_a_file_the_writer_would_not_pin_is_never_dropped(tmp_path: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm")
    (bundle_dir / "vocab.txt").write_text("extra")
    raw = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    raw["files"]["vocab.txt"] = sha256_file(bundle_dir / "vocab.txt")
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(RewriteError, match="refusing to change what the bundle pins"):
        rewrite_manifest(load_bundle(bundle_dir), {"version": "9"})
    assert load_bundle(bundle_dir).manifest.version == "1"


def test_a_manifest_changed_after_verification_is_not_overwritten(tmp_path: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path / "rm")
    bundle = load_bundle(bundle_dir)
    raw = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps({**raw, "version": "by-someone-else"}))
    with pytest.raises(RewriteError, match="changed after it was verified"):
        rewrite_manifest(bundle, {"version": "2"})
    assert json.loads((bundle_dir / MANIFEST_NAME).read_text())["version"] == "by-someone-else"
