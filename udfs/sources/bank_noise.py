"""How much HST noise a bank image carries into a DR10 stamp, relative to the DR10 sky noise.

A bank image is normalised to unit flux; injected at an (unlensed) source flux ``F`` nanomaggies,
its HST noise field (the drawn ``final.noise`` of GalSim, divided by the galaxy's flux) is scaled by
``F``. Lensing stretches the field: with magnification ``mu`` and a noise correlation length well
below the DR10 PSF, the variance it adds per DR10 pixel grows by ``mu`` (surface brightness is
conserved, the correlated patches cover ``mu`` times more area). Convolved with the DR10 PSF and
integrated over a DR10 pixel, the variance it adds is

    var_dr10 = F**2 * mu * v_unit,   v_unit = xi_K(0) * (p_dr10 / p_bank)**2

where ``xi_K(0)`` is the variance of the unit-flux noise field convolved with the DR10 PSF and the
DR10 pixel box (GalSim ``CorrelatedNoise.convolvedWith``; the box has unit flux, so this is the
variance of the box average in bank-pixel units, and the pixel-area ratio turns it into a sum).
The DR10 sky noise per pixel follows from the r-band point-source depth (PSFDEPTH, nanomaggy^-2)
and a Gaussian PSF: ``sigma_pix = 1 / sqrt(PSFDEPTH * NEA)``, ``NEA = 4 pi sigma_psf**2 / p**2``.
"""
from __future__ import annotations

import math

import galsim


def dr10_sky_sigma(psfdepth: float, psf_fwhm_arcsec: float, pixel_scale_arcsec: float) -> float:
    """Per-pixel sky sigma (nanomaggies) of a DR10 image with point-source depth ``psfdepth``."""
    sigma_psf = psf_fwhm_arcsec / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    nea = 4.0 * math.pi * sigma_psf ** 2 / pixel_scale_arcsec ** 2
    return 1.0 / math.sqrt(psfdepth * nea)


def unit_variance_per_dr10_pixel(noise: galsim.BaseCorrelatedNoise, flux_hst: float, bank_scale: float,
                                 psf_fwhm_arcsec: float, dr10_scale: float) -> float:
    """``v_unit``: variance per DR10 pixel added by the noise of a unit-flux bank image (mu = 1)."""
    kernel = galsim.Convolve(galsim.Gaussian(fwhm=psf_fwhm_arcsec), galsim.Pixel(dr10_scale))
    xi0 = noise.withScaledVariance(1.0 / flux_hst ** 2).convolvedWith(kernel).getVariance()
    return float(xi0 * (dr10_scale / bank_scale) ** 2)


def variance_ratio(v_unit, mag_r, magnification, sky_sigma):
    """Bank-noise variance per DR10 pixel over the DR10 sky variance for a source of AB ``mag_r``."""
    flux = 10.0 ** (-0.4 * (mag_r - 22.5))
    return flux ** 2 * magnification * v_unit / sky_sigma ** 2
