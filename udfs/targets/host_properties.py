"""What a lens host's catalogue row says about its deflector: its light's shape and its redshift.

Shape (``shape_r`` arcsec, ``shape_e1``, ``shape_e2`` as on the sky, Tractor convention; the stamp
frame is :func:`udfs.lensing.deflector.tractor_to_stamp`'s business): DR9+ catalogues carry
``SHAPE_R/E1/E2`` for every type (``shape_source = "shape"``); DR8 ones carry a DEV and an EXP
shape, of which the row's type uses one (``shapedev`` | ``shapeexp``; COMP: the one holding more
flux, ``FRACDEV >= 0.5`` -> DEV); PSF sources are round points (``round``).

Redshift ``z_l``: the photo-z companion file of the catalogue when one is given
(``<stem>-pz.fits`` in the ``--photo-z`` folder, the DR9/DR10 layout of ``sweep/<dr>-photo-z/``,
matched row by row on ``RELEASE, BRICKID, OBJID``; ``Z_PHOT_MEDIAN``; ``zl_source =
"pz_file:<file name>"``), else the red-sequence colour estimate
(:func:`udfs.sources.red_galaxy.colour_redshift`, ``zl_source = "colour_estimate"``).
"""
from __future__ import annotations

import posixpath

import numpy as np

from udfs.io import storage
from udfs.sources.red_galaxy import colour_redshift
from udfs.survey.tractor_catalog import CatalogError

PZ_COLUMNS = ("RELEASE", "BRICKID", "OBJID", "Z_PHOT_MEDIAN")


def tractor_shapes(cols: dict[str, np.ndarray], uri: str) -> dict[str, np.ndarray]:
    """``shape_r, shape_e1, shape_e2, shape_source`` per row (see the module docstring)."""
    kind = np.asarray(cols["TYPE"]).astype(str)
    n = len(kind)
    if "SHAPE_R" in cols:
        r, e1, e2 = (np.asarray(cols[c], dtype=np.float64) for c in ("SHAPE_R", "SHAPE_E1", "SHAPE_E2"))
        source = np.full(n, "shape", dtype=object)
    elif "SHAPEDEV_R" in cols and "SHAPEEXP_R" in cols:
        frac = np.asarray(cols.get("FRACDEV", np.zeros(n)), dtype=np.float64)
        dev = (kind == "DEV") | ((kind == "COMP") & (frac >= 0.5))
        pick = lambda part: np.where(dev, cols[f"SHAPEDEV_{part}"], cols[f"SHAPEEXP_{part}"]).astype(np.float64)  # noqa: E731
        r, e1, e2 = pick("R"), pick("E1"), pick("E2")
        source = np.where(dev, "shapedev", "shapeexp").astype(object)
    else:
        raise CatalogError(f"{uri}: no shape columns (SHAPE_R/E1/E2, or SHAPEDEV_* and SHAPEEXP_*)")
    point = kind == "PSF"
    r, e1, e2 = (np.where(point, 0.0, np.nan_to_num(a)) for a in (r, e1, e2))
    source = np.where(point, "round", source).astype(object)
    return {"shape_r": r, "shape_e1": e1, "shape_e2": e2, "shape_source": source}


def photo_z_file(photo_z_dir: str | None, catalogue_uri: str) -> str | None:
    """The companion ``<stem>-pz.fits`` of a catalogue in ``photo_z_dir`` (None without a folder or
    when the folder has no companion for this catalogue)."""
    if not photo_z_dir:
        return None
    stem = posixpath.basename(catalogue_uri)
    for suffix in (".fits.gz", ".fits", ".fit"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    uri = storage.join(photo_z_dir, f"{stem}-pz.fits")
    return uri if storage.exists(uri) else None


def _read_pz(uri: str) -> dict[str, np.ndarray]:
    from astropy.io import fits

    try:
        with storage.open_input(uri) as f, fits.open(f, memmap=False) as hdul:
            data = hdul[1].data
            names = {n.upper(): n for n in data.columns.names}
            missing = [c for c in PZ_COLUMNS if c not in names]
            if missing:
                raise CatalogError(f"{uri}: photo-z file lacks column {missing[0]}")
            return {c: np.asarray(data[names[c]]).astype(np.float64 if c == "Z_PHOT_MEDIAN" else np.int64)
                    for c in PZ_COLUMNS}
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise CatalogError(f"{uri}: not a readable photo-z FITS file ({type(exc).__name__}: {exc})") from exc


def lens_redshifts(cols: dict[str, np.ndarray], mags: dict[str, np.ndarray], pz_uri: str | None,
                   uri: str) -> tuple[np.ndarray, np.ndarray]:
    """``(z_l, zl_source)`` per catalogue row (see the module docstring); a companion file whose rows
    do not match the catalogue's identifiers is refused naming both files."""
    estimate = colour_redshift(mags["g"], mags["r"], mags["z"])
    if pz_uri is None:
        return estimate, np.full(len(estimate), "colour_estimate", dtype=object)
    pz = _read_pz(pz_uri)
    ids = [np.asarray(cols[c]).astype(np.int64) for c in ("RELEASE", "BRICKID", "OBJID")]
    if len(pz["OBJID"]) != len(ids[0]) or not all(np.array_equal(a, pz[c]) for a, c in
                                                  zip(ids, ("RELEASE", "BRICKID", "OBJID"))):
        raise CatalogError(f"{pz_uri}: rows do not match {uri} (RELEASE, BRICKID, OBJID row by row)")
    z = pz["Z_PHOT_MEDIAN"]
    good = np.isfinite(z) & (z > 0)
    source = np.where(good, f"pz_file:{posixpath.basename(pz_uri)}", "colour_estimate").astype(object)
    return np.where(good, z, estimate), source
