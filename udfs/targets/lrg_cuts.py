"""DESI main-survey LRG selection plus configurable quality cuts, as per-cut boolean masks.

The LRG cut re-implements the DESI main-survey selection (Zhou et al. 2023; desitarget
``cuts.isLRG``) from its published equations. All fluxes are divided by ``MW_TRANSMISSION_*``
except ``FIBERTOTFLUX_Z``; magnitudes are AB, ``m = 22.5 - 2.5 log10(flux / nanomaggy)``, with
fluxes clipped at 1e-7 nanomaggies before the log (an undetected g band is then very faint, so it
passes ``g - W1 > 2.9``, as in desitarget). Quality: r, z, W1 flux and ivar > 0, FIBERFLUX_Z > 0,
Gaia G == 0 or > 18, FIBERTOTFLUX_Z fainter than 17.5 mag, NOBS_G/R/Z > 0, MASKBITS 1, 12, 13 unset.
Colours (south / north constants):

- ``z - W1 > 0.8 (r - z) - 0.6``
- ``zfibermag < 21.6 / 21.61``
- ``(g - W1 > 2.9 / 2.97) or (r - W1 > 1.8)``
- ``((r - W1 > s (W1 - p1)) and (r - W1 > W1 - p2)) or (r - W1 > h)`` with
  s = 1.8 / 1.83, p1 = 17.14 / 17.13, p2 = 16.33 / 16.31, h = 3.3 / 3.4.

:func:`select` returns every cut's mask (evaluated on all rows) in a fixed order; the funnel
counts, for each cut in turn, the rows it removes among those that passed the earlier cuts, so
``input - sum(removed) == selected`` exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from udfs.config.checker import Checker, ConfigError, load_yaml
from udfs.schemas.targets import MAG_BANDS
from udfs.survey.bands import SURVEY_BANDS
from udfs.survey.psf_size import METHODS

FLUX_FLOOR = 1e-7  # nanomaggies


@dataclass(frozen=True)
class LRGConstants:
    zfibermag_max: float
    gw1_min: float
    rw1_lowz_min: float
    slope: float
    w1_pivot: float
    w1_offset: float
    rw1_highz: float


SOUTH = LRGConstants(zfibermag_max=21.6, gw1_min=2.9, rw1_lowz_min=1.8, slope=1.8, w1_pivot=17.14,
                     w1_offset=16.33, rw1_highz=3.3)
NORTH = LRGConstants(zfibermag_max=21.61, gw1_min=2.97, rw1_lowz_min=1.8, slope=1.83, w1_pivot=17.13,
                     w1_offset=16.31, rw1_highz=3.4)

LRG_CUTS = ("lrg_r_quality", "lrg_z_quality", "lrg_w1_quality", "lrg_gaia_bright", "lrg_zfibertot_bright",
            "lrg_nobs", "lrg_maskbits", "lrg_nonstellar", "lrg_zfiber_faint", "lrg_lowz", "lrg_sliding")
BANDS = tuple(SURVEY_BANDS)
PSF_FALLBACKS = tuple(m for m in METHODS if m != "psfsize")  # what psf_fwhm.fallbacks may list
TOP_KEYS = {"cut_version", "photsys", "quality", "psf_fwhm", "healpix", "splits", "output"}


@dataclass(frozen=True)
class SelectionConfig:
    """``conf/lrg_selection.yaml``, checked. Magnitude limits are extinction-corrected AB, inclusive,
    ``None`` = open; PSF FWHM in arcsec."""
    cut_version: str
    photsys: str                         # auto | south | north
    require_brick_primary: bool
    exclude_types: tuple[str, ...]
    reject_maskbits: tuple[int, ...]
    min_nobs: dict[str, int]
    mag_limits: dict[str, tuple[float | None, float | None]]
    psf_fallbacks: tuple[str, ...]
    psf_nominal: dict[str, float] | None
    healpix_nside: int
    split_seed: int
    split_fractions: dict[str, float]
    n_buckets: int
    raw: dict                            # the validated mapping (hashed into config_hash)


def load_config(uri: str) -> SelectionConfig:
    """Read and validate ``conf/lrg_selection.yaml`` (errors name the file and the key)."""
    return parse_config(load_yaml(uri), uri)


def parse_config(raw: dict, source: str = "<config>") -> SelectionConfig:
    """Check a selection mapping; :class:`ConfigError` names ``source`` and the dotted key."""
    c = Checker(source)
    c.unknown(raw, TOP_KEYS, "")
    quality = _quality(c, c.mapping(raw, "quality", "quality"))
    psf_fallbacks, psf_nominal = _psf(c, c.mapping(raw, "psf_fwhm", "psf_fwhm"))
    nside = _nside(c, c.mapping(raw, "healpix", "healpix"))
    seed, fractions = _splits(c, c.mapping(raw, "splits", "splits"))
    output = c.mapping(raw, "output", "output")
    c.unknown(output, {"n_buckets"}, "output")
    return SelectionConfig(
        cut_version=c.string(raw, "cut_version", "cut_version"),
        photsys=c.string(raw, "photsys", "photsys", choices=("auto", "south", "north")),
        **quality, psf_fallbacks=psf_fallbacks, psf_nominal=psf_nominal,
        healpix_nside=nside, split_seed=seed, split_fractions=fractions,
        n_buckets=c.integer(output, "n_buckets", "output.n_buckets", lo=1),
        raw=raw)


def _quality(c: Checker, quality: dict) -> dict:
    """The ``quality`` section as SelectionConfig fields."""
    c.unknown(quality, {"require_brick_primary", "exclude_types", "reject_maskbits", "min_nobs",
                        "mag_limits"}, "quality")
    types = c.get(quality, "exclude_types", "quality.exclude_types")
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise c.fail("quality.exclude_types", f"expected a list of TYPE strings, got {types!r}")
    bits = c.get(quality, "reject_maskbits", "quality.reject_maskbits")
    if not isinstance(bits, list) or not all(isinstance(b, int) and not isinstance(b, bool)
                                             and 0 <= b < 32 for b in bits):
        raise c.fail("quality.reject_maskbits", f"expected a list of bit numbers 0-31, got {bits!r}")
    nobs = c.mapping(quality, "min_nobs", "quality.min_nobs")
    c.unknown(nobs, set(BANDS), "quality.min_nobs")
    limits = c.mapping(quality, "mag_limits", "quality.mag_limits")
    c.unknown(limits, set(MAG_BANDS), "quality.mag_limits")
    return {
        "require_brick_primary": c.boolean(quality, "require_brick_primary", "quality.require_brick_primary"),
        "exclude_types": tuple(t.strip().upper() for t in types),
        "reject_maskbits": tuple(sorted(set(bits))),
        "min_nobs": {b: c.integer(nobs, b, f"quality.min_nobs.{b}", lo=0) for b in BANDS},
        "mag_limits": {band: _mag_limit(c, lim, f"quality.mag_limits.{band}") for band, lim in limits.items()},
    }


def _mag_limit(c: Checker, lim, key: str) -> tuple[float | None, float | None]:
    if not isinstance(lim, dict):
        raise c.fail(key, f"expected a mapping with 'min' and 'max' (null = open), got {lim!r}")
    c.unknown(lim, {"min", "max"}, key)
    lo = c.number(lim, "min", f"{key}.min", allow_none=True)
    hi = c.number(lim, "max", f"{key}.max", allow_none=True)
    if lo is not None and hi is not None and lo >= hi:
        raise c.fail(key, f"min ({lo}) must be below max ({hi})")
    return lo, hi


def _psf(c: Checker, psf: dict) -> tuple[tuple[str, ...], dict[str, float] | None]:
    """``psf_fwhm``: the allowed fallbacks and the nominal FWHM per band (arcsec) or None."""
    c.unknown(psf, {"fallbacks", "nominal_arcsec"}, "psf_fwhm")
    fallbacks = c.get(psf, "fallbacks", "psf_fwhm.fallbacks")
    if not isinstance(fallbacks, list) or not all(f in PSF_FALLBACKS for f in fallbacks):
        raise c.fail("psf_fwhm.fallbacks", f"expected a list of 'depth_ratio' and/or 'nominal', got {fallbacks!r}")
    nominal_raw = c.get(psf, "nominal_arcsec", "psf_fwhm.nominal_arcsec")
    nominal = None
    if nominal_raw is not None:
        if not isinstance(nominal_raw, dict):
            raise c.fail("psf_fwhm.nominal_arcsec", f"expected a mapping g/r/z -> arcsec or null, got {nominal_raw!r}")
        c.unknown(nominal_raw, set(BANDS), "psf_fwhm.nominal_arcsec")
        nominal = {b: c.number(nominal_raw, b, f"psf_fwhm.nominal_arcsec.{b}", lo=0, lo_open=True)
                   for b in BANDS}
    if "nominal" in fallbacks and nominal is None:
        raise c.fail("psf_fwhm.nominal_arcsec", "fallback 'nominal' is listed but no nominal values are given")
    return tuple(fallbacks), nominal


def _nside(c: Checker, hp: dict) -> int:
    c.unknown(hp, {"nside"}, "healpix")
    nside = c.integer(hp, "nside", "healpix.nside", lo=1, hi=2 ** 29)
    if nside & (nside - 1):
        raise c.fail("healpix.nside", f"must be a power of 2, got {nside}")
    return nside


def _splits(c: Checker, splits: dict) -> tuple[int, dict[str, float]]:
    """``splits``: the seed and the ordered fractions (summing to 1)."""
    c.unknown(splits, {"seed", "fractions"}, "splits")
    seed = c.integer(splits, "seed", "splits.seed", lo=0, hi=2 ** 63 - 1)
    fr = c.mapping(splits, "fractions", "splits.fractions")
    fractions = {name: c.number(fr, name, f"splits.fractions.{name}", lo=0, hi=1) for name in fr}
    if not fractions or abs(sum(fractions.values()) - 1) > 1e-9:
        raise c.fail("splits.fractions", f"must sum to 1, got {sum(fractions.values())}")
    return seed, fractions


def _mag(flux: np.ndarray) -> np.ndarray:
    return 22.5 - 2.5 * np.log10(np.clip(flux.astype(np.float64), FLUX_FLOOR, None))


def lrg_masks(cols: dict[str, np.ndarray], north: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the DESI LRG cut, each evaluated on every row; ``north`` selects the constants."""
    north = np.asarray(north, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _lrg_masks(cols, north)


def _lrg_masks(cols: dict[str, np.ndarray], north: np.ndarray) -> dict[str, np.ndarray]:
    f = {b: cols[f"FLUX_{b.upper()}"].astype(np.float64) / cols[f"MW_TRANSMISSION_{b.upper()}"]
         for b in MAG_BANDS}
    iv = {b: cols[f"FLUX_IVAR_{b.upper()}"] for b in ("r", "z", "w1")}
    zfiber = cols["FIBERFLUX_Z"].astype(np.float64) / cols["MW_TRANSMISSION_Z"]
    g, r, z, w1 = (_mag(f[b]) for b in MAG_BANDS)
    zfibermag = _mag(zfiber)
    gaia_g = cols["GAIA_PHOT_G_MEAN_MAG"]
    k = {name: np.where(north, getattr(NORTH, name), getattr(SOUTH, name))
         for name in LRGConstants.__dataclass_fields__}
    rw1 = r - w1
    maskbits = cols["MASKBITS"].astype(np.int64)
    masks = {
        "lrg_r_quality": (f["r"] > 0) & (iv["r"] > 0),
        "lrg_z_quality": (f["z"] > 0) & (iv["z"] > 0) & (zfiber > 0),
        "lrg_w1_quality": (f["w1"] > 0) & (iv["w1"] > 0),
        "lrg_gaia_bright": (gaia_g == 0) | (gaia_g > 18),
        "lrg_zfibertot_bright": cols["FIBERTOTFLUX_Z"] < 10 ** (-0.4 * (17.5 - 22.5)),
        "lrg_nobs": (cols["NOBS_G"] > 0) & (cols["NOBS_R"] > 0) & (cols["NOBS_Z"] > 0),
        "lrg_maskbits": (maskbits & ((1 << 1) | (1 << 12) | (1 << 13))) == 0,
        "lrg_nonstellar": z - w1 > 0.8 * (r - z) - 0.6,
        "lrg_zfiber_faint": zfibermag < k["zfibermag_max"],
        "lrg_lowz": (g - w1 > k["gw1_min"]) | (rw1 > k["rw1_lowz_min"]),
        "lrg_sliding": ((rw1 > k["slope"] * (w1 - k["w1_pivot"])) & (rw1 > w1 - k["w1_offset"]))
                       | (rw1 > k["rw1_highz"]),
    }
    assert tuple(masks) == LRG_CUTS
    return masks


def extinction_corrected_mags(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """AB magnitudes corrected for Galactic extinction; NaN where the flux is <= 0 (not detected)."""
    out = {}
    for b in MAG_BANDS:
        flux = cols[f"FLUX_{b.upper()}"].astype(np.float64) / cols[f"MW_TRANSMISSION_{b.upper()}"]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[b] = np.where(flux > 0, 22.5 - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)
    return out


def quality_masks(cols: dict[str, np.ndarray], cfg: SelectionConfig) -> dict[str, np.ndarray]:
    """The configurable quality cuts (names ``q_*``); a cut without its column is skipped."""
    n = len(cols["RELEASE"])
    masks = {}
    if cfg.require_brick_primary and "BRICK_PRIMARY" in cols:
        masks["q_brick_primary"] = cols["BRICK_PRIMARY"].astype(bool)
    if cfg.exclude_types:
        masks["q_type"] = ~np.isin(np.char.upper(cols["TYPE"].astype(str)), cfg.exclude_types)
    if cfg.reject_maskbits:
        bits = sum(1 << b for b in cfg.reject_maskbits)
        masks["q_maskbits"] = (cols["MASKBITS"].astype(np.int64) & bits) == 0
    if any(cfg.min_nobs.values()):
        ok = np.ones(n, dtype=bool)
        for b, m in cfg.min_nobs.items():
            ok &= cols[f"NOBS_{b.upper()}"] >= m
        masks["q_nobs"] = ok
    mags = extinction_corrected_mags(cols)
    for band, (lo, hi) in sorted(cfg.mag_limits.items()):
        m = mags[band]
        ok = np.isfinite(m)
        if lo is not None:
            ok &= m >= lo
        if hi is not None:
            ok &= m <= hi
        masks[f"q_mag_{band}"] = ok
    return masks


def use_north(photsys: np.ndarray, mode: str) -> np.ndarray:
    """Per-row choice of the north constants: from the camera (``auto``) or forced."""
    if mode == "auto":
        return np.asarray(photsys) == "N"
    if mode not in ("south", "north"):
        raise ConfigError(f"photsys: must be auto, south or north; got {mode!r}")
    return np.full(len(photsys), mode == "north")


def funnel(masks: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Apply masks in order; return the final selection and ``[(cut, rows removed), ...]``."""
    keep = np.ones(n, dtype=bool)
    steps = []
    for name, mask in masks.items():
        after = keep & mask
        steps.append((name, int(keep.sum() - after.sum())))
        keep = after
    return keep, steps
