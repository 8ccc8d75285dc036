"""Load and check ``conf/anchors.yaml`` (jobs.build_anchors); errors name the file and the dotted key.

Angles in degrees (footprint boxes) or arcsec (radii, PSF FWHM). ``{data_root}`` in a list's path is
the sample-data folder (:func:`udfs.config.sample_data.data_root`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from udfs.config.checker import Checker, load_yaml
from udfs.config.sample_data import expand_data_root
from udfs.survey.bands import SURVEY_BANDS
from udfs.survey.bricks import brick_at

TOP_KEYS = {"cut_version", "lenscat", "footprint", "psf_fwhm_nominal_arcsec", "negatives", "crosscheck",
            "check_radius_arcsec", "healpix_nside", "n_buckets"}


@dataclass(frozen=True)
class Footprint:
    """Sky area: inside any RA/Dec box (deg, inclusive; RA lo > hi wraps through 0) or any listed brick."""
    boxes: tuple = ()
    bricks: frozenset = field(default_factory=frozenset)

    def contains(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        ra = np.mod(np.asarray(ra, dtype=np.float64), 360.0)
        dec = np.asarray(dec, dtype=np.float64)
        keep = np.zeros(ra.shape, dtype=bool)
        for (ra_lo, ra_hi), (dec_lo, dec_hi) in self.boxes:
            in_ra = (ra >= ra_lo) & (ra <= ra_hi) if ra_lo <= ra_hi else (ra >= ra_lo) | (ra <= ra_hi)
            keep |= in_ra & (dec >= dec_lo) & (dec <= dec_hi)
        if self.bricks:
            keep |= np.array([brick_at(a, d).name in self.bricks for a, d in zip(ra, dec)], dtype=bool)
        return keep


@dataclass(frozen=True)
class PositionList:
    """A list of sky positions (csv/tsv/Parquet file or dataset) and its RA/Dec columns (deg)."""
    name: str
    path: str
    ra_column: str
    dec_column: str
    radius_arcsec: float | None = None   # crosscheck lists: the match radius


@dataclass(frozen=True)
class AnchorConfig:
    cut_version: str
    grading: tuple[str, ...]
    types: tuple[str, ...]
    ref_contains: tuple[str, ...]
    footprint: Footprint
    psf_nominal: dict                    # band -> FWHM, arcsec
    negatives: tuple[PositionList, ...]
    exclusion_radius_arcsec: float
    crosscheck: tuple[PositionList, ...]
    check_radius_arcsec: float
    healpix_nside: int
    n_buckets: int
    raw: dict                            # the validated mapping (hashed into config_hash)


def load_config(uri: str) -> AnchorConfig:
    return parse_config(load_yaml(uri), uri)


def parse_config(data: dict, source: str) -> AnchorConfig:
    """Check an anchors mapping; :class:`~udfs.config.checker.ConfigError` names ``source`` and the key."""
    c = Checker(source)
    c.unknown(data, TOP_KEYS, "")
    lc = c.mapping(data, "lenscat", "lenscat")
    c.unknown(lc, {"grading", "types", "ref_contains"}, "lenscat")
    footprint = _footprint(c, c.mapping(data, "footprint", "footprint"))
    psf_nominal = c.per_band(data, "psf_fwhm_nominal_arcsec", SURVEY_BANDS, lo=0, lo_open=True, hi=10)
    neg = c.mapping(data, "negatives", "negatives")
    c.unknown(neg, {"lists", "exclusion_radius_arcsec"}, "negatives")
    return AnchorConfig(
        cut_version=c.string(data, "cut_version", "cut_version"),
        grading=_strings(c, lc, "grading", "lenscat.grading", allow_empty=False),
        types=_strings(c, lc, "types", "lenscat.types", allow_empty=False),
        ref_contains=_strings(c, lc, "ref_contains", "lenscat.ref_contains"),
        footprint=footprint, psf_nominal=psf_nominal,
        negatives=_lists(c, neg, "lists", "negatives.lists", False),
        exclusion_radius_arcsec=c.number(neg, "exclusion_radius_arcsec", "negatives.exclusion_radius_arcsec", lo=0),
        crosscheck=_lists(c, data, "crosscheck", "crosscheck", True),
        check_radius_arcsec=c.number(data, "check_radius_arcsec", "check_radius_arcsec", lo=0, lo_open=True),
        healpix_nside=c.integer(data, "healpix_nside", "healpix_nside", lo=1, hi=2 ** 29),
        n_buckets=c.integer(data, "n_buckets", "n_buckets", lo=1),
        raw=data)


def _footprint(c: Checker, fp: dict) -> Footprint:
    c.unknown(fp, {"boxes", "bricks"}, "footprint")
    boxes_raw = c.get(fp, "boxes", "footprint.boxes")
    if not isinstance(boxes_raw, list):
        raise c.fail("footprint.boxes", f"expected a list of [[ra_lo, ra_hi], [dec_lo, dec_hi]], got {boxes_raw!r}")
    boxes = tuple(_box(c, b, f"footprint.boxes[{i}]") for i, b in enumerate(boxes_raw))
    bricks = _strings(c, fp, "bricks", "footprint.bricks")
    if not boxes and not bricks:
        raise c.fail("footprint", "needs at least one box or brick (choose the sky the anchors may come from)")
    return Footprint(boxes=boxes, bricks=frozenset(bricks))


def _box(c: Checker, b, key: str) -> tuple[tuple[float, float], tuple[float, float]]:
    if not (isinstance(b, list) and len(b) == 2 and all(isinstance(p, list) and len(p) == 2 for p in b)):
        raise c.fail(key, f"expected [[ra_lo, ra_hi], [dec_lo, dec_hi]], got {b!r}")
    (r0, r1), (d0, d1) = b
    vals = [c.number({"v": x}, "v", key, lo=lo, hi=hi) for x, lo, hi in
            ((r0, 0, 360), (r1, 0, 360), (d0, -90, 90), (d1, -90, 90))]
    if vals[2] > vals[3]:
        raise c.fail(key, f"dec_lo {vals[2]} > dec_hi {vals[3]}")
    return (vals[0], vals[1]), (vals[2], vals[3])


def _strings(c: Checker, parent, name, key, *, allow_empty=True) -> tuple[str, ...]:
    v = c.get(parent, name, key)
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v) or (not v and not allow_empty):
        raise c.fail(key, f"expected a list of non-empty strings, got {v!r}")
    return tuple(v)


def _lists(c: Checker, parent, name, key, with_radius) -> tuple[PositionList, ...]:
    v = c.get(parent, name, key)
    if not isinstance(v, list):
        raise c.fail(key, f"expected a list, got {v!r}")
    out = []
    allowed = {"name", "path", "ra_column", "dec_column"} | ({"radius_arcsec"} if with_radius else set())
    for i, item in enumerate(v):
        k = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise c.fail(k, f"expected a mapping, got {item!r}")
        c.unknown(item, allowed, k)
        path = c.string(item, "path", f"{k}.path")
        path = expand_data_root(path)
        out.append(PositionList(name=c.string(item, "name", f"{k}.name"), path=path,
                                ra_column=c.string(item, "ra_column", f"{k}.ra_column"),
                                dec_column=c.string(item, "dec_column", f"{k}.dec_column"),
                                radius_arcsec=c.number(item, "radius_arcsec", f"{k}.radius_arcsec", lo=0,
                                                       lo_open=True) if with_radius else None))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise c.fail(key, f"list names must be unique, got {names}")
    return tuple(out)
