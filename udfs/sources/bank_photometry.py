"""Where a bank galaxy's photometry and redshift come from, and the bank's SED columns built from it.

Routes, recorded per galaxy in ``colour_source`` (first that applies):

- ``external_photometry``: ``--photometry FILE`` (FITS, CSV, TSV or Parquet), columns named in the
  bank config's ``photometry`` section: RA/Dec in degrees, total AB magnitudes per speclite filter
  (a magnitude that is not finite or lies outside 0-40, e.g. COSMOS2020's -99/99 sentinels, is a
  missing band), photo-z. Each COSMOS galaxy (catalogue ``RA``/``DEC``) takes its nearest
  neighbour within ``match_radius_arcsec`` (``phot_sep_arcsec``, NaN when unmatched); a match with
  a finite photo-z > 0 and at least one band gives the galaxy that photo-z (``zphot_source`` = the
  file's base name) and its magnitudes;
- ``hsc_photometry``: the catalogue's own HSC g, r, i, z, y (btk_ext26's ``_fits`` companion), all
  finite, at the catalogue photo-z;
- ``cww_template``: F814W alone with the CWW template GalSim assigns to the Sersic index
  (:func:`udfs.sources.colours.template_for_sersic_n`): r = F814W + (r - F814W) of the template.

Either photometry route fits an absolute SED (:func:`udfs.sources.sed.fit_sed`) and anchors the
DECam g, r, z to the nearest measured bands (:func:`udfs.sources.sed.anchored_decam`); unmatched
galaxies keep the catalogue route, counted in the bank's ``photometry_counts`` attribute.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from udfs.config.bank import Photometry
from udfs.io import storage
from udfs.io.errors import InputError
from udfs.sources import colours, sed
from udfs.sources.cosmos_catalog import CatalogError, CosmosCatalog

MAG_RANGE = (0.0, 40.0)
_FORMATS = {".fits": "fits", ".fit": "fits", ".fits.gz": "fits", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
            ".parquet": "parquet", ".pq": "parquet"}


class PhotometryError(InputError):
    """An external photometric catalogue that cannot be read or lacks a configured column."""


@dataclass(frozen=True)
class ExternalMatch:
    """The external catalogue matched to every row of the COSMOS catalogue (row-aligned arrays)."""
    name: str                   # base name of the photometry file (the bank's ``zphot_source``)
    filters: tuple[str, ...]    # speclite names of the magnitude columns
    mags: np.ndarray            # (N, F) AB, NaN = missing band or unmatched
    zphot: np.ndarray           # (N,), NaN when unmatched
    sep_arcsec: np.ndarray      # (N,), NaN when unmatched
    usable: np.ndarray          # (N,) bool: matched, photo-z > 0 and at least one band


def _format(uri: str) -> str:
    low = uri.lower()
    for ext in sorted(_FORMATS, key=len, reverse=True):
        if low.endswith(ext):
            return _FORMATS[ext]
    raise PhotometryError(f"{uri}: unknown photometry file format (expected one of {', '.join(_FORMATS)})")


def _read_columns(uri: str, names: list[str]) -> dict[str, np.ndarray]:
    """The named columns of a FITS (first table HDU), CSV, TSV or Parquet table, as float arrays."""
    kind = _format(uri)
    try:
        raw = io.BytesIO(storage.read_bytes(uri))
        if kind == "fits":
            from astropy.table import Table

            table = Table.read(raw, format="fits")
            have, get = set(table.colnames), lambda c: np.asarray(table[c])
        elif kind == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(raw)
            have, get = set(table.column_names), lambda c: table.column(c).to_numpy(zero_copy_only=False)
        else:
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(raw, parse_options=pacsv.ParseOptions(delimiter="\t" if kind == "tsv" else ","))
            have, get = set(table.column_names), lambda c: table.column(c).to_numpy(zero_copy_only=False)
    except Exception as exc:  # any reader failure is a bad input file, reported in one line
        raise PhotometryError(f"{uri}: cannot read the photometry catalogue as {kind} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    out = {}
    for col in names:
        if col not in have:
            raise PhotometryError(f"{uri}: no column {col!r} (configured in the bank config's photometry section)")
        try:
            out[col] = np.asarray(get(col), dtype=float)
        except (TypeError, ValueError) as exc:
            raise PhotometryError(f"{uri}: column {col!r} is not numeric ({exc})") from exc
    if len(out[names[0]]) == 0:
        raise PhotometryError(f"{uri}: the photometry catalogue has no rows")
    return out


def match_catalog(uri: str, cfg: Photometry, cat: CosmosCatalog) -> ExternalMatch:
    """Read ``uri`` and cross-match it by sky position with every COSMOS catalogue row."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    for filt, col in cfg.mag_columns:
        try:
            sed.filter_curve(filt)
        except ValueError as exc:
            raise PhotometryError(f"photometry.mag_columns: {filt!r} (column {col}) is not a speclite filter "
                                  f"({exc})") from exc
    if not {"RA", "DEC"} <= set(cat.main.dtype.names):
        raise CatalogError(f"{cat.path}: no RA/DEC columns to cross-match --photometry {uri} with")
    filters = tuple(f for f, _ in cfg.mag_columns)
    cols = _read_columns(uri, [cfg.ra_column, cfg.dec_column, cfg.zphot_column] + [c for _, c in cfg.mag_columns])
    mags = np.stack([cols[c] for _, c in cfg.mag_columns], axis=1)
    mags[~((mags > MAG_RANGE[0]) & (mags < MAG_RANGE[1]))] = np.nan
    ra, dec = cols[cfg.ra_column], cols[cfg.dec_column]
    good = np.isfinite(ra) & np.isfinite(dec)
    if not good.any():
        raise PhotometryError(f"{uri}: no row with finite {cfg.ra_column}/{cfg.dec_column}")
    target = SkyCoord(ra[good] * u.deg, dec[good] * u.deg)
    cosmos = SkyCoord(np.asarray(cat.main["RA"], float) * u.deg, np.asarray(cat.main["DEC"], float) * u.deg)
    nearest, sep, _ = cosmos.match_to_catalog_sky(target)
    sep = sep.to_value(u.arcsec)
    hit = sep <= cfg.match_radius_arcsec
    row = np.flatnonzero(good)[nearest]
    n = len(cat)
    out_mags = np.where(hit[:, None], mags[row], np.nan)
    zphot = np.where(hit, cols[cfg.zphot_column][row], np.nan)
    usable = hit & np.isfinite(zphot) & (zphot > 0) & np.isfinite(out_mags).any(axis=1)
    return ExternalMatch(name=os.path.basename(uri.rstrip("/")), filters=filters, mags=out_mags.reshape(n, -1),
                         zphot=zphot, sep_arcsec=np.where(hit, sep, np.nan), usable=usable)


