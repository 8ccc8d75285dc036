"""SIE + external shear deflection, in lenstronomy's conventions.

Angles in arcsec. ``x`` increases with the FITS column index, ``y`` with the row index.

- SIE (lenstronomy ``SIE``): ``theta_E`` is the product-averaged Einstein radius; ``e1, e2`` are
  lenstronomy's eccentricities, ``phi = arctan2(e2, e1) / 2`` (radians, counter-clockwise from +x)
  and axis ratio ``q = (1 - c) / (1 + c)`` with ``c = sqrt(e1^2 + e2^2)``. In the frame of the major
  axis, with ``b = theta_E * sqrt(q)`` and ``psi = sqrt(q^2 x^2 + y^2)`` (Keeton & Kochanek 1998)::

      alpha_x = b / sqrt(1 - q^2) * arctan(sqrt(1 - q^2) x / psi)
      alpha_y = b / sqrt(1 - q^2) * arctanh(sqrt(1 - q^2) y / psi)

  (``q -> 1`` gives the SIS, ``alpha = theta_E * x / |x|``).
- SHEAR (lenstronomy ``SHEAR`` about the lens centre): ``alpha_x = g1 x + g2 y``,
  ``alpha_y = g2 x - g1 y``.

The lens equation is ``beta = theta - alpha(theta)``. The numba kernel here is what the renderer
calls per ray; :func:`deflection` is the NumPy face used by tests and metrics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from udfs.config.limits import ParameterError

_Q_SIS = 1.0 - 1e-8  # lenstronomy clips q >= 1 to 0.99999999 for the same reason


@dataclass(frozen=True)
class Lens:
    """SIE + shear parameters (arcsec, dimensionless); arrays of equal length for a batch."""
    theta_e: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    center_x: np.ndarray
    center_y: np.ndarray
    gamma1: np.ndarray
    gamma2: np.ndarray

    @classmethod
    def make(cls, theta_e, e1=0.0, e2=0.0, center_x=0.0, center_y=0.0, gamma1=0.0, gamma2=0.0):
        arrays = np.broadcast_arrays(*[np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in
                                       (theta_e, e1, e2, center_x, center_y, gamma1, gamma2)])
        lens = cls(*[np.ascontiguousarray(a) for a in arrays])
        lens.validate()
        return lens

    def __len__(self) -> int:
        return self.theta_e.shape[0]

    def validate(self) -> None:
        for name in ("theta_e", "e1", "e2", "center_x", "center_y", "gamma1", "gamma2"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ParameterError(f"lens parameter {name} must be finite")
        if np.any(self.theta_e < 0):
            raise ParameterError("theta_E must be >= 0 arcsec")
        if np.any(np.hypot(self.e1, self.e2) >= 1):
            raise ParameterError("lens ellipticity |e| = sqrt(e1^2 + e2^2) must be < 1")

    def row(self, i: int) -> tuple:
        """Kernel arguments for stamp ``i``: (b, q, cos phi, sin phi, cx, cy, g1, g2)."""
        return sie_kernel_params(self.theta_e[i], self.e1[i], self.e2[i], self.center_x[i],
                                 self.center_y[i], self.gamma1[i], self.gamma2[i])


@njit(cache=True)
def sie_kernel_params(theta_e, e1, e2, cx, cy, g1, g2):
    """(b, q, cos phi, sin phi, cx, cy, g1, g2) from lenstronomy parameters."""
    phi = 0.5 * math.atan2(e2, e1)
    c = min(math.sqrt(e1 * e1 + e2 * e2), 0.9999)
    q = min((1.0 - c) / (1.0 + c), _Q_SIS)
    return theta_e * math.sqrt(q), q, math.cos(phi), math.sin(phi), cx, cy, g1, g2


@njit(cache=True, inline="always")
def ray(x, y, b, q, cphi, sphi, cx, cy, g1, g2):
    """Source-plane position (beta_x, beta_y) of the image-plane point (x, y)."""
    dx = x - cx
    dy = y - cy
    xp = cphi * dx + sphi * dy
    yp = -sphi * dx + cphi * dy
    psi = math.sqrt(q * q * xp * xp + yp * yp)
    if psi == 0.0 or b == 0.0:
        axp = 0.0
        ayp = 0.0
    else:
        s = math.sqrt(1.0 - q * q)
        axp = b / s * math.atan(s * xp / psi)
        ayp = b / s * math.atanh(s * yp / psi)
    ax = cphi * axp - sphi * ayp + g1 * dx + g2 * dy
    ay = sphi * axp + cphi * ayp + g2 * dx - g1 * dy
    return x - ax, y - ay


@njit(cache=True)
def _deflect(x, y, b, q, cphi, sphi, cx, cy, g1, g2):
    bx = np.empty_like(x)
    by = np.empty_like(y)
    for i in range(x.size):
        bx.flat[i], by.flat[i] = ray(x.flat[i], y.flat[i], b, q, cphi, sphi, cx, cy, g1, g2)
    return x - bx, y - by


def deflection(x, y, lens: Lens, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deflection (alpha_x, alpha_y) in arcsec of stamp ``i``'s lens at points (x, y)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    return _deflect(x, y, *lens.row(i))
