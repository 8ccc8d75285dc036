"""An output as ``{relative path: bytes}``, for byte-for-byte comparisons of two runs' outputs.

JSON summaries name their own output folder: it is written as ``<output>``. Keys that describe a
run rather than its data can be removed: ``drop`` per file name (top-level keys, each must be
there) and ``drop_anywhere`` (at any depth, where present); a JSON file with keys removed is
compared re-serialised, any other byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path

OUT = "<output>"


def _without(obj, keys: tuple[str, ...]):
    if isinstance(obj, dict):
        return {k: _without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_without(v, keys) for v in obj]
    return obj


def normalised_json(data: bytes, root: Path, drop: tuple[str, ...] = (), drop_anywhere: tuple[str, ...] = ()) -> bytes:
    """A JSON file with ``root`` written as ``<output>`` and the keys ``drop``/``drop_anywhere`` removed."""
    text = data.decode().replace(str(root), OUT)
    if not drop and not drop_anywhere:
        return text.encode()
    obj = json.loads(text)
    for key in drop:
        assert key in obj, key
        del obj[key]
    return json.dumps(_without(obj, drop_anywhere), indent=2, sort_keys=True).encode()


def output_tree(out: Path, drop: dict[str, tuple[str, ...]] | None = None,
                drop_anywhere: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file of an output: a folder's files, or a one-file output with the files beside it
    (stage 6's pictures); JSON files :func:`normalised_json` (``drop[file name]``, ``drop_anywhere``)."""
    root, drop, tree = (out if out.is_dir() else out.parent), drop or {}, {}
    for p in sorted(p for p in root.rglob("*") if p.is_file()):
        data = p.read_bytes()
        if p.suffix == ".json":
            data = normalised_json(data, root, drop.get(p.name, ()), drop_anywhere)
        tree[p.relative_to(root).as_posix()] = data
    return tree
