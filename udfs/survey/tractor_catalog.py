"""Read Legacy Survey sweep and Tractor catalogue FITS files (DR8, DR9, DR10 data models).

Files are read through :func:`udfs.io.storage.open_input`, so local paths and ``s3://`` URIs behave
the same. Column names are matched case-insensitively; only the columns the LRG stage needs are
kept, as native-endian NumPy arrays keyed by upper-case name.

Data release and photometric system come from the ``RELEASE`` column (legacysurvey.org/release):
8000 DR8 DECam, 8001 DR8 BASS/MzLS, 9010 and 9012 DR9 DECam, 9011 DR9 BASS/MzLS, 10000-10999 DR10
(DECam only). DECam rows use the "south" (S) LRG constants, BASS/MzLS rows the "north" (N) ones.
Sweeps also carry ``PHOTSYS``; when present it must agree with ``RELEASE``.
"""
from __future__ import annotations

import gzip
import io
import os
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from astropy.io import fits

from udfs.io import storage
from udfs.io.errors import InputError
from udfs.survey.bands import SURVEY_BANDS

BANDS = tuple(SURVEY_BANDS)

# Columns every supported data model has and the LRG stage needs.
REQUIRED = (
    "RELEASE", "BRICKID", "BRICKNAME", "OBJID", "TYPE", "RA", "DEC", "EBV",
    "FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1",
    "FLUX_IVAR_G", "FLUX_IVAR_R", "FLUX_IVAR_Z", "FLUX_IVAR_W1",
    "MW_TRANSMISSION_G", "MW_TRANSMISSION_R", "MW_TRANSMISSION_Z", "MW_TRANSMISSION_W1",
    "NOBS_G", "NOBS_R", "NOBS_Z", "MASKBITS", "FIBERFLUX_Z", "FIBERTOTFLUX_Z",
    "GAIA_PHOT_G_MEAN_MAG", "PSFDEPTH_G", "PSFDEPTH_R", "PSFDEPTH_Z",
)
# Read when present: BRICK_PRIMARY (Tractor files only; sweeps hold primary objects only),
# PHOTSYS (sweeps), PSFSIZE_* (DR9+), GALDEPTH_* (used by the PSF-size fallback).
OPTIONAL = ("BRICK_PRIMARY", "PHOTSYS", "PSFSIZE_G", "PSFSIZE_R", "PSFSIZE_Z",
            "GALDEPTH_G", "GALDEPTH_R", "GALDEPTH_Z")
# Galaxy shapes: DR9+ SHAPE_*; DR8 the DEV and EXP columns (and FRACDEV for COMP).
SHAPE_COLUMNS = ("SHAPE_R", "SHAPE_E1", "SHAPE_E2", "SHAPEDEV_R", "SHAPEDEV_E1", "SHAPEDEV_E2",
                 "SHAPEEXP_R", "SHAPEEXP_E1", "SHAPEEXP_E2", "FRACDEV")

_RELEASES = {8000: ("DR8", "S"), 8001: ("DR8", "N"), 9010: ("DR9", "S"), 9011: ("DR9", "N"),
             9012: ("DR9", "S")}
FITS_SUFFIXES = (".fits", ".fits.gz", ".fit")
CATALOG_PREFIXES = ("sweep-", "tractor-")  # how the Legacy Surveys name catalogue files


class CatalogError(InputError):
    """A catalogue file is unreadable, lacks a column or holds an unknown data release."""


@dataclass(frozen=True)
class Catalog:
    uri: str
    columns: dict[str, np.ndarray]   # upper-case name -> array (strings stripped, bool for flags)
    data_release: np.ndarray         # per row: "DR8" | "DR9" | "DR10"
    photsys: np.ndarray              # per row: "S" (DECam) | "N" (BASS/MzLS)

    def __len__(self) -> int:
        return len(self.columns["RELEASE"])


def release_info(release: np.ndarray, uri: str) -> tuple[np.ndarray, np.ndarray]:
    """Map RELEASE codes to (data release, photometric system) per row; unknown codes raise."""
    release = np.asarray(release, dtype=np.int64)
    dr = np.empty(len(release), dtype=object)
    ps = np.empty(len(release), dtype=object)
    for code in np.unique(release):
        if code in _RELEASES:
            info = _RELEASES[int(code)]
        elif 10000 <= code < 11000:
            info = ("DR10", "S")
        else:
            known = ", ".join(str(k) for k in sorted(_RELEASES)) + ", 10000-10999"
            raise CatalogError(f"{uri}: column RELEASE: unknown data release code {int(code)} "
                               f"(supported: {known})")
        sel = release == code
        dr[sel], ps[sel] = info
    return dr.astype(str), ps.astype(str)


