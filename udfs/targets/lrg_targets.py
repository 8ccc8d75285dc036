"""Stage 1 per-file logic: catalogue rows -> selected LRG target rows, plus the funnel counts.

Rows follow :data:`udfs.schemas.targets.TARGET_SCHEMA` (columns, units and conventions there).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from udfs.schemas.targets import MAG_BANDS, TARGET_SCHEMA
from udfs.targets import lrg_cuts, splits
from udfs.targets.host_properties import lens_redshifts, tractor_shapes
from udfs.survey.psf_size import psf_fwhm
from udfs.survey.tractor_catalog import BANDS, Catalog

PSF_CUT = "psf_fwhm_unavailable"


def target_id(release, brickid, objid) -> np.ndarray:
    """``"<release>-<brickid>-<objid>"`` per row (object array of str)."""
    return np.array([f"{int(a)}-{int(b)}-{int(c)}" for a, b, c in zip(release, brickid, objid)], dtype=object)


def select_targets(cat: Catalog, cfg: lrg_cuts.SelectionConfig, *, config_hash: str,
                   code_version: str, photo_z: str | None = None) -> tuple[pd.DataFrame, list[tuple[str, int]], dict]:
    """Apply the cuts to one catalogue; return ``(targets, funnel steps, stats)``. ``photo_z``: the
    catalogue's photo-z companion file, if any (:mod:`udfs.targets.host_properties`)."""
    cols = cat.columns
    n = len(cat)
    north = lrg_cuts.use_north(cat.photsys, cfg.photsys)
    masks = {**lrg_cuts.lrg_masks(cols, north), **lrg_cuts.quality_masks(cols, cfg)}
    fwhm, source = {}, {}
    for b in BANDS:
        fwhm[b], source[b] = psf_fwhm(cols, b, cfg.psf_fallbacks, cfg.psf_nominal)
    masks[PSF_CUT] = np.all([np.isfinite(fwhm[b]) & (fwhm[b] > 0) for b in BANDS], axis=0)
    keep, steps = lrg_cuts.funnel(masks, n)

    sel = np.flatnonzero(keep)
    mags = lrg_cuts.extinction_corrected_mags(cols)
    shapes = tractor_shapes(cols, cat.uri)
    z_l, zl_source = lens_redshifts(cols, mags, photo_z, cat.uri)
    ra = cols["RA"][sel].astype(np.float64)
    dec = cols["DEC"][sel].astype(np.float64)
    cells = splits.healpix_cells(ra, dec, cfg.healpix_nside)
    df = pd.DataFrame({
        "target_id": target_id(cols["RELEASE"][sel], cols["BRICKID"][sel], cols["OBJID"][sel]),
        "release": cols["RELEASE"][sel].astype(np.int32),
        "brickid": cols["BRICKID"][sel].astype(np.int32),
        "objid": cols["OBJID"][sel].astype(np.int32),
        "brickname": cols["BRICKNAME"][sel].astype(str).astype(object),
        "ra": ra, "dec": dec,
        "type": cols["TYPE"][sel].astype(str).astype(object),
        **{k: v[sel] for k, v in shapes.items()},
        "z_l": z_l[sel], "zl_source": zl_source[sel],
        **{f"mag_{b}": mags[b][sel] for b in MAG_BANDS},
        **{f"psf_fwhm_{b}": fwhm[b][sel] for b in BANDS},
        "psf_fwhm_source": np.array([",".join(f"{b}={source[b][i]}" for b in BANDS) for i in sel],
                                    dtype=object),
        **{f"psfdepth_{b}": cols[f"PSFDEPTH_{b.upper()}"][sel].astype(np.float64) for b in BANDS},
        "ebv": cols["EBV"][sel].astype(np.float64),
        "maskbits": cols["MASKBITS"][sel].astype(np.int32),
        **{f"nobs_{b}": cols[f"NOBS_{b.upper()}"][sel].astype(np.int32) for b in BANDS},
        "healpix": cells,
        "healpix_nside": np.full(len(sel), cfg.healpix_nside, dtype=np.int32),
        "split": splits.assign_splits(cells, cfg.split_seed, cfg.healpix_nside,
                                      cfg.split_fractions).astype(object),
        "photsys": np.where(north[sel], "N", "S").astype(object),
        "data_release": cat.data_release[sel].astype(object),
        "source_file": np.full(len(sel), cat.uri, dtype=object),
        "cut_version": np.full(len(sel), cfg.cut_version, dtype=object),
        "config_hash": np.full(len(sel), config_hash, dtype=object),
        "code_version": np.full(len(sel), code_version, dtype=object),
    })
    stats = {
        "input_rows": n,
        "data_releases": {str(k): int(v) for k, v in zip(*np.unique(cat.data_release, return_counts=True))},
        "photsys_applied": {"N": int(north.sum()), "S": int(n - north.sum())},
        "psf_fwhm_sources": {f"{b}={str(m)}": int((source[b][sel] == m).sum())
                             for b in BANDS for m in np.unique(source[b][sel])},
        "zl_sources": {str(k): int(v) for k, v in zip(*np.unique(zl_source[sel].astype(str), return_counts=True))},
    }
    return df[TARGET_SCHEMA.names], steps, stats