def effective_zphot(cat: CosmosCatalog, ext: ExternalMatch | None) -> np.ndarray:
    """Per catalogue row: the external photo-z where the external route applies, else the catalogue's."""
    z = cat.zphot()
    return z if ext is None else np.where(ext.usable, ext.zphot, z)


def _photometry_route(mags, filters, z, cosmology) -> tuple[np.ndarray, np.ndarray]:
    coeff = sed.fit_sed(mags, filters, z, cosmology)
    return sed.anchored_decam(mags, filters, coeff, z, cosmology)


def sed_columns(meta: dict[str, np.ndarray], cat: CosmosCatalog, ext: ExternalMatch | None,
                cosmology: str) -> dict[str, np.ndarray]:
    """The bank's photometry columns for the galaxies in ``meta`` (``catalog_index``, ``zphot``,
    ``sersic_n``, ``mag_f814w``): ``zphot``, ``zphot_source``, ``phot_sep_arcsec``, ``colour_source``,
    ``sed_coeff`` (N, 4), ``mag_g``/``mag_r``/``mag_z`` (DECam AB at zphot), ``g_r``, ``r_z``."""
    idx = np.asarray(meta["catalog_index"], dtype=np.int64)
    n = len(idx)
    z = np.asarray(meta["zphot"], dtype=float).copy()
    source = np.full(n, "cww_template", dtype=object)
    zsource = np.full(n, "catalogue", dtype=object)
    sep = np.full(n, np.nan) if ext is None else ext.sep_arcsec[idx]
    coeff, dec = np.zeros((n, len(colours.TEMPLATES))), np.full((n, 3), np.nan)
    todo = np.ones(n, dtype=bool)
    if ext is not None and n:
        sel = ext.usable[idx]
        z[sel] = ext.zphot[idx[sel]]
        if sel.any():
            dec[sel], coeff[sel] = _photometry_route(ext.mags[idx[sel]], ext.filters, z[sel], cosmology)
        source[sel], zsource[sel], todo = "external_photometry", ext.name, ~sel
    if cat.has_hsc_photometry and n:
        hsc = cat.hsc_mags()[idx]
        sel = todo & np.all(np.isfinite(hsc), axis=1)
        if sel.any():
            dec[sel], coeff[sel] = _photometry_route(hsc[sel], colours.HSC_FILTERS, z[sel], cosmology)
        source[sel], todo = "hsc_photometry", todo & ~sel
    if todo.any():
        names = [colours.template_for_sersic_n(v) for v in np.asarray(meta["sersic_n"], float)[todo]]
        f814 = np.asarray(meta["mag_f814w"], float)[todo, None]
        coeff[todo] = sed.fit_sed(f814, (sed.ACS_F814W,), z[todo], cosmology, template=names)
        dec[todo] = sed.magnitudes_at(coeff[todo], z[todo], cosmology)
    return {"zphot": z, "zphot_source": zsource.astype(str), "phot_sep_arcsec": sep,
            "colour_source": source.astype(str), "sed_coeff": coeff, "mag_g": dec[:, 0], "mag_r": dec[:, 1],
            "mag_z": dec[:, 2], "g_r": dec[:, 0] - dec[:, 1], "r_z": dec[:, 1] - dec[:, 2]}


def counts(columns: dict[str, np.ndarray], ext: ExternalMatch | None) -> dict[str, object]:
    """Cross-match counts over the bank galaxies (the bank's ``photometry_counts`` attribute)."""
    n = len(columns["zphot"])
    matched = np.isfinite(columns["phot_sep_arcsec"])
    used = columns["colour_source"] == "external_photometry"
    return {"file": None if ext is None else ext.name, "galaxies": n, "matched": int(matched.sum()),
            "used": int(used.sum()), "unmatched": int(n - matched.sum()),
            "matched_unusable": int((matched & ~used).sum()),
            "median_sep_arcsec": float(np.median(columns["phot_sep_arcsec"][matched])) if matched.any() else None}
