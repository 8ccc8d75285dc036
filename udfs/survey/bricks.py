"""The Legacy Survey brick grid and the coadd TAN WCS of a brick.

Bricks are 0.25 deg tall rows centred on dec = -90 + 0.25 i; row i has an even number of bricks
``n = 2 ceil(360 / 0.25 * cos(|dec_i| - 0.125 deg) / 2)`` of equal RA width ``360 / n``, brick j
centred on ``ra = (j + 0.5) 360 / n``. Names are ``RRRR[pm]DDD`` with ``RRRR = int(10 ra)`` and
``DDD = int(10 |dec|)`` (truncated). Coadds are 3600 x 3600 pixels of 0.262"/pixel on a TAN
projection centred on the brick centre (CRPIX 1800.5, RA increasing to the left).
This is re-derived from the Legacy Survey data model; ``tests/test_cutouts_sky.py`` checks it
against the real survey-bricks row and coadd header of brick 0959p805.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from udfs.io.errors import InputError

BRICK_SIZE_DEG = 0.25
PIXSCALE_ARCSEC = 0.262
BRICK_NPIX = 3600


class BrickError(InputError):
    """A brick name that names no brick, or targets that do not fall on their brick."""


@dataclass(frozen=True)
class Brick:
    name: str
    ra: float       # centre, deg
    dec: float
    ra1: float      # primary (unique) area bounds, deg
    ra2: float
    dec1: float
    dec2: float


def _ncols(row: int) -> int:
    dec = -90.0 + BRICK_SIZE_DEG * row
    declo = max(abs(dec) - BRICK_SIZE_DEG / 2, 0.0)
    n = 360.0 / BRICK_SIZE_DEG * math.cos(math.radians(declo))
    return max(int(math.ceil(n / 2.0) * 2), 1)


def brick_name(ra: float, dec: float) -> str:
    return "%04d%s%03d" % (int(ra * 10), "p" if dec >= 0 else "m", int(abs(dec) * 10))


def _brick(row: int, col: int) -> Brick:
    n = _ncols(row)
    width = 360.0 / n
    dec = -90.0 + BRICK_SIZE_DEG * row
    ra = (col + 0.5) * width
    return Brick(brick_name(ra, dec), ra, dec, col * width, (col + 1) * width,
                 max(dec - BRICK_SIZE_DEG / 2, -90.0), min(dec + BRICK_SIZE_DEG / 2, 90.0))


def brick_at(ra: float, dec: float) -> Brick:
    """The brick whose primary area contains (ra, dec) in degrees."""
    row = int(math.floor((dec + 90.0) / BRICK_SIZE_DEG + 0.5))
    row = min(max(row, 0), int(180 / BRICK_SIZE_DEG))
    n = _ncols(row)
    col = int(math.floor((ra % 360.0) / (360.0 / n))) % n
    return _brick(row, col)


def brick_from_name(name: str) -> Brick:
    """Geometry of a brick from its name; :class:`BrickError` naming it when no brick has that name."""
    name = str(name).strip()
    if len(name) != 8 or name[4] not in "pm" or not (name[:4].isdigit() and name[5:].isdigit()):
        raise BrickError(f"brick name {name!r}: expected RRRR[pm]DDD, e.g. 0959p805")
    ra_t = int(name[:4]) / 10.0
    dec_t = (1 if name[4] == "p" else -1) * int(name[5:]) / 10.0
    row = int(round((dec_t + 90.0) / BRICK_SIZE_DEG))
    for r in (row, row - 1, row + 1):
        if not 0 <= r <= 180 / BRICK_SIZE_DEG:
            continue
        n = _ncols(r)
        width = 360.0 / n
        for col in range(int(ra_t / width) - 1, int(ra_t / width) + 2):
            if 0 <= col < n and _brick(r, col).name == name:
                return _brick(r, col)
    raise BrickError(f"brick name {name!r}: no Legacy Survey brick has this name")


def coadd_wcs_header(brick: Brick, x0: int = 0, y0: int = 0,
                     nx: int = BRICK_NPIX, ny: int = BRICK_NPIX) -> dict:
    """TAN WCS keywords of the brick's coadd, for the section starting at 0-based pixel (x0, y0).

    The full brick is (x0, y0, nx, ny) = (0, 0, 3600, 3600); a section keeps the full brick's sky
    mapping by shifting CRPIX, so section pixel (i, j) is brick pixel (x0 + i, y0 + j).
    """
    scale = PIXSCALE_ARCSEC / 3600.0
    centre = BRICK_NPIX / 2 + 0.5
    return {
        "NAXIS1": nx, "NAXIS2": ny,
        "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
        "CRVAL1": brick.ra, "CRVAL2": brick.dec,
        "CRPIX1": centre - x0, "CRPIX2": centre - y0,
        "CD1_1": -scale, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": scale,
        "EQUINOX": 2000.0,
    }
