"""Rewrite an existing bundle's manifest atomically, in place or into a new bundle directory.

    bundle = rewrite_manifest(load_bundle("bundles/rm"), {"length_correction": entry, "version": "2"})
    bundle = rewrite_manifest(load_bundle("bundles/rm"), changes, out="bundles/rm-v2")   # a new bundle

Why: a manifest entry that can be fitted after export (`rlhf correct-length`) must reach the bundle
without ever leaving it half-written or changing what its manifest pins: the service verifies every
sha256 before it serves a bundle, and a reader must never see a torn manifest.json. The manifest is
written by `service.bundle.write_manifest` (the one writer: validation and hashing included), so the
rules of the contract hold for a rewritten manifest exactly as for an exported one. torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.bundle import MANIFEST_NAME, Bundle, load_bundle, sha256_file, write_manifest


class RewriteError(ValueError):
    """The manifest cannot be rewritten as asked; the message says why (the bundle is left unchanged)."""


def rewrite_manifest(bundle: Bundle, changes: Mapping[str, Any], out: str | Path | None = None) -> Bundle:
    """Rewrite ``bundle``'s manifest with ``changes``, atomically, in place or into a new directory ``out``.

    The new manifest is written by `write_manifest` into a staging directory beside the target (the
    bundle's files hard-linked there, or copied for a new bundle), verified with `load_bundle`, and must
    list exactly the files and hashes of the old one. In place, only manifest.json is then swapped in
    (`os.replace`: a reader sees the old manifest or the new one, never half of one), and only if the old
    one is still the one that was verified; a new bundle is renamed into place whole."""
    target = Path(out) if out is not None else bundle.path
    in_place = target.resolve() == bundle.path.resolve()
    if not in_place and target.exists():
        raise RewriteError(
            f"{target} already exists; choose another output directory, or rewrite {bundle.path} in place"
        )
    text = (bundle.path / MANIFEST_NAME).read_bytes()
    if hashlib.sha256(text).hexdigest() != bundle.sha256:
        raise RewriteError(f"{bundle.path / MANIFEST_NAME} changed after it was verified")
    raw = json.loads(text)
    fields = {k: v for k, v in raw.items() if k not in ("format", "format_version", "files")}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name in bundle.manifest.files:
            _place(bundle.path / name, staging / name, link=in_place)
        written = write_manifest(staging, {**fields, **changes})
        load_bundle(staging)  # verify before it becomes visible
        if written.files != bundle.manifest.files:
            raise RewriteError(
                f"{bundle.path}: its manifest lists files {sorted(bundle.manifest.files)}, a rewritten one "
                f"would list {sorted(written.files)}; refusing to change what the bundle pins"
            )
        if in_place:
            if sha256_file(bundle.path / MANIFEST_NAME) != bundle.sha256:
                raise RewriteError(f"{bundle.path / MANIFEST_NAME} changed after it was verified")
            os.replace(staging / MANIFEST_NAME, bundle.path / MANIFEST_NAME)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(target)


def _place(source: Path, destination: Path, link: bool) -> None:
    """A hard link when asked and possible (the staging copy of a bundle corrected in place), else a copy."""
    if link:
        try:
            os.link(source, destination)
            return
        except OSError:
            pass  # another file system, or links not allowed: a copy is only slower
    shutil.copyfile(source, destination)
