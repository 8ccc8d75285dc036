"""Locate the real sample data: ``../shared/data`` beside the checkout, else a verified download.

Order: ``$LENSINJ_SAMPLE_DATA`` if set; ``<repo>/../shared/data`` if present; otherwise every file
listed in ``conf/sample_data.yaml`` is downloaded from its pinned origin (repository @ commit) into
``$LENSINJ_CACHE`` (default ``~/.cache/lensinj/sample_data``) and checked against its sha256.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import yaml

from udfs.config.provenance import REPO_ROOT

MANIFEST = REPO_ROOT / "conf" / "sample_data.yaml"
RAW_BASE = os.environ.get("LENSINJ_SAMPLE_BASE_URL", "https://raw.githubusercontent.com")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(dest: Path, base_url: str = RAW_BASE) -> Path:
    """Fetch every pinned file missing from ``dest``; raise naming the file on a checksum mismatch."""
    sources = yaml.safe_load(MANIFEST.read_text())["sources"]
    for folder, src in sources.items():
        for name, (prefix, sha) in src["files"].items():
            target = dest / folder / name
            if target.exists() and _sha256(target) == sha:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            url = f"{base_url}/{src['repo']}/{src['commit']}/{prefix}{name}"
            tmp = target.with_suffix(target.suffix + ".part")
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                f.write(r.read())
            got = _sha256(tmp)
            if got != sha:
                tmp.unlink()
                raise RuntimeError(f"{url}: sha256 {got} does not match the pinned {sha}")
            tmp.replace(target)
    return dest


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
