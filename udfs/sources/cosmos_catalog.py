"""Open and validate a GalSim COSMOS catalogue directory.

A directory holds ``real_galaxy_catalog_<name>.fits`` (IDENT, MAG, GAL_/PSF_FILENAME, GAL_/PSF_HDU,
PIXEL_SCALE, NOISE_*), optionally the ``_fits`` companion (parametric fits, photo-z, photometry) and
the ``_selection`` companion (GalSim's stamp-quality columns). Two families are supported:

- the GalSim training samples (``galsim_download_cosmos``: 25.2 and 23.5, ``real_galaxy_images_*_nN.fits``,
  ``_fits`` with ``zphot``/``sersicfit``/``hlr``, ``_selection``);
- BlendingToolKit's ``26_extension`` sample (``_fits`` with ``ZPHOT``, ``flux_radius`` and HSC
  ``HSC_g/r/i/z/y`` AB magnitudes, no ``_selection``).

Every image, PSF and noise file named by the catalogue must exist: a missing one raises
:class:`CatalogError` naming it, before any rendering starts. Paths are local; ``s3://``
directories are staged to local disk first, once per process (:func:`staged_directory`), because
GalSim reads local files.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from astropy.io import fits

from udfs.io import storage
from udfs.io.errors import InputError

REQUIRED_COLUMNS = ("IDENT", "MAG", "GAL_FILENAME", "PSF_FILENAME", "GAL_HDU", "PSF_HDU", "PIXEL_SCALE")
HSC_BANDS = ("g", "r", "i", "z", "y")
_CATALOG_RE = re.compile(r"^real_galaxy_catalog_(?P<name>.+?)(?P<suffix>_fits|_selection)?\.fits$")


class CatalogError(InputError):
    """A COSMOS catalogue directory that cannot be used; the message names the file and problem."""


@dataclass(frozen=True)
class CosmosCatalog:
    """A validated catalogue: the main table and its companions as NumPy record arrays (row-aligned)."""

    directory: str              # local directory holding every file
    file_name: str              # real_galaxy_catalog_<name>.fits (base name)
    name: str                   # <name>, e.g. "25.2", "23.5_example", "26_extension_example"
    main: np.ndarray            # main table
    params: np.ndarray | None   # _fits companion
    selection: np.ndarray | None  # _selection companion

    def __len__(self) -> int:
        return len(self.main)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.file_name)

    @property
    def has_hsc_photometry(self) -> bool:
        return self.params is not None and all(f"HSC_{b}" in self.params.dtype.names for b in HSC_BANDS)

    @property
    def has_sersic_fits(self) -> bool:
        return self.params is not None and {"sersicfit", "hlr", "viable_sersic"} <= set(self.params.dtype.names)

    def zphot(self) -> np.ndarray:
        """Photometric redshift per row (NaN where the catalogue has none)."""
        if self.params is not None:
            for col in ("zphot", "ZPHOT"):
                if col in self.params.dtype.names:
                    return np.asarray(self.params[col], dtype=float)
        return np.full(len(self), np.nan)

    def hsc_mags(self) -> np.ndarray:
        """(N, 5) HSC g, r, i, z, y AB magnitudes (requires :attr:`has_hsc_photometry`)."""
        return np.stack([np.asarray(self.params[f"HSC_{b}"], dtype=float) for b in HSC_BANDS], axis=1)


def find_catalog_file(directory: str) -> str:
    """Base name of the single ``real_galaxy_catalog_*.fits`` main table in ``directory``."""
    if not os.path.isdir(directory):
        raise CatalogError(f"{directory}: COSMOS catalogue directory does not exist")
    mains = sorted(f for f in os.listdir(directory)
                   if (m := _CATALOG_RE.match(f)) and m.group("suffix") is None)
    if not mains:
        raise CatalogError(f"{directory}: no real_galaxy_catalog_*.fits main catalogue found")
    if len(mains) > 1:
        raise CatalogError(f"{directory}: several main catalogues ({', '.join(mains)}); keep one per directory")
    return mains[0]


def _read_table(path: str, what: str) -> np.ndarray:
    try:
        with fits.open(path, memmap=False) as hdul:
            return np.array(hdul[1].data, copy=True)
    except (OSError, IndexError, TypeError) as exc:
        raise CatalogError(f"{path}: cannot read the {what} table ({exc})") from exc


def _str(value) -> str:
    return value.decode().strip() if isinstance(value, bytes) else str(value).strip()


def open_catalog(directory: str) -> CosmosCatalog:
    """Read and validate the catalogue in a local ``directory`` (see module docstring)."""
    directory = os.path.abspath(directory)
    file_name = find_catalog_file(directory)
    name = _CATALOG_RE.match(file_name).group("name")
    path = os.path.join(directory, file_name)
    main = _read_table(path, "main catalogue")
    missing = [c for c in REQUIRED_COLUMNS if c not in main.dtype.names]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {', '.join(missing)}")
    if len(main) == 0:
        raise CatalogError(f"{path}: the catalogue has no rows")

    companions = {}
    for suffix in ("fits", "selection"):
        cpath = os.path.join(directory, f"real_galaxy_catalog_{name}_{suffix}.fits")
        if os.path.exists(cpath):
            table = _read_table(cpath, f"_{suffix} companion")
            if len(table) != len(main):
                raise CatalogError(f"{cpath}: {len(table)} rows, the main catalogue has {len(main)}")
            if "IDENT" in table.dtype.names and not np.array_equal(table["IDENT"], main["IDENT"]):
                bad = int(np.flatnonzero(table["IDENT"] != main["IDENT"])[0])
                raise CatalogError(f"{cpath}: row {bad} has IDENT {table['IDENT'][bad]}, the main "
                                   f"catalogue has {main['IDENT'][bad]} (companions must be row-aligned)")
            companions[suffix] = table

    referenced = {}
    for col in ("GAL_FILENAME", "PSF_FILENAME", "NOISE_FILENAME"):
        if col in main.dtype.names:
            for row, value in enumerate(main[col]):
                referenced.setdefault((col, _str(value)), row)
    for (col, fname), row in sorted(referenced.items(), key=lambda kv: kv[1]):
        if not fname:
            raise CatalogError(f"{path}: row {row} has an empty {col}")
        if not os.path.isfile(os.path.join(directory, fname)):
            raise CatalogError(f"{os.path.join(directory, fname)}: file missing ({col} of row {row}, "
                               f"IDENT {main['IDENT'][row]}, in {file_name})")
    return CosmosCatalog(directory=directory, file_name=file_name, name=name, main=main,
                         params=companions.get("fits"), selection=companions.get("selection"))


def _listing(uri: str) -> tuple[tuple[str, int, int], ...]:
    """``(name, size, mtime_ns)`` of every ``*.fits`` file directly under the ``s3://`` prefix."""
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return tuple(sorted((i.base_name, i.size, i.mtime_ns or 0) for i in info
                        if i.type == pafs.FileType.File and i.base_name.endswith(".fits")))


