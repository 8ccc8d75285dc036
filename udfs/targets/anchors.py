"""Real-lens anchors from ``lenscat`` and hard negatives from real position lists, as stage-1 targets.

Coordinates always come from the catalogues (lenscat's ``RA``/``DEC``, a list's own columns),
never typed. Rows follow :data:`udfs.targets.lrg_targets.TARGET_SCHEMA` (so ``jobs.make_cutouts`` cuts them
like any target) plus the anchor columns in :data:`ANCHOR_EXTRA`. lenscat carries no PSF or depth:
``psf_fwhm_g/r/z`` are the configured nominal values (``psf_fwhm_source = "g=nominal,..."``),
``psfdepth_*`` and magnitudes are null. Position checks: every anchor must lie within
``check_radius_arcsec`` of its lenscat entry (astropy ``SkyCoord`` separation from the entry it was
built from, by catalogue row, and the nearest entry over the whole catalogue) and on its cutout (cutout ``ok`` and the target within half a pixel of the
stamp centre, ``|dx_pix|, |dy_pix| <= 0.5``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import astropy.units as u
import numpy as np
import pandas as pd
from astropy.coordinates import SkyCoord, match_coordinates_sky

from udfs.survey.bricks import brick_at
from udfs.targets.splits import healpix_cells

ANCHOR_EXTRA = ["name", "zlens", "lens_type", "grading", "ref", "theta_e", "catalog", "catalog_row"]


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


def lenscat_table() -> tuple[pd.DataFrame, str]:
    """lenscat's catalogue as pandas (name, RA, DEC, zlens (float or NaN), type, grading, ref) and
    the provenance string ``lenscat==<version>``."""
    import importlib.metadata

    import lenscat

    df = lenscat.catalog.to_pandas()[["name", "RA", "DEC", "zlens", "type", "grading", "ref"]].copy()
    df["zlens"] = pd.to_numeric(df["zlens"], errors="coerce")
    return df.reset_index(drop=True), f"lenscat=={importlib.metadata.version('lenscat')}"


def select_lenscat(cat: pd.DataFrame, *, grading, types, ref_contains, footprint: Footprint) -> pd.DataFrame:
    """Rows with grading in ``grading``, type in ``types``, ref containing any of ``ref_contains``
    (case-insensitive; empty = any) and inside the footprint; ``catalog_row`` = row in ``cat``."""
    keep = cat["grading"].isin(list(grading)) & cat["type"].isin(list(types))
    if ref_contains:
        ref = cat["ref"].astype(str).str.lower()
        keep &= np.logical_or.reduce([ref.str.contains(s.lower(), regex=False) for s in ref_contains])
    keep &= footprint.contains(cat["RA"].to_numpy(), cat["DEC"].to_numpy())
    return cat[keep.to_numpy()].rename_axis("catalog_row").reset_index()


def exclude_near(ra, dec, ref_ra, ref_dec, radius_arcsec: float) -> np.ndarray:
    """True where a position has no reference position within ``radius_arcsec``."""
    if len(ra) == 0 or len(ref_ra) == 0:
        return np.ones(len(ra), dtype=bool)
    _, sep, _ = match_coordinates_sky(SkyCoord(np.asarray(ra) * u.deg, np.asarray(dec) * u.deg),
                                      SkyCoord(np.asarray(ref_ra) * u.deg, np.asarray(ref_dec) * u.deg))
    return sep.arcsec > radius_arcsec


def target_rows(ra, dec, *, ids, split: str, psf_nominal: dict, nside: int, extra: dict, source: str,
                cut_version: str, chash: str, version: str) -> pd.DataFrame:
    """Stage-1 target rows (TARGET_SCHEMA columns + ANCHOR_EXTRA) for the given positions."""
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    n = len(ra)
    if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
        bad = int(np.flatnonzero(~(np.isfinite(ra) & np.isfinite(dec)))[0])
        raise ValueError(f"{source}: row {bad}: ra/dec not finite")
    none = [None] * n
    df = pd.DataFrame({
        "target_id": list(ids), "release": none, "brickid": none, "objid": none,
        "brickname": [brick_at(a, d).name for a, d in zip(ra, dec)], "ra": ra, "dec": dec, "type": none,
        "mag_g": none, "mag_r": none, "mag_z": none, "mag_w1": none,
        **{f"psf_fwhm_{b}": np.full(n, float(psf_nominal[b])) for b in "grz"},
        "psf_fwhm_source": "g=nominal,r=nominal,z=nominal",
        "psfdepth_g": none, "psfdepth_r": none, "psfdepth_z": none, "ebv": none, "maskbits": none,
        "nobs_g": none, "nobs_r": none, "nobs_z": none,
        "healpix": healpix_cells(ra, dec, nside), "healpix_nside": np.full(n, nside, dtype=np.int32),
        "split": split, "photsys": none, "data_release": none, "source_file": source,
        "cut_version": cut_version, "config_hash": chash, "code_version": version,
    })
    for col in ANCHOR_EXTRA:
        df[col] = extra.get(col, none)
    return df


def crossmatch_to_lenscat(anchors: pd.DataFrame, cat: pd.DataFrame, radius_arcsec: float) -> pd.DataFrame:
    """Per anchor row (columns target_id, name, catalog_row, ra, dec): the separation (arcsec) from
    its own lenscat entry (row ``catalog_row``; lenscat names are not unique), the nearest lenscat
    entry over the whole catalogue and its separation, and ``ok`` = own separation <= radius."""
    cols = ["target_id", "name", "sep_arcsec", "nearest_name", "nearest_sep_arcsec", "ok"]
    if anchors.empty:
        return pd.DataFrame(columns=cols)
    a = SkyCoord(anchors["ra"].to_numpy() * u.deg, anchors["dec"].to_numpy() * u.deg)
    c = SkyCoord(cat["RA"].to_numpy() * u.deg, cat["DEC"].to_numpy() * u.deg)
    idx, sep, _ = match_coordinates_sky(a, c)
    rows = anchors["catalog_row"].to_numpy(dtype=np.int64)
    valid = (rows >= 0) & (rows < len(cat))
    own = np.full(len(anchors), np.inf)
    if valid.any():
        own[valid] = a[valid].separation(c[rows[valid]]).arcsec
    return pd.DataFrame({"target_id": anchors["target_id"].to_numpy(), "name": anchors["name"].to_numpy(),
                         "sep_arcsec": own, "nearest_name": cat["name"].to_numpy()[idx],
                         "nearest_sep_arcsec": sep.arcsec, "ok": own <= radius_arcsec})[cols]


def footprint_check(anchors: pd.DataFrame, cutouts: pd.DataFrame, radius_arcsec: float) -> pd.DataFrame:
    """Per anchor: is it on its cutout? ``cutouts``: target_id, ok, fail_reason, dx_pix, dy_pix, ra, dec.

    ``on_stamp``: the cutout row exists, is ok, the target sits within half a pixel of the stamp
    centre and the cutout's ra/dec agree with the anchor's within ``radius_arcsec``."""
    m = anchors[["target_id", "ra", "dec"]].merge(
        cutouts[["target_id", "ok", "fail_reason", "dx_pix", "dy_pix", "ra", "dec"]].rename(
            columns={"ra": "cut_ra", "dec": "cut_dec"}), on="target_id", how="left")
    has = m["ok"].notna()
    sep = np.full(len(m), np.nan)
    if has.any():
        sep[has.to_numpy()] = SkyCoord(m.loc[has, "ra"].to_numpy() * u.deg, m.loc[has, "dec"].to_numpy() * u.deg) \
            .separation(SkyCoord(m.loc[has, "cut_ra"].to_numpy() * u.deg,
                                 m.loc[has, "cut_dec"].to_numpy() * u.deg)).arcsec
    m["cutout_sep_arcsec"] = sep
    centred = (m["dx_pix"].abs() <= 0.5) & (m["dy_pix"].abs() <= 0.5)
    m["on_stamp"] = has & m["ok"].fillna(False).astype(bool) & centred.fillna(False) & (m["cutout_sep_arcsec"] <= radius_arcsec)
    reason = np.where(~has, "no_cutout_row",
                      np.where(~m["ok"].fillna(False).astype(bool), "cutout_failed:" + m["fail_reason"].fillna("?").astype(str),
                               np.where(~centred.fillna(False), "off_centre",
                                        np.where(~(m["cutout_sep_arcsec"] <= radius_arcsec), "cutout_position_differs", ""))))
    m["problem"] = reason
    return m


def read_positions(path: str, ra_column: str, dec_column: str) -> pd.DataFrame:
    """A position list: ``.csv``/``.tsv`` text, a ``.parquet`` file or a Parquet dataset folder (local
    or s3://). Returns the table with ``ra``/``dec`` (deg) taken from the named columns and ``row``
    (0-based row in file order, files sorted). ValueError naming the file/column on bad input."""
    import io

    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from udfs.io import storage

    fs, local = storage.resolve(path)
    kind = fs.get_file_info(local).type
    if kind == pafs.FileType.NotFound:
        raise ValueError(f"{path}: position list not found")
    if kind == pafs.FileType.Directory:
        info = fs.get_file_info(pafs.FileSelector(local, recursive=True))
        files = sorted(i.path for i in info if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
        if not files:
            raise ValueError(f"{path}: no Parquet files in the position-list folder")
        files = ["s3://" + f for f in files] if storage.is_s3(path) else files
        df = pd.concat([pq.read_table(storage.open_input(f)).to_pandas() for f in files], ignore_index=True)
    elif path.endswith((".csv", ".tsv", ".txt")):
        df = pd.read_csv(io.BytesIO(storage.read_bytes(path)), sep="\t" if path.endswith(".tsv") else ",")
    elif path.endswith(".parquet"):
        df = pq.read_table(storage.open_input(path)).to_pandas()
    else:
        raise ValueError(f"{path}: unknown position-list format (expected .csv, .tsv, .parquet or a dataset folder)")
    for col in (ra_column, dec_column):
        if col not in df:
            raise ValueError(f"{path}: missing column {col!r} (columns: {', '.join(map(str, df.columns[:20]))})")
    ra = pd.to_numeric(df[ra_column], errors="coerce").to_numpy(dtype=np.float64)
    dec = pd.to_numeric(df[dec_column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) & (np.abs(dec) <= 90))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: row {i}: {ra_column}={df[ra_column].iloc[i]}, {dec_column}="
                         f"{df[dec_column].iloc[i]} is not a valid sky position")
    out = df.copy()
    out["ra"], out["dec"], out["row"] = ra, dec, np.arange(len(df))
    return out
