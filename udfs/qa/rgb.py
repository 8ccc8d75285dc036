"""The Legacy Survey viewer's grz colour stretch: ``(n_bands, N, N)`` nanomaggies -> ``(N, N, 3)`` RGB.

Reference: the mapping legacypipe uses for the survey's coadd jpegs and the viewer
(legacysurvey.org/viewer) shows, ``sdss_rgb`` / ``get_rgb`` in ``py/legacypipe/survey.py`` of
legacysurvey/legacypipe (read at commit 93e2d828a9f2d10d6f770a7c301f9dbde94e0205), an arcsinh
stretch after Lupton et al. (2004, PASP 116, 133). Re-implemented here from its formula.

The formula, per pixel (``x_b`` unitless after scaling, ``b`` in g, r, z):

1. scale and offset each band: ``x_b = s_b * image_b + m`` with ``s_g = 6.0``, ``s_r = 3.4``,
   ``s_z = 2.2`` (per nanomaggy) and the soft offset ``m = 0.03``;
2. a common intensity ``I = mean_b max(0, x_b)``;
3. the arcsinh factor ``f(I) = asinh(Q I) / (sqrt(Q) I)`` with ``Q = 20`` (``f = 0`` where ``I = 0``,
   where every ``x_b <= 0``, as in legacypipe);
4. each plane ``v_b = clip(x_b * f(I), 0, 1)``, z -> R, r -> G, g -> B.

Every band is multiplied by the same ``f(I)``, so colours (ratios of the scaled bands) survive the
stretch; ``m`` lifts the sky so that a pixel at 0 nanomaggies is a dark grey (~0.13), and a faint
arc at a few sky sigma (~0.05 nmgy in r) lands near mid-grey. :func:`legacy_rgb` returns
``uint8`` (``round(255 v)``): deterministic bytes for identical input. Non-finite pixels count as 0.
"""
from __future__ import annotations

import numpy as np

#: per-band scale (per nanomaggy) and output plane (0 = R, 1 = G, 2 = B)
SCALES = {"g": 6.0, "r": 3.4, "z": 2.2}
PLANES = {"z": 0, "r": 1, "g": 2}
SOFTENING = 0.03   # m: added to every scaled band before the stretch
Q = 20.0           # arcsinh non-linearity


def stretch_planes(planes: dict[str, np.ndarray], *, scales: dict[str, float] | None = None,
                   m: float = SOFTENING, q: float = Q) -> np.ndarray:
    """The stretched planes in [0, 1], ``(N, N, 3)`` float64 RGB from ``{"g": ..., "r": ..., "z": ...}``
    (nanomaggies); the module docstring's steps 1-4."""
    s = {**SCALES, **(scales or {})}
    x = {b: np.nan_to_num(np.asarray(planes[b], np.float64), nan=0.0, posinf=0.0, neginf=0.0) * s[b] + m
         for b in "grz"}
    intensity = sum(np.maximum(0.0, x[b]) for b in "grz") / 3.0
    safe = np.where(intensity > 0, intensity, 1.0)
    factor = np.where(intensity > 0, np.arcsinh(q * safe) / (np.sqrt(q) * safe), 0.0)
    out = np.zeros(intensity.shape + (3,))
    for b in "grz":
        out[..., PLANES[b]] = np.clip(x[b] * factor, 0.0, 1.0)
    return out


def legacy_rgb(image: np.ndarray, bands: str, **kw) -> np.ndarray:
    """``(N, N, 3)`` uint8 RGB of a ``(n_bands, N, N)`` stamp in nanomaggies whose band order is
    ``bands`` (must hold g, r and z); ``kw``: ``scales``, ``m``, ``q`` of :func:`stretch_planes`."""
    missing = [b for b in "grz" if b not in bands]
    if missing:
        raise ValueError(f"the Legacy Survey stretch needs g, r and z; band order {bands!r} lacks {missing}")
    image = np.asarray(image)
    rgb = stretch_planes({b: image[bands.index(b)] for b in "grz"}, **kw)
    return np.round(255.0 * rgb).astype(np.uint8)
