"""Real-lens anchors from ``lenscat`` and hard negatives from real position lists, as stage-1 targets.

Coordinates always come from the catalogues (lenscat's ``RA``/``DEC``, a list's own columns),
never typed. Rows follow :data:`udfs.schemas.anchors.ANCHOR_SCHEMA`: the stage-1 target columns (so
``jobs.make_cutouts`` cuts them like any target) plus the lenscat columns. lenscat carries no PSF or
depth: ``psf_fwhm_g/r/z`` are the configured nominal values (``psf_fwhm_source = "g=nominal,..."``),
``psfdepth_*`` and magnitudes are null. Position checks: every anchor must lie within
``check_radius_arcsec`` of its lenscat entry (astropy ``SkyCoord`` separation from the entry it was
built from, by catalogue row, and the nearest entry over the whole catalogue) and on its cutout
(cutout ``ok`` and the target within half a pixel of the stamp centre, ``|dx_pix|, |dy_pix| <= 0.5``).
"""
from __future__ import annotations

import astropy.units as u
import numpy as np
import pandas as pd
from astropy.coordinates import SkyCoord, match_coordinates_sky

from udfs.io.errors import InputError
from udfs.schemas.anchors import ANCHOR_EXTRA, ANCHOR_SCHEMA
from udfs.survey.bands import SURVEY_BANDS
from udfs.survey.bricks import brick_at
from udfs.targets.anchor_config import AnchorConfig, Footprint, PositionList
from udfs.targets.splits import healpix_cells

NOMINAL_PSF_SOURCE = ",".join(f"{b}=nominal" for b in SURVEY_BANDS)


