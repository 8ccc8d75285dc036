"""Are the injected lens systems ones that could exist? Truth-level checks of a stamps dataset.

From each injected stamp's truth and its paired control (the same cutout without the arc):

- ``arc_brighter_than_host_frac``: the fraction of injected stamps whose true total arc r flux
  (``arc_flux_r``, nanomaggies, noiseless) exceeds the host's r flux within ``radius_arcsec`` (4")
  of the stamp centre, summed on the control image (sky noise included, mean zero). Real
  galaxy-scale lenses in the Legacy Surveys have arcs a fraction of their deflector's light; the
  issue-12 goal is at most 30%.
- ``theta_e_luminosity_spearman``: Spearman rank correlation of theta_E with the host luminosity
  (``-host_abs_mag_r``, from stage 3's deflector mode), with its p-value: a deflector-consistent
  population has bigger Einstein radii on brighter hosts (> 0.3 wanted); null without deflector columns.
- quantiles of theta_E, sigma_v, the arc/host ratio, and the ``n_images`` counts (how many
  singles, doubles, quads the source positions give).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from udfs.stamps.pixels import core_mask

RADIUS_ARCSEC = 4.0


def aperture_flux(images: np.ndarray, band: int, pixel_scale: float, radius_arcsec: float = RADIUS_ARCSEC) -> np.ndarray:
    """Sum of band ``band`` within ``radius_arcsec`` of the centre ``(N-1)/2`` of ``(n, bands, N, N)`` images."""
    inside = core_mask(images.shape[-1], radius_arcsec / pixel_scale)
    return np.nansum(images[:, band][:, inside], axis=1)


def _quantiles(x, probs=(0.05, 0.16, 0.5, 0.84, 0.95)) -> dict | None:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return None
    return {f"q{int(round(p * 100)):02d}": float(np.quantile(x, p)) for p in probs}


def population_section(arc_flux_r, host_flux_r, theta_e, host_abs_mag_r, sigma_v, n_images,
                       max_brighter_frac: float = 0.3) -> dict:
    """The report section (see the module docstring); inputs are per injected stamp with a control."""
    arc, host = np.asarray(arc_flux_r, dtype=float), np.asarray(host_flux_r, dtype=float)
    ok = np.isfinite(arc) & np.isfinite(host)
    ratio = np.where(host[ok] > 0, arc[ok] / np.where(host[ok] > 0, host[ok], 1.0), np.inf)
    brighter = float(np.mean(arc[ok] > host[ok])) if ok.any() else None
    theta, lum = np.asarray(theta_e, dtype=float), -np.asarray(host_abs_mag_r, dtype=float)
    both = np.isfinite(theta) & np.isfinite(lum)
    rho = stats.spearmanr(lum[both], theta[both]) if both.sum() >= 3 else None
    counts = np.asarray(n_images, dtype=float)
    counts = counts[np.isfinite(counts)].astype(int)
    return {
        "n_pairs": int(ok.sum()), "radius_arcsec": RADIUS_ARCSEC,
        "arc_brighter_than_host_frac": brighter, "arc_brighter_than_host_max": max_brighter_frac,
        "arc_brighter_than_host_ok": None if brighter is None else bool(brighter <= max_brighter_frac),
        "arc_to_host_flux_ratio": _quantiles(ratio),
        "theta_e_luminosity_spearman": None if rho is None else float(rho.statistic),
        "theta_e_luminosity_p": None if rho is None else float(rho.pvalue),
        "n_with_deflector": int(both.sum()),
        "theta_e_arcsec": _quantiles(theta), "sigma_v_kms": _quantiles(sigma_v),
        "n_images": {str(k): int(v) for k, v in zip(*np.unique(counts, return_counts=True))},
    }
