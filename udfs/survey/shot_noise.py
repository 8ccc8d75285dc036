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

from udfs.config.limits import ParameterError

# Typical DECam dark-sky surface brightness (AB mag / arcsec^2) used for the gain estimate.
SKY_MAG_ARCSEC2 = {"g": 22.04, "r": 20.91, "i": 20.05, "z": 18.46}


def _sky_per_pixel(band: str, pixel_scale: float) -> float:
    if band not in SKY_MAG_ARCSEC2:
        raise ParameterError(f"no sky brightness known for band {band!r}")
    return 10.0 ** ((22.5 - SKY_MAG_ARCSEC2[band]) / 2.5) * pixel_scale ** 2


def gain_estimate(invvar: np.ndarray, band: str, pixel_scale: float) -> float:
    """Electrons per nanomaggy of one band's cutout: median of ``invvar * sky`` over valid pixels."""
    sky = _sky_per_pixel(band, pixel_scale)
    good = invvar[np.isfinite(invvar) & (invvar > 0)]
    if good.size == 0:
        raise ParameterError(f"band {band}: no pixel with invvar > 0, cannot estimate the gain")
    return float(np.median(good)) * sky


def gain_estimates(invvar: np.ndarray, bands: str, pixel_scale: float) -> np.ndarray:
    """:func:`gain_estimate` of a batch ``(B, n_bands, H, W)`` at once: ``(B, n_bands)``."""
    sky = np.array([_sky_per_pixel(b, pixel_scale) for b in bands])
    flat = invvar.reshape(invvar.shape[:2] + (-1,))
    good = np.isfinite(flat) & (flat > 0)
    med = np.empty(flat.shape[:2])
    full = good.all(axis=-1)
    med[full] = np.median(flat[full], axis=-1)
    for s, b in np.argwhere(~full):  # rows with invalid pixels: the median of their valid ones
        valid = flat[s, b][good[s, b]]
        if valid.size == 0:
            raise ParameterError(f"stamp {s} band {bands[b]}: no pixel with invvar > 0, cannot estimate the gain")
        med[s, b] = np.median(valid)
    return med * sky[None, :]


def _texture(residual: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Convolve ``(..., H, W)`` residuals with their own odd ``(..., k, k)`` kernels, each scaled
    to ``sum k^2 = 1``, zeros outside (``scipy.ndimage.convolve`` with ``mode='constant'``)."""
    k = np.asarray(kernels, np.float64)
    k = k / np.sqrt(np.sum(k * k, axis=(-2, -1), keepdims=True))
    size = k.shape[-1]
    r = size // 2
    h, w = residual.shape[-2:]
    pad = np.pad(residual, [(0, 0)] * (residual.ndim - 2) + [(r, r), (r, r)])
    out = np.zeros(residual.shape)
    for a in range(size):
        for c in range(size):
            out += k[..., a, c, None, None] * pad[..., 2 * r - a: 2 * r - a + h, 2 * r - c: 2 * r - c + w]
    return out


def add_poisson_noise(arc: np.ndarray, gain, rng: np.random.Generator,
                      kernel: np.ndarray | None = None) -> np.ndarray:
    """One band's arc (nanomaggies) with its shot noise. White (``kernel=None``): pixels with
    ``arc <= 0`` keep the arc's value (0, or a measured PSF's negative wing) with no noise. With a
    texture ``kernel`` (module doc) the noise is correlated. Bands at once: ``arc`` ``(n_bands, H,
    W)``, ``gain`` ``(n_bands, 1, 1)``, ``kernel`` ``(n_bands, k, k)``, drawn in band order."""
    if not np.all(np.asarray(gain) > 0):
        raise ParameterError(f"gain must be > 0 electrons/nanomaggy, got {gain}")
    lam = np.where(arc > 0, arc, 0.0) * gain
    noisy = rng.poisson(lam) / gain
    if kernel is None:
        return np.where(arc > 0, noisy, arc).astype(arc.dtype)
    return (arc + _texture(noisy - lam / gain, kernel)).astype(arc.dtype)


def add_shot_noise(arcs: np.ndarray, gains: np.ndarray, seeds, kernels: np.ndarray | None = None) -> np.ndarray:
    """:func:`add_poisson_noise` of a batch, stamp for stamp the same values: arcs ``(B, n_bands,
    H, W)``, gains ``(B, n_bands)``, one seed per stamp (``numpy.random.default_rng(seed)``, bands
    drawn in order), texture kernels ``(B, n_bands, k, k)`` or None (white). Only the draws are
    per stamp (each its own generator); the arithmetic and the texture run on the whole batch."""
    gains = np.asarray(gains, np.float64)
    if not np.all(gains > 0):
        raise ParameterError(f"gain must be > 0 electrons/nanomaggy, got {gains[~(gains > 0)][0]}")
    g = gains[:, :, None, None]
    lam = np.where(arcs > 0, arcs, 0.0) * g
    noisy = np.empty(lam.shape)
    for s, seed in enumerate(np.broadcast_to(np.asarray(seeds, dtype=np.uint64), (len(arcs),))):
        noisy[s] = np.random.default_rng(int(seed)).poisson(lam[s])
    noisy /= g
    if kernels is None:
        return np.where(arcs > 0, noisy, arcs).astype(arcs.dtype)
    return (arcs + _texture(noisy - lam / g, kernels)).astype(arcs.dtype)
