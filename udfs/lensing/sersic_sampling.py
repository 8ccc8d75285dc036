"""Sersic profile helpers for the renderer (:mod:`udfs.lensing.render`): exact normalisation, and the
lensed surface brightness sampled at pixel centres or averaged over a pixel's sub-pixel centres.

``I(R) = I_e exp(-b_n ((R/R_e)^(1/n) - 1))``, ``R = sqrt(q x'^2 + y'^2/q)`` in the source frame
rotated by ``phi`` (lenstronomy's SERSIC_ELLIPSE; ``R_e`` circularised half-light radius, arcsec),
``b_n`` exact (``gammaincinv(2n, 1/2)``), ``I_e`` for unit total flux (per arcsec^2). Pixel ``(j, i)``
of an ``N``-pixel stamp has its centre at ``((i - c0) d, (j - c0) d)``, ``c0 = (N-1)/2``, ``d`` the
pixel scale; rays through the lens (:func:`udfs.lensing.lens_model.ray`) take the SIE + shear
kernel parameters ``b, q, lc, ls, cx, cy, g1, g2``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy.special import gamma as gamma_fn
from scipy.special import gammaincinv

from udfs.lensing.lens_model import ray


def sersic_bn(n):
    """Exact Sersic b_n: half the light inside R_e."""
    return gammaincinv(2.0 * np.asarray(n, dtype=np.float64), 0.5)


def sersic_ie(n, r_e):
    """Surface brightness at R_e of a unit-flux Sersic profile (per arcsec^2)."""
    n = np.asarray(n, dtype=np.float64)
    bn = sersic_bn(n)
    return 1.0 / (2.0 * np.pi * n * r_e ** 2 * np.exp(bn) * bn ** (-2.0 * n) * gamma_fn(2.0 * n))


@njit(cache=True, inline="always")
def sersic_sb(bx, by, sx, sy, cphi, sphi, n_s, re_s, q_s, bn_s, ie_s):
    """Surface brightness at source-plane position (bx, by) of the profile centred on (sx, sy)."""
    dx = bx - sx
    dy = by - sy
    xp = cphi * dx + sphi * dy
    yp = -sphi * dx + cphi * dy
    r = max(math.sqrt(q_s * xp * xp + yp * yp / q_s), 1e-5)
    return ie_s * math.exp(-bn_s * ((r / re_s) ** (1.0 / n_s) - 1.0))


@njit(cache=True, inline="always")
def sersic_pixel_mean(i, j, kk, c0, pixel_scale, b, q, lc, ls, cx, cy, g1, g2, sx, sy, cphi, sphi, n_s, re_s,
                      q_s, bn_s, ie_s):
    """Mean lensed Sersic surface brightness of pixel (j, i) over kk x kk sub-pixel centres (every ray traced)."""
    acc = 0.0
    for a in range(kk):
        yy = (j - c0 - 0.5 + (a + 0.5) / kk) * pixel_scale
        for c in range(kk):
            bx, by = ray((i - c0 - 0.5 + (c + 0.5) / kk) * pixel_scale, yy, b, q, lc, ls, cx, cy, g1, g2)
            acc += sersic_sb(bx, by, sx, sy, cphi, sphi, n_s, re_s, q_s, bn_s, ie_s)
    return acc / (kk * kk)


@njit(cache=True)
def sersic_nodes(csc, csb, cbx, cby, c0, pixel_scale, b, q, lc, ls, cx, cy, g1, g2, sx, sy, cphi, sphi, n_s,
                 re_s, q_s, bn_s, ie_s):
    """A Sersic's lensed surface brightness at every pixel centre (into ``csc``, rays traced here)
    and corner (into ``csb``, from the corners' traced source positions ``cbx, cby``); returns the
    largest value."""
    peak = 0.0
    for j in range(csb.shape[0]):
        for i in range(csb.shape[1]):
            csb[j, i] = sersic_sb(cbx[j, i], cby[j, i], sx, sy, cphi, sphi, n_s, re_s, q_s, bn_s, ie_s)
            peak = max(peak, csb[j, i])
    for j in range(csc.shape[0]):
        for i in range(csc.shape[1]):
            bx, by = ray((i - c0) * pixel_scale, (j - c0) * pixel_scale, b, q, lc, ls, cx, cy, g1, g2)
            csc[j, i] = sersic_sb(bx, by, sx, sy, cphi, sphi, n_s, re_s, q_s, bn_s, ie_s)
            peak = max(peak, csc[j, i])
    return peak
