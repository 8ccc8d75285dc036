"""The stand-in sky's pseudo-CCDs: the "CCD" each band was drawn with, as a survey CCD table and
PSFEx model that :func:`udfs.survey.psf_stack.psf_at_target` reads like the survey's own.

One pseudo-CCD per band drawn with a PSFEx model (``--psfex-<band>``); a band drawn with a Gaussian
gets none. Its pixel grid *is* the brick's coadd grid: a TAN WCS with the brick's CRVAL and CD
matrix and CRPIX 1800.5 (1-based CCD pixel = 1-based brick pixel), 3600 x 3600 pixels, so that it
covers the whole brick (bigger than a real 2046 x 4094 DECam CCD) and the CCD -> coadd Jacobian is
the identity. Its PSFEx model is the given model with its polynomial origin moved: POLZERO1/2 set to
the brick centre (1800.5, 1800.5), everything else (basis, POLSCAL, degree, CCDNAME) kept, so the
brick centre gets the model at its fit centre and a pixel ``d`` away gets the model ``d`` away from
it. The model cannot be used as is: its POLZERO lies in the frame it was fitted in (for the sample
models, legacypipe test cutouts: POLZERO1 between -691 and 44), and a pseudo-CCD whose 1-based pixels
(>= 0.5, the covering rule) span the brick cannot put the brick centre there.

Files, per brick (paths relative to the sky ``base``):

- ``coadd/<bri>/<brick>/legacysurvey-<brick>-ccds.fits``: one row per pseudo-CCD with ``filter``,
  ``image_filename`` (``sample-sky/<brick>-<band>``: no such image exists, so use the table TAN,
  ``image_root=None``), ``image_hdu``, ``ccdname`` (the model's), ``width``, ``height``, ``crpix``,
  ``crval``, ``cd``, ``sig1`` (the band's sky sigma, nanomaggies), ``psfex_file`` (relative to the
  calib root ``<base>/calib``) and ``psfex_origin`` (the model file as given). No ``exptime`` or
  ``ccdzpt``: the stand-in has no exposure. Zero rows when no band has a PSFEx model.
- ``calib/psfex/sample-sky/<brick>-<band>-psfex.fits``: the moved model (one row), also where
  :func:`udfs.survey.psf_stack.psfex_uri` looks for ``image_filename``.

Kernels: :meth:`PseudoCCD.kernel_at` is :func:`udfs.survey.psf_stack.ccd_psf_on_coadd` with the
identity Jacobian on the stamp size :func:`~udfs.survey.psf_stack.psf_at_target` uses, so stage 4's
stack at a target is the sky's PSF there, cropped to its flux fraction. Bytes are deterministic.
"""
from __future__ import annotations

import functools
import io
import math
import posixpath

import numpy as np
from astropy.io import fits
from astropy.table import Table

from udfs.io import storage
from udfs.survey.bricks import BRICK_NPIX, PIXSCALE_ARCSEC, Brick, coadd_wcs_header
from udfs.survey.psf import PSFError, des_psfex
from udfs.survey.psf_stack import ccd_psf_on_coadd, fwhm_pixels

CCD_CENTRE = BRICK_NPIX / 2 + 0.5   # 1-based pixel of the brick centre, on the brick and its CCD
CALIB_DIR = "calib"
COLUMNS = [("filter", "U"), ("image_filename", "U"), ("image_hdu", np.int32), ("ccdname", "U"),
           ("width", np.int32), ("height", np.int32), ("crpix1", np.float64), ("crpix2", np.float64),
           ("crval1", np.float64), ("crval2", np.float64), ("cd1_1", np.float64), ("cd1_2", np.float64),
           ("cd2_1", np.float64), ("cd2_2", np.float64), ("sig1", np.float64), ("psfex_file", "U"),
           ("psfex_origin", "U")]


def _strip(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value).strip()


def ccds_file(base: str, brickname: str) -> str:
    return storage.join(base, "coadd", brickname[:3], brickname, f"legacysurvey-{brickname}-ccds.fits")


def calib_root(base: str) -> str:
    """The calib root of a stand-in sky: ``psfex_file`` in its CCD tables is relative to it."""
    return storage.join(base, CALIB_DIR)


def _hdul_bytes(hdus: list) -> bytes:
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), *hdus]).writeto(buf)
    return buf.getvalue()


