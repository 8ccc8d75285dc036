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

import numpy as np

ARC_PIXEL_FRAC = 1e-3
CORE_RADIUS_ARCSEC = 1.0  # ~ the DR10 PSF FWHM: the central ~4 pixels of radius


def arc_snr(arcs: np.ndarray, invvar: np.ndarray) -> np.ndarray:
    """``(B, n_bands)`` matched-filter SNR of each band's noiseless arc (see module doc)."""
    peak = arcs.max(axis=(-2, -1), keepdims=True)
    w = np.where(np.isfinite(invvar) & (invvar > 0), invvar, 0.0)
    own = arcs > ARC_PIXEL_FRAC * peak
    return np.sqrt(np.where(own, arcs.astype(np.float64) ** 2 * w, 0.0).sum(axis=(-2, -1)))


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