# (uri, listing) -> local copy, for the life of this process (a Spark Python worker runs many tasks)
_STAGED: dict[tuple, str] = {}


def staged_directory(uri: str) -> str:
    """A local directory holding the catalogue at ``uri`` (GalSim reads local files only).

    A local ``uri`` is returned as is. An ``s3://`` prefix is copied (its ``*.fits`` files) into a
    temporary folder once per process and reused by every later call while the remote listing
    (names, sizes, modification times) is unchanged; a changed listing is copied afresh.
    """
    if not storage.is_s3(uri):
        return uri
    listing = _listing(uri)
    if not listing:
        raise CatalogError(f"{uri}: no FITS files found")
    key = (uri, listing)
    if key not in _STAGED:
        for old in [k for k in _STAGED if k[0] == uri]:
            shutil.rmtree(_STAGED.pop(old), ignore_errors=True)
        workdir = tempfile.mkdtemp(prefix="cosmos-")
        atexit.register(shutil.rmtree, workdir, True)
        for name, _, _ in listing:
            target = os.path.join(workdir, name)
            with open(target + ".part", "wb") as out:
                out.write(storage.read_bytes(storage.join(uri, name)))
            os.replace(target + ".part", target)
        _STAGED[key] = workdir
    return _STAGED[key]