@functools.lru_cache(maxsize=8)
def moved_model_bytes(uri: str) -> tuple[bytes, str]:
    """Row 0 of a Legacy Survey PSFEx file (the row :func:`udfs.survey.psf.psfex_kernel` uses) with
    POLZERO1/2 moved to the brick centre, as FITS bytes; and its ccdname ('' without the column)."""
    try:
        with fits.open(io.BytesIO(storage.read_bytes(uri))) as hdul:
            src = Table(hdul[1].data[:1])
            des_psfex(hdul[1], 0)  # a readable model, or the error below
    except (OSError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise PSFError(f"{uri}: not a readable Legacy Survey PSFEx model ({exc})") from exc
    zero = float(src["polzero1"][0]), float(src["polzero2"][0])
    src["polzero1"][0], src["polzero2"][0] = CCD_CENTRE, CCD_CENTRE
    hdu = fits.table_to_hdu(src)
    hdu.header["EXTNAME"] = "PSFEX"
    hdu.header["SAMPSKY"] = (True, "stand-in sky: model moved onto a pseudo-CCD")
    hdu.header["PSFORIG"] = posixpath.basename(str(uri))
    hdu.header["POLZ1ORG"] = (zero[0], "POLZERO1 of the original model")
    hdu.header["POLZ2ORG"] = (zero[1], "POLZERO2 of the original model")
    ccdname = _strip(src["ccdname"][0]) if "ccdname" in src.colnames else ""
    return _hdul_bytes([hdu]), ccdname


@functools.lru_cache(maxsize=8)
def _moved_model(uri: str):
    """The GalSim PSFEx model of :func:`moved_model_bytes` (read once per worker; never modified)."""
    with fits.open(io.BytesIO(moved_model_bytes(uri)[0])) as hdul:
        return des_psfex(hdul[1], 0)


class PseudoCCD:
    """One band's pseudo-CCD on ``brick`` with the PSFEx model ``uri`` moved onto it (module doc)."""

    def __init__(self, brick: Brick, band: str, uri: str):
        self.brick, self.band, self.origin = brick, band, str(uri)
        self.model_bytes, self.ccdname = moved_model_bytes(self.origin)
        self.model = _moved_model(self.origin)
        # the stamp psf_at_target draws a CCD's model on (identity Jacobian)
        self.size = 2 * int(math.ceil(63 * float(self.model.sample_scale) / 2.0)) + 1
        self.image_filename = f"sample-sky/{brick.name}-{band}"
        self.psfex_file = posixpath.join("psfex", f"{self.image_filename}-psfex.fits")

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        """The PSF at 1-based CCD (= brick) pixel ``(x, y)``: ``size`` x ``size``, centred, unit sum."""
        return ccd_psf_on_coadd(self.model, float(x), float(y), np.eye(2), self.size)

    def psf_at(self, x: float, y: float):
        """:meth:`kernel_at` as a GalSim profile in arcsec (an effective PSF: draw with 'no_pixel')."""
        import galsim

        image = galsim.ImageD(self.kernel_at(x, y), scale=PIXSCALE_ARCSEC)
        return galsim.InterpolatedImage(image, normalization="flux")

    @property
    def fwhm_arcsec(self) -> float:
        """FWHM at the brick centre (the model's fit centre)."""
        return fwhm_pixels(self.kernel_at(CCD_CENTRE, CCD_CENTRE)) * PIXSCALE_ARCSEC

    def row(self, sig1: float) -> dict:
        """This CCD's row of the brick's CCD table; ``sig1``: the band's sky sigma (nanomaggies)."""
        wcs = coadd_wcs_header(self.brick)
        return {"filter": self.band, "image_filename": self.image_filename, "image_hdu": 1,
                "ccdname": self.ccdname, "width": BRICK_NPIX, "height": BRICK_NPIX,
                "crpix1": float(wcs["CRPIX1"]), "crpix2": float(wcs["CRPIX2"]),
                "crval1": float(wcs["CRVAL1"]), "crval2": float(wcs["CRVAL2"]),
                "cd1_1": float(wcs["CD1_1"]), "cd1_2": float(wcs["CD1_2"]),
                "cd2_1": float(wcs["CD2_1"]), "cd2_2": float(wcs["CD2_2"]),
                "sig1": float(sig1), "psfex_file": self.psfex_file, "psfex_origin": self.origin}


def ccds_table_bytes(brick: Brick, rows: list[dict]) -> bytes:
    """The brick's CCD table (one row per pseudo-CCD, possibly none) as FITS bytes."""
    cols = {}
    for name, kind in COLUMNS:
        values = [r[name] for r in rows]
        if kind == "U":
            width = max([len(v) for v in values] + [1])
            cols[name] = np.array(values, dtype=f"U{width}")
        else:
            cols[name] = np.array(values, dtype=kind)
    hdu = fits.table_to_hdu(Table(cols))
    hdu.header["EXTNAME"] = "CCDS"
    hdu.header["BRICKNAM"] = brick.name
    hdu.header["SAMPSKY"] = (True, "pseudo-CCDs of a stand-in sky, NOT survey CCDs")
    hdu.header["CALIBDIR"] = (CALIB_DIR, "psfex_file is relative to <sky base>/CALIBDIR")
    return _hdul_bytes([hdu])


def write_ccds(base: str, brick: Brick, ccds: dict, sigma: dict) -> tuple[str, dict]:
    """Write the brick's CCD table and moved PSFEx models under ``base``; ``ccds``: band ->
    :class:`PseudoCCD`, ``sigma``: band -> sky sigma. Returns (table URI, band -> model URI)."""
    models = {}
    for band in sorted(ccds):
        uri = storage.join(calib_root(base), ccds[band].psfex_file)
        storage.write_bytes(uri, ccds[band].model_bytes)
        models[band] = uri
    table = ccds_file(base, brick.name)
    rows = [ccds[b].row(sigma[b]) for b in sorted(ccds)]
    storage.write_bytes(table, ccds_table_bytes(brick, rows))
    return table, models
