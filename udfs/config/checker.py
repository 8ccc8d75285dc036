"""Load YAML configs (local or s3://) and check their keys, with errors that name the key.

Small helpers shared by the stage configs (``conf/lrg_selection.yaml``, ``conf/injection_priors.yaml``).
Every check raises :class:`ConfigError` with the file and the dotted key path, e.g.
``conf/x.yaml: splits.fractions.train: expected a number, got 'abc'``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import yaml

from udfs.io import storage
from udfs.io.errors import InputError


class ConfigError(InputError):
    """A config file is unreadable or a key is missing, of the wrong type or out of range."""


def load_yaml(uri: str) -> dict:
    """Parse a YAML mapping from a local path or ``s3://`` URI."""
    try:
        text = storage.read_bytes(uri).decode()
    except FileNotFoundError as exc:
        raise ConfigError(f"{uri}: config file not found ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{uri}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{uri}: the top level must be a mapping, got {type(data).__name__}")
    return data


class Checker:
    """Reads typed values from a nested mapping, naming ``source`` and the key path on error."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    def mapping(self, parent: Mapping, name: str, key: str) -> dict:
        value = self.get(parent, name, key)
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {value!r}")
        return dict(value)

    def get(self, parent: Mapping, name: str, key: str):
        if name not in parent:
            raise self.fail(key, "missing required key")
        return parent[name]

    def number(self, parent: Mapping, name: str, key: str, *, lo: float | None = None,
               hi: float | None = None, lo_open: bool = False, allow_none: bool = False) -> float | None:
        value = self.get(parent, name, key)
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, f"expected a finite number, got {value!r}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise self.fail(key, f"must be {'>' if lo_open else '>='} {lo}, got {value}")
        if hi is not None and value > hi:
            raise self.fail(key, f"must be <= {hi}, got {value}")
        return float(value)

    def integer(self, parent: Mapping, name: str, key: str, *, lo: int | None = None,
                hi: int | None = None) -> int:
        value = self.get(parent, name, key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {value!r}")
        if lo is not None and value < lo:
            raise self.fail(key, f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise self.fail(key, f"must be <= {hi}, got {value}")
        return int(value)

    def boolean(self, parent: Mapping, name: str, key: str) -> bool:
        value = self.get(parent, name, key)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def string(self, parent: Mapping, name: str, key: str, *, choices: tuple[str, ...] | None = None) -> str:
        value = self.get(parent, name, key)
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def per_band(self, parent: Mapping, name: str, bands, **limits) -> dict[str, float]:
        """``{band: number}`` from the mapping ``parent[name]``: exactly one :meth:`number` per band
        (``limits`` as there), unknown bands rejected."""
        m = self.mapping(parent, name, name)
        self.unknown(m, set(bands), name)
        return {b: self.number(m, b, f"{name}.{b}", **limits) for b in bands}

    def unknown(self, parent: Mapping, allowed: set[str], key: str) -> None:
        """Reject keys the schema does not know (a typo must not be ignored silently)."""
        extra = sorted(set(parent) - allowed)
        if extra:
            where = f"{key}." if key else ""
            raise ConfigError(f"{self.source}: {where}{extra[0]}: unknown key (allowed: "
                              f"{', '.join(sorted(allowed))})")