def _native(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind in "US":
        return np.char.strip(array.astype(str))
    if array.dtype.byteorder not in ("=", "|"):
        return array.astype(array.dtype.newbyteorder("="))
    return np.asarray(array)


def _open_fits(uri: str) -> fits.HDUList:
    if uri.lower().endswith(".gz"):  # astropy cannot gunzip a pyarrow stream: decompress in memory
        return fits.open(io.BytesIO(gzip.decompress(storage.read_bytes(uri))), memmap=False)
    return fits.open(storage.open_input(uri), memmap=False)


def read_catalog(uri: str) -> Catalog:
    """Read the first binary-table HDU of a sweep/Tractor file; check columns and releases."""
    try:
        with _open_fits(uri) as hdul:
            table = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
            if table is None:
                raise CatalogError(f"{uri}: no binary table HDU (not a sweep or Tractor catalogue)")
            names = {n.upper(): n for n in table.columns.names}
            missing = [c for c in REQUIRED if c not in names]
            if missing:
                raise CatalogError(f"{uri}: missing column{'s' if len(missing) > 1 else ''} "
                                   f"{', '.join(missing)} (needed by the LRG selection)")
            data = table.data
            cols = {c: _native(np.asarray(data[names[c]])) for c in REQUIRED + OPTIONAL + SHAPE_COLUMNS
                    if c in names}
    except FileNotFoundError as exc:
        raise CatalogError(f"{uri}: cannot open ({exc})") from exc
    except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise CatalogError(f"{uri}: not a readable FITS catalogue ({type(exc).__name__}: {exc})") from exc
    if "BRICK_PRIMARY" in cols:
        cols["BRICK_PRIMARY"] = cols["BRICK_PRIMARY"].astype(bool)
    dr, ps = release_info(cols["RELEASE"], uri)
    if "PHOTSYS" in cols:
        bad = (cols["PHOTSYS"] != ps)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CatalogError(f"{uri}: row {i}: column PHOTSYS={str(cols['PHOTSYS'][i])!r} disagrees with "
                               f"RELEASE={int(cols['RELEASE'][i])} (camera implies {str(ps[i])!r})")
    return Catalog(uri=uri, columns=cols, data_release=dr, photsys=ps)


def _list_folder(uri: str) -> list[str]:
    fs, path = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    hits = sorted(i.path for i in infos if i.type == pafs.FileType.File
                  and i.base_name.lower().endswith(FITS_SUFFIXES)
                  and i.base_name.lower().startswith(CATALOG_PREFIXES))
    return ["s3://" + h for h in hits] if storage.is_s3(uri) else hits


def _is_dir(uri: str) -> bool:
    fs, path = storage.resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def expand_inputs(specs: list[str]) -> list[str]:
    """Turn ``--input`` values into a sorted, de-duplicated list of catalogue files.

    Each value is a folder (every ``sweep-*``/``tractor-*`` FITS file below it, recursively), a glob (``*?[]`` in the last
    component), a list file (``.txt``/``.lst``/``.list``: one path, URI or glob per line; relative
    entries are relative to the list file; ``#`` starts a comment) or a single file. Local or s3://.
    """
    out: list[str] = []
    for spec in specs:
        spec = str(spec)
        name = posixpath.basename(spec.rstrip("/"))
        if any(ch in name for ch in "*?["):
            hits = storage.glob(spec)
        elif name.lower().endswith((".txt", ".lst", ".list")):
            if not storage.exists(spec):
                raise CatalogError(f"{spec}: input list file not found")
            base = posixpath.dirname(spec) if storage.is_s3(spec) else os.path.dirname(os.path.abspath(spec))
            entries = []
            for line in storage.read_bytes(spec).decode().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    absolute = storage.is_s3(line) or os.path.isabs(line)
                    entries.append(line if absolute else storage.join(base, line))
            hits = expand_inputs(entries) if entries else []
        elif _is_dir(spec):
            hits = _list_folder(spec)
        elif storage.exists(spec):
            hits = [spec if storage.is_s3(spec) else os.path.abspath(spec)]
        else:
            raise CatalogError(f"{spec}: input not found (expected a folder, glob, list file or FITS file)")
        if not hits:
            raise CatalogError(f"{spec}: no catalogue files found")
        out.extend(hits)
    return sorted(set(out))
