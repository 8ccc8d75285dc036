"""The COSMOS source bank: the HDF5 layout shared by the bank builder and the injectors.

Layout (written by ``jobs.cosmos_source_loader``):

- dataset ``images``: float32 ``(N, S, S)``, each image sums to 1 (unit flux), galaxy centred at
  pixel ``((S-1)/2, (S-1)/2)``, axis 1 = y (row), axis 2 = x (column);
- attributes ``pixel_scale_arcsec`` (float), ``code_version``, ``config`` (JSON), ``catalog_name``,
  ``rejected_counts`` and ``photometry_counts`` (JSON: the ``--photometry`` cross-match counts);
- group ``meta``: one array of length N per column (``ident``, ``catalog_index``, ``mag_f814w``,
  Sersic twin ``sersic_n``, ``sersic_hlr_arcsec``, ``sersic_q``, ``sersic_phi_rad``, morphology
  statistics, ...) and the photometry columns (:mod:`udfs.sources.bank_photometry`):

  - ``zphot`` (the redshift the galaxy sits at) and ``zphot_source`` (``catalogue`` or the
    ``--photometry`` file's base name);
  - ``mag_g``, ``mag_r``, ``mag_z``: DECam AB magnitudes of the unlensed galaxy at ``zphot``, and
    ``g_r = mag_g - mag_r``, ``r_z = mag_r - mag_z``;
  - ``colour_source``: ``external_photometry`` | ``hsc_photometry`` | ``cww_template``;
  - ``phot_sep_arcsec``: separation to the matched ``--photometry`` row (NaN: not matched, or none given);
  - ``sed_coeff``: float64 ``(N, 4)``, the absolute SED in the CWW basis (:mod:`udfs.sources.sed`;
    ``magnitudes_at(sed_coeff, zphot)`` gives ``mag_r`` exactly and g, z within the fit residual).

Executors load it once (``load_bank`` is cached per path) and pass plain arrays to the renderer;
the driver reads only :func:`read_bank_info` (attributes, sizes and meta column names, never the
images).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import h5py
import numpy as np

from udfs.io import storage
from udfs.io.errors import InputError


class BankError(InputError):
    """A source bank file is unreadable or not in the bank layout, or a row index lies outside it."""


def support_radius(images: np.ndarray) -> np.ndarray:
    """Radius (image pixels) around the image centre beyond which each bank image's interpolant
    is zero."""
    n = images.shape[-1]
    c = (n - 1) / 2.0
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(xx - c, yy - c) + math.sqrt(2.0)  # bilinear taper reaches one pixel beyond
    out = np.empty(images.shape[0])
    for i, img in enumerate(images):
        nz = img != 0
        out[i] = r[nz].max() if nz.any() else 0.0
    return out


@dataclass(frozen=True)
class SourceBank:
    images: np.ndarray            # (N, S, S) float32, unit flux
    pixel_scale: float            # arcsec / pixel
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @cached_property
    def support_pix(self) -> np.ndarray:
        """Per image, the radius (image pixels) beyond which it is zero (for the renderer)."""
        return support_radius(self.images)

    def check_index(self, index: int) -> int:
        if not 0 <= int(index) < len(self):
            raise BankError(f"source index {index} out of range: the bank holds {len(self)} galaxies")
        return int(index)


def _attrs(f: h5py.File) -> dict[str, object]:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def _open(source, name: str) -> h5py.File:
    """The bank as an open, layout-checked HDF5 file: a path or URI is read whole (one request), a
    file object is read by seeking in it."""
    try:
        f = h5py.File(io.BytesIO(storage.read_bytes(source)) if isinstance(source, str) else source, "r")
    except (OSError, FileNotFoundError) as exc:
        raise BankError(f"{name}: not a readable HDF5 source bank ({exc})") from exc
    if "images" not in f or "pixel_scale_arcsec" not in f.attrs:
        problem = "not a source bank (needs dataset 'images' and attribute 'pixel_scale_arcsec')"
    elif len(f["images"].shape) != 3 or f["images"].shape[1] != f["images"].shape[2]:
        problem = f"'images' must be (N, S, S), got {f['images'].shape}"
    elif not float(f.attrs["pixel_scale_arcsec"]) > 0:
        problem = f"pixel_scale_arcsec must be > 0, got {float(f.attrs['pixel_scale_arcsec'])}"
    else:
        return f
    f.close()
    raise BankError(f"{name}: {problem}")


def read_bank(source: str | io.BytesIO) -> SourceBank:
    """Read a bank from a local path, an ``s3://`` URI or a file object; validate its layout."""
    name = source if isinstance(source, str) else "<bank>"
    with _open(source, name) as f:
        images = f["images"][...].astype(np.float32, copy=False)
        meta = {k: v[...] for k, v in f["meta"].items()} if "meta" in f else {}
        return SourceBank(images=images, pixel_scale=float(f.attrs["pixel_scale_arcsec"]), meta=meta,
                          attrs=_attrs(f))


@dataclass(frozen=True)
class BankInfo:
    """What the driver needs to know of a bank: its size, layout and provenance, not its pixels."""
    uri: str
    size: int                     # number of galaxies N
    image_size: int               # S: images are (S, S)
    pixel_scale: float            # arcsec / pixel
    meta_columns: tuple[str, ...]
    attrs: dict[str, object]

    def check_meta(self, columns) -> None:
        """Raise :class:`BankError` naming the first of ``columns`` the bank's ``meta`` lacks."""
        for col in columns:
            if col not in self.meta_columns:
                raise BankError(f"{self.uri}: bank meta lacks column {col!r}")


def read_bank_info(uri: str) -> BankInfo:
    """The bank's size, attributes and meta column names, read by seeking in the HDF5 file (local
    or ``s3://``): the image and meta datasets are never read."""
    try:
        raw = storage.open_input(uri)
    except FileNotFoundError as exc:
        raise BankError(f"{uri}: not a readable HDF5 source bank ({exc})") from exc
    with raw, _open(raw, uri) as f:
        n, s, _ = f["images"].shape
        columns = tuple(f["meta"].keys()) if "meta" in f else ()
        return BankInfo(uri=uri, size=int(n), image_size=int(s), pixel_scale=float(f.attrs["pixel_scale_arcsec"]),
                        meta_columns=columns, attrs=_attrs(f))


@lru_cache(maxsize=2)
def load_bank(uri: str) -> SourceBank:
    """Cached :func:`read_bank`: one copy per Python worker process."""
    return read_bank(uri)


def read_bank_meta(uri: str, columns) -> dict[str, np.ndarray]:
    """Only the named ``meta`` columns of a bank (local or ``s3://``, read by seeking; never the
    images); :class:`BankError` names a missing column."""
    try:
        raw = storage.open_input(uri)
    except FileNotFoundError as exc:
        raise BankError(f"{uri}: not a readable HDF5 source bank ({exc})") from exc
    with raw, _open(raw, uri) as f:
        meta = f["meta"] if "meta" in f else {}
        missing = [c for c in columns if c not in meta]
        if missing:
            raise BankError(f"{uri}: bank meta lacks column {missing[0]!r}")
        return {c: meta[c][...] for c in columns}
