"""Per-stamp quality metrics of an injected arc, defined once here.

All images are ``(B, n_bands, N, N)`` in nanomaggies; ``invvar`` in nanomaggies^-2.

- ``arc_flux_<band>``: sum over the stamp of the noiseless, PSF-convolved arc.
- ``magnification``: lensed flux on the stamp before the PSF divided by the unlensed source flux
  (same for every band: one morphology, lensed once).
- ``arc_snr_<band>``: matched-filter SNR of the noiseless arc ``a`` on its own pixels,
  ``sqrt(sum_i a_i^2 w_i)`` over pixels with ``a_i > ARC_PIXEL_FRAC * max(a)`` and a finite
  ``w_i = invvar_i >= 0`` (masked pixels, invvar 0, add nothing). It is the SNR of an optimal
  detection of the known arc, independent of the stamp size once the arc is on the stamp.
  ``arc_snr`` combines bands in quadrature.
- ``core_flux_frac``: fraction of the arc's flux (all bands summed, after the PSF) within
  ``core_radius`` arcsec of the lens centre: the light a core-only classifier sees.
- ``n_images``: number of images of the source centre (lens-equation solutions on the stamp).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

ARC_PIXEL_FRAC = 1e-3
CORE_RADIUS_ARCSEC = 1.0  # ~ the DR10 PSF FWHM: the central ~4 pixels of radius


@njit(cache=True)
def _arc_snr(arcs, invvar, out):
    for s in range(arcs.shape[0]):
        for b in range(arcs.shape[1]):
            peak = -np.inf
            for j in range(arcs.shape[2]):
                for i in range(arcs.shape[3]):
                    peak = max(peak, arcs[s, b, j, i])
            floor = ARC_PIXEL_FRAC * peak
            acc = 0.0
            for j in range(arcs.shape[2]):
                for i in range(arcs.shape[3]):
                    a = arcs[s, b, j, i]
                    w = invvar[s, b, j, i]
                    if a > floor and w > 0.0 and w < np.inf:
                        acc += a * a * w
            out[s, b] = math.sqrt(acc)


def arc_snr(arcs: np.ndarray, invvar: np.ndarray) -> np.ndarray:
    """``(B, n_bands)`` matched-filter SNR of each band's noiseless arc (see module doc)."""
    arcs = np.ascontiguousarray(arcs, dtype=np.float64)
    invvar = np.ascontiguousarray(np.broadcast_to(invvar, arcs.shape), dtype=np.float64)
    out = np.empty(arcs.shape[:2])
    _arc_snr(arcs, invvar, out)
    return out


def core_flux_fraction(arcs: np.ndarray, center_x, center_y, pixel_scale: float,
                       core_radius: float = CORE_RADIUS_ARCSEC) -> np.ndarray:
    """``(B,)`` fraction of the band-summed arc flux within ``core_radius`` of the lens centre."""
    total = arcs.sum(axis=1)
    n = total.shape[-1]
    coord = (np.arange(n) - (n - 1) / 2.0) * pixel_scale
    dx = coord[None, None, :] - np.asarray(center_x, dtype=np.float64)[:, None, None]
    dy = coord[None, :, None] - np.asarray(center_y, dtype=np.float64)[:, None, None]
    inside = dx ** 2 + dy ** 2 <= core_radius ** 2
    flux = total.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(flux > 0, (total * inside).sum(axis=(-2, -1)) / flux, np.nan)


def arc_metrics(arcs: np.ndarray, invvar: np.ndarray, magnification: np.ndarray,
                n_images: np.ndarray, center_x, center_y, bands: str, pixel_scale: float,
                core_radius: float = CORE_RADIUS_ARCSEC) -> dict[str, np.ndarray]:
    """All metrics as a dict of ``(B,)`` arrays (column names as in the module doc)."""
    out: dict[str, np.ndarray] = {}
    flux = arcs.sum(axis=(-2, -1))
    snr = arc_snr(arcs, invvar)
    for b, band in enumerate(bands):
        out[f"arc_flux_{band}"] = flux[:, b]
        out[f"arc_snr_{band}"] = snr[:, b]
    out["arc_snr"] = np.sqrt((snr ** 2).sum(axis=1))
    out["magnification"] = np.asarray(magnification, dtype=np.float64)
    out["core_flux_frac"] = core_flux_fraction(arcs, center_x, center_y, pixel_scale, core_radius)
    out["n_images"] = np.asarray(n_images, dtype=np.int64)
    return out
