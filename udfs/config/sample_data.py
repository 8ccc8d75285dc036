"""Locate the real sample data: ``../shared/data`` beside the checkout, else a verified download.

Order: ``$LENSINJ_SAMPLE_DATA`` if set; ``<repo>/../shared/data`` if present; otherwise every file
pinned in ``conf/sample_data.yaml`` (:func:`load_manifest`: folder -> repository @ commit, and per
file its path prefix there and sha256) is downloaded into ``$LENSINJ_CACHE`` (default
``~/.cache/lensinj/sample_data``) and checked (:func:`udfs.io.sample_data.fetch_pinned`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from udfs.config.checker import Checker, load_yaml
from udfs.config.provenance import REPO_ROOT
from udfs.io.sample_data import RAW_BASE, fetch_pinned

MANIFEST = str(REPO_ROOT / "conf" / "sample_data.yaml")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PinnedFile:
    name: str
    prefix: str      # path of the file's folder in the origin repository ("" or ending in /)
    sha256: str


@dataclass(frozen=True)
class SampleSource:
    folder: str      # relative to the data root, e.g. cosmos/btk_ext26
    repo: str        # <owner>/<name>
    commit: str
    files: tuple[PinnedFile, ...]


def _files(ck: Checker, block: dict, key: str) -> tuple[PinnedFile, ...]:
    out = []
    for name, pin in ck.mapping(block, "files", key).items():
        where = f"{key}.{name}"
        if not (isinstance(pin, list) and len(pin) == 2 and all(isinstance(v, str) for v in pin)):
            raise ck.fail(where, f"expected [prefix, sha256], got {pin!r}")
        if not _SHA256.match(pin[1]):
            raise ck.fail(where, f"expected a 64-hex-digit sha256, got {pin[1]!r}")
        out.append(PinnedFile(name=str(name), prefix=pin[0], sha256=pin[1]))
    return tuple(out)


def load_manifest(uri: str = MANIFEST) -> tuple[SampleSource, ...]:
    """The pinned origins, in file order; :class:`~udfs.config.checker.ConfigError` names file and key."""
    ck = Checker(uri)
    raw = load_yaml(uri)
    ck.unknown(raw, {"sources"}, "")
    sources = []
    for folder in ck.mapping(raw, "sources", "sources"):
        key = f"sources.{folder}"
        block = ck.mapping(raw["sources"], folder, key)
        ck.unknown(block, {"repo", "commit", "files"}, key)
        sources.append(SampleSource(folder=str(folder), repo=ck.string(block, "repo", f"{key}.repo"),
                                    commit=ck.string(block, "commit", f"{key}.commit"),
                                    files=_files(ck, block, f"{key}.files")))
    return tuple(sources)


def download(dest: Path, base_url: str = RAW_BASE, manifest: str = MANIFEST) -> Path:
    """Fetch every file pinned in ``manifest`` missing from ``dest``, checking its sha256."""
    return fetch_pinned(dest, load_manifest(manifest), base_url)


def data_root() -> Path:
    """Folder holding ``cosmos/``, ``legacysurvey/`` and ``lenses/`` (see ``../shared/data/README.md``)."""
    env = os.environ.get("LENSINJ_SAMPLE_DATA")
    if env:
        return Path(env)
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    cache = Path(os.environ.get("LENSINJ_CACHE", Path.home() / ".cache" / "lensinj")) / "sample_data"
    return download(cache)


def expand_data_root(path: str) -> str:
    """``path`` with ``{data_root}`` replaced by :func:`data_root` (located, or downloaded, only
    when the placeholder is there: production paths never touch the sample data)."""
    return path.replace("{data_root}", str(data_root())) if "{data_root}" in path else path
