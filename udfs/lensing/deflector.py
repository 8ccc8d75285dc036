"""A deflector that could exist: the lens galaxy's redshift, velocity dispersion, Einstein radius
and mass shape, all from the host's own light.

Chain (per target; every step vectorised over targets):

1. Luminosity. ``M_r = m_r - DM(z_l) - K_r(z_l)`` (:func:`udfs.sources.red_galaxy.absolute_mag_r`:
   the CWW elliptical template's K-correction in DECam r).
2. Velocity dispersion. A Faber-Jackson power law ``sigma = sigma_* (L / L_*)^(1/alpha)`` with
   ``L / L_* = 10^(-0.4 (M_r - M_*(z)))`` and log-normal intrinsic scatter ``scatter_dex``. Defaults
   (``conf/injection_priors.yaml``): Parker et al. (2007, ApJ 669, 21; weak lensing of SDSS lens
   galaxies) ``sigma_* = 142 km/s``, ``alpha = 3``; ``M_*`` from Blanton et al. (2003, ApJ 592, 819)
   ``M_* - 5 log10 h = -20.44`` (h from the cosmology) at z = 0.1, brightening by 1.5 mag per unit
   redshift (Bell et al. 2004, ApJ 608, 752): ``M_*(z) = M_* - 1.5 (z - 0.1)``. The blue-shifted
   ``0.1r`` band of Blanton et al. is taken as rest-frame DECam r (<~0.2 mag for red galaxies,
   <~7% in sigma). Scatter 0.1 dex: the upper end of the 0.07-0.1 dex of log sigma at fixed
   luminosity (Bernardi et al. 2003, AJ 125, 1849).
3. Einstein radius of the singular isothermal sphere:
   ``theta_E = 4 pi (sigma / c)^2 D_ls / D_s`` (radians; returned in arcsec), with the
   angular-diameter distances ``D_s = D_A(0, z_s)`` and ``D_ls = D_A(z_l, z_s)`` of the cosmology.
   lenstronomy's ``LensCosmo.sis_sigma_v2theta_E`` is the independent check (tests).
4. Mass shape from the light (:func:`tractor_to_stamp`): Tractor's ``e1, e2`` (ellipticity
   ``|e| = (1 - q) / (1 + q)``, angles on the sky) become the axis ratio ``q`` and the position
   angle ``phi`` of the major axis in the stamp frame: counter-clockwise from +x, where the coadd
   WCS has +x pointing West and +y North, so ``phi = 1/2 atan2(e2, e1) + pi/2``, i.e. the Tractor
   position angle (East of North) plus 90 degrees. This is the convention the survey's own model
   image of a real DEV galaxy obeys (tests), and the one the demo sky renders with.
"""
from __future__ import annotations

import numpy as np

from udfs.sources.cosmology import get_cosmology

C_KM_S = 299_792.458
RAD_TO_ARCSEC = 180.0 / np.pi * 3600.0


def faber_jackson_sigma(abs_mag_r, z_l, *, sigma_star: float, alpha: float, mstar_h: float,
                        mstar_z: float, evolution: float, cosmology: str) -> np.ndarray:
    """Mean velocity dispersion (km/s) at absolute magnitude ``abs_mag_r`` (no scatter):
    ``sigma_star (L/L*)^(1/alpha)`` with ``M* = mstar_h + 5 log10 h - evolution (z_l - mstar_z)``."""
    h = get_cosmology(cosmology).H0.value / 100.0
    mstar = mstar_h + 5.0 * np.log10(h) - evolution * (np.asarray(z_l, dtype=float) - mstar_z)
    l_ratio = 10.0 ** (-0.4 * (np.asarray(abs_mag_r, dtype=float) - mstar))
    return sigma_star * l_ratio ** (1.0 / alpha)


def sis_theta_e(sigma_kms, z_l, z_s, cosmology: str) -> np.ndarray:
    """Einstein radius (arcsec) of an SIS of velocity dispersion ``sigma_kms`` (km/s) at ``z_l``
    lensing a source at ``z_s``; NaN where ``z_s <= z_l``."""
    z_l = np.asarray(z_l, dtype=float)
    z_s = np.asarray(z_s, dtype=float)
    cosmo = get_cosmology(cosmology)
    behind = z_s > z_l
    zs = np.where(behind, z_s, z_l + 1.0)
    ratio = (cosmo.angular_diameter_distance_z1z2(z_l, zs) / cosmo.angular_diameter_distance(zs)).decompose().value
    theta = 4.0 * np.pi * (np.asarray(sigma_kms, dtype=float) / C_KM_S) ** 2 * ratio * RAD_TO_ARCSEC
    return np.where(behind, theta, np.nan)


def tractor_to_stamp(e1, e2) -> tuple[np.ndarray, np.ndarray]:
    """``(q, phi)``: axis ratio and stamp-frame position angle (rad, in [0, pi), counter-clockwise
    from +x = West) of the major axis of a Tractor ellipse ``e1, e2`` (see the module docstring).
    A round shape (``e1 = e2 = 0``) gives ``q = 1`` and ``phi = pi/2``; non-finite values count as round."""
    e1 = np.nan_to_num(np.asarray(e1, dtype=float))
    e2 = np.nan_to_num(np.asarray(e2, dtype=float))
    e = np.minimum(np.hypot(e1, e2), 0.999)
    q = (1.0 - e) / (1.0 + e)
    phi = np.mod(0.5 * np.arctan2(e2, e1) + np.pi / 2, np.pi)
    return q, phi
