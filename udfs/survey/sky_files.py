"""Write a rendered brick in the survey's coadd file layout (the demo's stand-in sky, :mod:`udfs.survey.sample_sky`).

Per brick ``coadd/<bri>/<brick>/legacysurvey-<brick>-{image,invvar}-<band>.fits.fz`` and
``-maskbits.fits.fz``: an empty primary HDU and a RICE_1 tile-compressed image HDU (100x100 tiles,
SUBTRACTIVE_DITHER_2 with a fixed dither seed) carrying the brick's TAN WCS, MAGZERO = 22.5, BUNIT,
FILTER and BRICKBND as the survey's coadds, plus what was rendered (PSFSRC, PSFFWHM, PSFVARY, SKYSIG,
GAIN, NOISECOR, NOISESRC; SAMPSKY = T marks the file as a stand-in). PSFVARY = T: the band's PSFEx
model was evaluated at each source's position on its pseudo-CCD, described by the brick's
``legacysurvey-<brick>-ccds.fits`` (:mod:`udfs.survey.sky_ccds`); PSFFWHM is then the brick centre's.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
from unittest import mock

import numpy as np
from astropy.io import fits
from astropy.io.fits.hdu.compressed import _codecs

from udfs.io import storage
from udfs.survey.bricks import Brick
from udfs.survey.coadd_files import brick_file

TILE = 100


def seed_for(seed: int, *parts: str) -> int:
    """A 64-bit seed derived from ``seed`` and names (brick, band): the same names, the same draws."""
    return int.from_bytes(hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()[:8], "little")


def _header(brick: Brick, rendered: dict, kind: str, band: str | None) -> fits.Header:
    h = fits.Header()
    x0, y0, _, _ = rendered["section"]
    h["BRICKNAM"] = (brick.name, "LegacySurvey brick RRRr[pm]DDd")
    h["RAMIN"], h["RAMAX"] = (brick.ra1, "Brick RA min"), (brick.ra2, "Brick RA max")
    h["DECMIN"], h["DECMAX"] = (brick.dec1, "Brick Dec min"), (brick.dec2, "Brick Dec max")
    h["BRICKRA"], h["BRICKDEC"] = (brick.ra, "Brick center"), (brick.dec, "Brick center")
    h["BRICKBND"] = (rendered["bands"], "Bands touching this brick")
    if band:
        h["FILTER"] = band
    for k, v in rendered["wcs_header"].items():
        if not k.startswith("NAXIS"):
            h[k] = v
    h["IMTYPE"] = kind
    if kind == "image":
        h["MAGZERO"] = (22.5, "Magnitude zeropoint")
        h["BUNIT"] = ("nanomaggy", "AB mag = 22.5 - 2.5*log10(nanomaggy)")
    elif kind == "invvar":
        h["BUNIT"] = "1/nanomaggy^2"
    h["SAMPSKY"] = (True, "rendered stand-in, NOT real survey data")
    h["SECX0"], h["SECY0"] = (x0, "section origin x in the brick pixel grid"), (y0, "section origin y")
    if band:
        varies = band in rendered.get("ccds", {})  # PSFEx: evaluated at each source's position
        where = " at brick centre" if varies else ""
        h["PSFFWHM"] = (rendered["psf_fwhm"][band], f"[arcsec] sources PSF FWHM{where}")
        h["PSFSRC"] = rendered["psf_source"][band]  # PSFEx model file or "gaussian" (too long for a comment)
        h["PSFVARY"] = (varies, "PSF varies with position: see -ccds.fits" if varies else "one PSF for all sources")
        h["SKYSIG"] = (rendered["sigma"][band], "[nanomaggy] per-pixel sky noise sigma")
        h["GAIN"] = (rendered["gain"][band], "[e-/nmgy] gain of source shot noise")
        texture = rendered["texture"]
        h["NOISECOR"] = (texture["neighbour"] if texture else 0.0, "noise neighbour-pixel correlation")
        h["NOISESRC"] = texture["source"] if texture else "white"  # coadd the texture was measured on
    h["NSOURCES"] = (rendered["n_sources"], "catalogue rows rendered")
    return h


def fits_fz_bytes(data: np.ndarray, header: fits.Header, dither_seed: int) -> bytes:
    """An empty primary HDU plus a RICE_1, 100x100-tile compressed image HDU, as bytes.

    Tiles that cannot be quantised (constant ones, e.g. a constant invvar) fall back to GZIP_1, and
    astropy's gzip stamps each with the current time: the stamp is fixed at 0 so that the same
    pixels always give the same bytes.
    """
    hdu = fits.CompImageHDU(data, header=header, compression_type="RICE_1", tile_shape=(TILE, TILE),
                            quantize_method=2, dither_seed=dither_seed)
    buf = io.BytesIO()
    with mock.patch.object(_codecs, "gzip_compress", functools.partial(gzip.compress, mtime=0)):
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()


def write_brick(base: str, brick: Brick, rendered: dict) -> list[str]:
    """Write the rendered brick under ``base`` in the coadd layout; return the URIs written."""
    written = []
    dither = 1 + seed_for(0, brick.name) % 10000
    for band in rendered["bands"]:
        for kind, arr in (("image", rendered["images"][band]), ("invvar", rendered["invvars"][band])):
            uri = brick_file(base, brick.name, kind, band)
            storage.write_bytes(uri, fits_fz_bytes(arr, _header(brick, rendered, kind, band), dither))
            written.append(uri)
    uri = brick_file(base, brick.name, "maskbits")
    storage.write_bytes(uri, fits_fz_bytes(rendered["maskbits"], _header(brick, rendered, "maskbits", None), dither))
    written.append(uri)
    return written