class AnchorError(InputError):
    """A position list, a ``--negatives`` value or the anchor selection is unusable (names the input)."""


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
    """Target rows (the ANCHOR_SCHEMA columns) for positions in deg; ``extra``: ANCHOR_EXTRA values
    (missing ones null)."""
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    n = len(ra)
    if not (np.isfinite(ra).all() and np.isfinite(dec).all()):
        bad = int(np.flatnonzero(~(np.isfinite(ra) & np.isfinite(dec)))[0])
        raise AnchorError(f"{source}: row {bad}: ra/dec not finite")
    none = [None] * n
    df = pd.DataFrame({
        "target_id": list(ids), "release": none, "brickid": none, "objid": none,
        "brickname": [brick_at(a, d).name for a, d in zip(ra, dec)], "ra": ra, "dec": dec, "type": none,
        "shape_r": none, "shape_e1": none, "shape_e2": none, "shape_source": none,
        "z_l": extra.get("z_l", none), "zl_source": extra.get("zl_source", none),
        "mag_g": none, "mag_r": none, "mag_z": none, "mag_w1": none,
        **{f"psf_fwhm_{b}": np.full(n, float(psf_nominal[b])) for b in SURVEY_BANDS},
        "psf_fwhm_source": NOMINAL_PSF_SOURCE,
        "psfdepth_g": none, "psfdepth_r": none, "psfdepth_z": none, "ebv": none, "maskbits": none,
        "nobs_g": none, "nobs_r": none, "nobs_z": none,
        "healpix": healpix_cells(ra, dec, nside), "healpix_nside": np.full(n, nside, dtype=np.int32),
        "split": split, "photsys": none, "data_release": none, "source_file": source,
        "cut_version": cut_version, "config_hash": chash, "code_version": version,
    })
    for col in ANCHOR_EXTRA:
        df[col] = extra.get(col, none)
    return df[[c for c in ANCHOR_SCHEMA.names]]


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
    (0-based row in file order, files sorted). :class:`AnchorError` naming the file/column on bad input."""
    df = _read_position_table(path)
    for col in (ra_column, dec_column):
        if col not in df:
            raise AnchorError(f"{path}: missing column {col!r} (columns: {', '.join(map(str, df.columns[:20]))})")
    ra = pd.to_numeric(df[ra_column], errors="coerce").to_numpy(dtype=np.float64)
    dec = pd.to_numeric(df[dec_column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) & (np.abs(dec) <= 90))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AnchorError(f"{path}: row {i}: {ra_column}={df[ra_column].iloc[i]}, {dec_column}="
                          f"{df[dec_column].iloc[i]} is not a valid sky position")
    out = df.copy()
    out["ra"], out["dec"], out["row"] = ra, dec, np.arange(len(df))
    return out


def _read_position_table(path: str) -> pd.DataFrame:
    import io

    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from udfs.io import storage
    from udfs.io.datasets import list_dataset

    fs, local = storage.resolve(path)
    kind = fs.get_file_info(local).type
    if kind == pafs.FileType.NotFound:
        raise AnchorError(f"{path}: position list not found")
    if kind == pafs.FileType.Directory:
        files = list_dataset(path, "a position-list dataset")
        return pd.concat([pq.read_table(storage.open_input(f)).to_pandas() for f in files], ignore_index=True)
    if path.endswith((".csv", ".tsv", ".txt")):
        return pd.read_csv(io.BytesIO(storage.read_bytes(path)), sep="\t" if path.endswith(".tsv") else ",")
    if path.endswith(".parquet"):
        return pq.read_table(storage.open_input(path)).to_pandas()
    raise AnchorError(f"{path}: unknown position-list format (expected .csv, .tsv, .parquet or a dataset folder)")


def extra_negatives(items: list[str]) -> list[PositionList]:
    """``--negatives NAME=PATH`` values as position lists with ``ra``/``dec`` columns."""
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise AnchorError(f"--negatives {item!r}: expected NAME=PATH")
        out.append(PositionList(name=name, path=path, ra_column="ra", dec_column="dec"))
    return out


def build_anchors(cfg: AnchorConfig, extra: list[PositionList], chash: str,
                  version: str) -> tuple[pd.DataFrame, dict]:
    """The anchor and negative rows (ANCHOR_SCHEMA columns) and the ``_anchors.json`` summary
    (counts, the position check of every anchor, the cross-check against independent lists)."""
    cat, lenscat_version = lenscat_table()
    sel = select_lenscat(cat, grading=cfg.grading, types=cfg.types, ref_contains=cfg.ref_contains,
                         footprint=cfg.footprint)
    common = dict(psf_nominal=cfg.psf_nominal, nside=cfg.healpix_nside, cut_version=cfg.cut_version,
                  chash=chash, version=version)
    anchors = target_rows(
        sel["RA"].to_numpy(), sel["DEC"].to_numpy(),
        ids=[f"lenscat:{r}:{n}" for r, n in zip(sel["catalog_row"], sel["name"])],
        split="anchor", source=lenscat_version,
        extra={"name": sel["name"].tolist(), "zlens": sel["zlens"].tolist(), "lens_type": sel["type"].tolist(),
               "z_l": [None if not np.isfinite(z) else float(z) for z in sel["zlens"]],
               "zl_source": [None if not np.isfinite(z) else "lenscat:zlens" for z in sel["zlens"]],
               "grading": sel["grading"].tolist(), "ref": sel["ref"].tolist(), "theta_e": [None] * len(sel),
               "catalog": [lenscat_version] * len(sel), "catalog_row": sel["catalog_row"].tolist()}, **common)
    frames, neg_counts = [anchors], {}
    for pl in list(cfg.negatives) + extra:
        rows, neg_counts[pl.name] = _negative_rows(pl, cfg, cat, common)
        frames.append(rows)
    rows = pd.concat(frames, ignore_index=True)
    if rows["target_id"].duplicated().any():
        raise AnchorError(f"duplicate target_id {rows.loc[rows['target_id'].duplicated(), 'target_id'].iloc[0]!r}")
    match = crossmatch_to_lenscat(anchors, cat, cfg.check_radius_arcsec)
    summary = {
        "lenscat": lenscat_version, "lenscat_rows": int(len(cat)), "anchors": int(len(anchors)),
        "anchors_by_grading": anchors["grading"].value_counts().sort_index().to_dict(),
        "negatives": neg_counts, "n_negatives": int(sum(v["kept"] for v in neg_counts.values())),
        "position_check": {"radius_arcsec": cfg.check_radius_arcsec, "checked": int(len(match)),
                           "within_radius": int(match["ok"].sum()),
                           "max_sep_arcsec": float(match["sep_arcsec"].max()) if len(match) else None,
                           "failures": match.loc[~match["ok"]].head(20).to_dict(orient="records")},
        "crosscheck": {pl.name: _crosscheck(pl, cfg.footprint, anchors) for pl in cfg.crosscheck},
        "psf_fwhm_fallback": {"values_arcsec": cfg.psf_nominal,
                              "why": "lenscat has no PSF; nominal typical DECaLS seeing, marked in psf_fwhm_source"},
    }
    return rows, summary


def _negative_rows(pl: PositionList, cfg: AnchorConfig, cat: pd.DataFrame, common: dict) -> tuple[pd.DataFrame, dict]:
    """One negatives list: the rows inside the footprint and far from every lenscat entry, and counts."""
    df = read_positions(pl.path, pl.ra_column, pl.dec_column)
    inside = cfg.footprint.contains(df["ra"].to_numpy(), df["dec"].to_numpy())
    far = exclude_near(df["ra"].to_numpy(), df["dec"].to_numpy(), cat["RA"].to_numpy(), cat["DEC"].to_numpy(),
                       cfg.exclusion_radius_arcsec)
    keep = df[inside & far]
    counts = {"path": pl.path, "rows": int(len(df)), "outside_footprint": int((~inside).sum()),
              "near_a_known_lens": int((inside & ~far).sum()), "kept": int(len(keep))}
    rows = target_rows(
        keep["ra"].to_numpy(), keep["dec"].to_numpy(), ids=[f"neg:{pl.name}:{r}" for r in keep["row"]],
        split="negative", source=pl.path,
        extra={"name": [f"{pl.name}:{r}" for r in keep["row"]], "catalog": [pl.name] * len(keep)}, **common)
    return rows, counts


def _crosscheck(pl: PositionList, footprint: Footprint, anchors: pd.DataFrame) -> dict:
    """How many anchors have a counterpart in an independent lens list (within its radius)."""
    df = read_positions(pl.path, pl.ra_column, pl.dec_column)
    inside = footprint.contains(df["ra"].to_numpy(), df["dec"].to_numpy())
    matched = ~exclude_near(anchors["ra"].to_numpy(), anchors["dec"].to_numpy(), df["ra"].to_numpy()[inside],
                            df["dec"].to_numpy()[inside], pl.radius_arcsec)
    return {"path": pl.path, "rows_in_footprint": int(inside.sum()),
            "anchors_with_a_counterpart": int(matched.sum()), "radius_arcsec": pl.radius_arcsec}


def position_error(summary: dict) -> AnchorError | None:
    """The error to raise when an anchor is farther than the check radius from its lenscat entry."""
    pc = summary["position_check"]
    if pc["within_radius"] == pc["checked"]:
        return None
    return AnchorError(f"{pc['checked'] - pc['within_radius']} anchor(s) are more than {pc['radius_arcsec']}\" "
                       f"from their lenscat entry: {pc['failures'][:3]}")


def anchor_table(rows: pd.DataFrame):
    """The rows as an Arrow table of :data:`ANCHOR_SCHEMA`."""
    import pyarrow as pa

    return pa.Table.from_pandas(rows[ANCHOR_SCHEMA.names], schema=ANCHOR_SCHEMA, preserve_index=False)
