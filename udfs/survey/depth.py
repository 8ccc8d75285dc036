"""Per-pixel noise of a coadd from the catalogue depth (PSFDEPTH) and the PSF size.

PSFDEPTH_<b> (Legacy Survey data model) is the inverse variance (1/nanomaggies^2) of the flux of a
point source measured with a matched filter on the 0.262"/pixel coadd. For a PSF p normalised to
unit flux on the pixel grid that variance is ``sigma_pix^2 * NEA`` with the noise equivalent area
``NEA = 1 / sum(p_i^2)`` (pixels), so

    sigma_pix = 1 / sqrt(PSFDEPTH * NEA_psf)      (nanomaggies per pixel)

with a Gaussian PSF of the given FWHM drawn (pixel-convolved) by GalSim. The PSF FWHM itself, when
a catalogue lacks PSFSIZE_<b>, comes from :func:`udfs.survey.psf_size.fwhm_from_depth_ratio`.
"""
from __future__ import annotations

import numpy as np

PIXSCALE_ARCSEC = 0.262


def nea_pixels(profile, pixscale: float = PIXSCALE_ARCSEC, npix: int = 129) -> float:
    """Noise equivalent area (pixels) of a GalSim profile drawn on the pixel grid at unit flux."""
    img = profile.withFlux(1.0).drawImage(nx=npix, ny=npix, scale=pixscale).array
    return float(1.0 / np.sum(img.astype(np.float64) ** 2))


def pixel_sigma(psfdepth: float, fwhm_arcsec: float) -> float:
    """Per-pixel noise sigma (nanomaggies) of a coadd with this PSFDEPTH and Gaussian PSF FWHM."""
    import galsim

    if not (psfdepth > 0 and fwhm_arcsec > 0):
        raise ValueError(f"pixel_sigma: need psfdepth > 0 and fwhm > 0, got {psfdepth}, {fwhm_arcsec}")
    return float(1.0 / np.sqrt(psfdepth * nea_pixels(galsim.Gaussian(fwhm=float(fwhm_arcsec)))))
