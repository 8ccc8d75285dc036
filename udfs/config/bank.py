"""Load and validate ``conf/bank.yaml`` (the source-bank configuration).

Every key is required and unknown keys are refused, so nothing is silently defaulted; errors name
the key (``selection.mag_f814w_max``) and what is wrong.
"""
from __future__ import annotations

import copy

import yaml

from udfs.io import storage

EXCLUSION_LEVELS = ("none", "bad_stamp", "bad_fits", "marginal")

# key -> (type, check, description of the check)
_POS = (lambda v: v > 0, "> 0")
_NONNEG = (lambda v: v >= 0, ">= 0")
SCHEMA: dict[str, dict[str, tuple]] = {
    "selection": {
        "exclusion_level": (str, (lambda v: v in EXCLUSION_LEVELS, f"one of {EXCLUSION_LEVELS}")),
        "mag_f814w_min": (float, (lambda v: True, "")),
        "mag_f814w_max": (float, (lambda v: True, "")),
        "zphot_min": (float, _POS),
        "zphot_max": (float, _POS),
        "hlr_arcsec_min": (float, _NONNEG),
        "hlr_arcsec_max": (float, _POS),
        "max_neighbour_flux_ratio": (float, _POS),
    },
    "render": {
        "pixel_scale_arcsec": (float, (lambda v: 0.02 <= v <= 0.05, "between 0.02 and 0.05")),
        "stamp_size": (int, (lambda v: v >= 16 and v % 2 == 0, "even and >= 16")),
        "target_psf_fwhm_arcsec": (float, _POS),
        "detect_nsigma": (float, _POS),
        "dilate_pix": (int, _NONNEG),
        "original_smooth_sigma_pix": (float, _POS),
        "original_detect_nsigma": (float, _POS),
    },
    "noise": {
        "dr10_psfdepth_r": (float, _POS),
        "dr10_psf_fwhm_arcsec": (float, _POS),
        "dr10_pixel_scale_arcsec": (float, _POS),
        "reference_mag_r": (float, (lambda v: True, "")),
        "reference_magnification": (float, (lambda v: v >= 1, ">= 1")),
        "max_variance_ratio": (float, _POS),
    },
    "output": {
        "images_per_chunk": (int, _POS),
        "gzip_level": (int, (lambda v: 0 <= v <= 9, "between 0 and 9")),
    },
}
TOP_LEVEL = {"cosmology": str}


class ConfigError(ValueError):
    pass


def _check_value(where: str, key: str, value, typ, check):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be {typ.__name__}, got {value!r}")
    ok, what = check
    if not ok(value):
        raise ConfigError(f"{where}: {key} must be {what}, got {value!r}")
    return value


def validate(config: dict, where: str = "bank config") -> dict:
    """Return a validated deep copy of ``config``; raise :class:`ConfigError` naming the key."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    out = {}
    expected = set(SCHEMA) | set(TOP_LEVEL)
    for key in sorted(set(config) - expected):
        raise ConfigError(f"{where}: unknown key {key!r}")
    for key in sorted(expected - set(config)):
        raise ConfigError(f"{where}: missing key {key!r}")
    for section, keys in SCHEMA.items():
        block = config[section]
        if not isinstance(block, dict):
            raise ConfigError(f"{where}: {section} must be a mapping")
        for key in sorted(set(block) - set(keys)):
            raise ConfigError(f"{where}: unknown key {section}.{key}")
        for key in sorted(set(keys) - set(block)):
            raise ConfigError(f"{where}: missing key {section}.{key}")
        out[section] = {k: _check_value(where, f"{section}.{k}", block[k], *keys[k]) for k in keys}
    from udfs.sources.cosmology import get_cosmology

    try:
        get_cosmology(_check_value(where, "cosmology", config["cosmology"], str, (lambda v: True, "")))
    except ValueError as exc:
        raise ConfigError(f"{where}: cosmology: {exc}") from exc
    out["cosmology"] = config["cosmology"]
    sel = out["selection"]
    for lo, hi in (("mag_f814w_min", "mag_f814w_max"), ("zphot_min", "zphot_max"),
                   ("hlr_arcsec_min", "hlr_arcsec_max")):
        if not sel[lo] < sel[hi]:
            raise ConfigError(f"{where}: selection.{lo} ({sel[lo]}) must be < selection.{hi} ({sel[hi]})")
    return out


def load(uri: str, overrides: dict[str, dict] | None = None) -> dict:
    """Read YAML from ``uri`` (local or s3://), apply ``{section: {key: value}}`` overrides, validate."""
    try:
        raw = yaml.safe_load(storage.read_bytes(uri))
    except FileNotFoundError as exc:
        raise ConfigError(f"{uri}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{uri}: not valid YAML ({exc})") from exc
    raw = copy.deepcopy(raw)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                if not isinstance(raw, dict) or not isinstance(raw.get(section), dict):
                    raise ConfigError(f"{uri}: missing section {section!r}")
                raw[section][key] = value
    return validate(raw, where=uri)
