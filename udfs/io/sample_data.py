"""Download pinned sample-data files from their origin and check each sha256.

The pins (``conf/sample_data.yaml``) are loaded by :mod:`udfs.config.sample_data`, which also
locates the data; this module only transfers and verifies bytes.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

RAW_BASE = os.environ.get("LENSINJ_SAMPLE_BASE_URL", "https://raw.githubusercontent.com")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_pinned(dest: Path, sources, base_url: str = RAW_BASE) -> Path:
    """Fetch every pinned file missing from (or changed in) ``dest``.

    ``sources``: objects with ``folder``, ``repo``, ``commit`` and ``files`` (each with ``name``,
    ``prefix``, ``sha256``); a file is fetched from ``<base_url>/<repo>/<commit>/<prefix><name>`` into
    ``dest/<folder>/<name>``. Raises RuntimeError naming the URL on a checksum mismatch.
    """
    for src in sources:
        for pin in src.files:
            target = dest / src.folder / pin.name
            if target.exists() and sha256(target) == pin.sha256:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            url = f"{base_url}/{src.repo}/{src.commit}/{pin.prefix}{pin.name}"
            tmp = target.with_suffix(target.suffix + ".part")
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                f.write(r.read())
            got = sha256(tmp)
            if got != pin.sha256:
                tmp.unlink()
                raise RuntimeError(f"{url}: sha256 {got} does not match the pinned {pin.sha256}")
            tmp.replace(target)
    return dest
