"""Shot noise of added light (an injected arc, a rendered sky source), from the invvar and a gain estimate.

Legacy Survey coadds are sky-subtracted and their invvar holds the sky (and read) noise only, so
light added to a coadd (an injected arc, or a source of the demo's rendered sky) needs its own shot
noise, from one gain model. With ``g`` electrons per nanomaggy, a sky-limited pixel has
``1 / invvar = sky / g`` (nanomaggies^2), hence the gain estimate ``g = invvar * sky`` with ``sky``
the sky flux per pixel from a typical dark-sky brightness per band (``SKY_MAG_ARCSEC2``, DECam).
The arc then becomes ``Poisson(arc * g) / g``: zero where the arc is zero, never clamped.

Texture: the coadd's photons were resampled from the CCDs, so its shot noise is correlated like
its sky noise (:mod:`udfs.survey.noise_texture`). With a texture kernel ``k`` (odd, ``sum k^2 = 1``:
the cutout's ``noise_kernel``) the arc becomes ``arc + k (*) (Poisson(arc * g) / g - arc)``: the
same mean, the same per-pixel variance ``arc / g`` where the arc varies slowly on the kernel's
scale, and the neighbour correlation the kernel gives (the kernel spreads a pixel's noise onto its
neighbours, so pixels next to the arc get some). Outside the stamp the residual is taken as 0.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from udfs.config.limits import ParameterError

# Typical DECam dark-sky surface brightness (AB mag / arcsec^2) used for the gain estimate.
SKY_MAG_ARCSEC2 = {"g": 22.04, "r": 20.91, "i": 20.05, "z": 18.46}


def gain_estimate(invvar: np.ndarray, band: str, pixel_scale: float) -> float:
    """Electrons per nanomaggy of one band's cutout: median of ``invvar * sky`` over valid pixels."""
    if band not in SKY_MAG_ARCSEC2:
        raise ParameterError(f"no sky brightness known for band {band!r}")
    sky = 10.0 ** ((22.5 - SKY_MAG_ARCSEC2[band]) / 2.5) * pixel_scale ** 2
    good = invvar[np.isfinite(invvar) & (invvar > 0)]
    if good.size == 0:
        raise ParameterError(f"band {band}: no pixel with invvar > 0, cannot estimate the gain")
    return float(np.median(good) * sky)


def add_poisson_noise(arc: np.ndarray, gain: float, rng: np.random.Generator,
                      kernel: np.ndarray | None = None) -> np.ndarray:
    """One band's arc (nanomaggies) with its shot noise. White (``kernel=None``): pixels with
    ``arc <= 0`` keep the arc's value (0, or a measured PSF's negative wing) with no noise. With a
    texture ``kernel`` (module doc) the noise is correlated."""
    if not gain > 0:
        raise ParameterError(f"gain must be > 0 electrons/nanomaggy, got {gain}")
    lam = np.where(arc > 0, arc, 0.0) * gain
    noisy = rng.poisson(lam) / gain
    if kernel is None:
        return np.where(arc > 0, noisy, arc).astype(arc.dtype)
    k = np.asarray(kernel, np.float64)
    k = k / np.sqrt(np.sum(k * k))
    residual = noisy - lam / gain
    return (arc + ndimage.convolve(residual, k, mode="constant", cval=0.0)).astype(arc.dtype)
