"""Batch injection: render arcs for many stamps, add them to cutouts, measure them.

This is what the single-stamp command and the Spark injection UDF call. Fluxes are nanomaggies
(AB mag = 22.5 - 2.5 log10 flux). One source morphology per stamp is lensed once; each band is
that lensed image times the band's unlensed source flux, convolved with the band's PSF kernel.
The lensed flux keeps the magnification: nothing is renormalised.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from udfs.lensing.arc_metrics import CORE_RADIUS_ARCSEC, arc_metrics
from udfs.survey.shot_noise import add_shot_noise, gain_estimates
from udfs.lensing.lens_model import Lens
from udfs.config.limits import ParameterError
from udfs.lensing.render import MODE_COSMOS, MODE_SERSIC, render_unit_arcs
from udfs.sources.bank import SourceBank
from udfs.survey.psf import convolve_stamps

SOURCE_MODES = {"cosmos": MODE_COSMOS, "sersic": MODE_SERSIC}
DEFAULT_SUPERSAMPLING = 8


def nanomaggies(mag) -> np.ndarray:
    """AB magnitude -> nanomaggies."""
    return 10.0 ** ((22.5 - np.asarray(mag, dtype=np.float64)) / 2.5)


@dataclass(frozen=True)
class Sources:
    """Unlensed sources of a batch (arrays of length B; ``mag`` is ``(B, n_bands)`` AB).

    ``mode``: 'cosmos' (bank image ``index``, rotated counter-clockwise by ``phi`` radians) or
    'sersic' (``sersic_n``, ``sersic_re`` arcsec circularised half-light radius, ``sersic_q``,
    position angle ``phi``). ``x, y``: source-plane position in arcsec (stamp frame).
    ``size_scale``: factor on the bank's pixel scale (angular-size rescaling of cosmos sources to
    a new redshift, :func:`udfs.sources.cosmology.angular_size_ratio`); 1 when omitted.
    """
    mode: np.ndarray
    x: np.ndarray
    y: np.ndarray
    phi: np.ndarray
    mag: np.ndarray
    index: np.ndarray | None = None
    sersic_n: np.ndarray | None = None
    sersic_re: np.ndarray | None = None
    sersic_q: np.ndarray | None = None
    size_scale: np.ndarray | None = None

    def mode_codes(self) -> np.ndarray:
        unknown = sorted(set(np.asarray(self.mode).tolist()) - set(SOURCE_MODES))
        if unknown:
            raise ParameterError(f"unknown source mode(s) {unknown}: use 'cosmos' or 'sersic'")
        return np.array([SOURCE_MODES[m] for m in self.mode], dtype=np.int64)


@dataclass(frozen=True)
class RenderedArcs:
    arcs: np.ndarray            # (B, n_bands, N, N) float64, noiseless, PSF-convolved, nanomaggies
    magnification: np.ndarray   # (B,)
    n_images: np.ndarray        # (B,)


def render_arcs(lens: Lens, sources: Sources, kernels: list[list[np.ndarray]], npix: int,
                pixel_scale: float, bank: SourceBank | None = None,
                supersampling: int = DEFAULT_SUPERSAMPLING) -> RenderedArcs:
    """Noiseless arcs for a batch. ``kernels[s][b]``: PSF kernel of stamp ``s``, band ``b``."""
    mag = np.atleast_2d(np.asarray(sources.mag, dtype=np.float64))
    if not np.isfinite(mag).all():
        raise ParameterError("source magnitudes must be finite")
    codes = sources.mode_codes()
    images = scale = support = None
    if (codes == MODE_COSMOS).any():
        if bank is None:
            raise ParameterError("cosmos sources need a source bank")
        images = bank.crops
        scale = bank.pixel_scale * (1.0 if sources.size_scale is None else np.asarray(sources.size_scale))
        support = bank.support_pix
    unit, n_images = render_unit_arcs(
        lens, npix=npix, pixel_scale=pixel_scale, mode=codes, src_x=sources.x, src_y=sources.y,
        src_phi=sources.phi, src_index=sources.index, images=images, image_scale=scale,
        support=support, sersic_n=sources.sersic_n, sersic_re=sources.sersic_re,
        sersic_q=sources.sersic_q, k=supersampling)
    flux = nanomaggies(mag)
    arcs = convolve_stamps(unit, kernels, single=True) * flux[:, :, None, None]
    return RenderedArcs(arcs=arcs, magnification=unit.sum(axis=(1, 2)), n_images=n_images)


def inject(images: np.ndarray, invvar: np.ndarray, rendered: RenderedArcs, lens: Lens, bands: str,
           pixel_scale: float, seeds, noise: bool = True,
           core_radius: float = CORE_RADIUS_ARCSEC,
           noise_kernels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Add arcs to cutouts ``(B, n_bands, N, N)``; returns ``(injected, added_arcs, metrics)``.

    With ``noise`` the added arc carries its own Poisson noise (:mod:`udfs.survey.shot_noise`), drawn from
    ``numpy.random.default_rng(seed)`` per stamp, bands in order; ``metrics`` then also holds
    ``gain_<band>`` (electrons per nanomaggy). ``noise_kernels`` ``(B, n_bands, k, k)``: each
    stamp's noise texture (the cutouts' ``noise_kernel``), given to the shot noise; ``None``: white.
    Metrics are computed on the noiseless arc.
    """
    arcs = rendered.arcs
    metrics = arc_metrics(arcs, invvar, rendered.magnification, rendered.n_images,
                          lens.center_x, lens.center_y, bands, pixel_scale, core_radius)
    if noise:
        gains = gain_estimates(invvar, bands, pixel_scale)
        added = add_shot_noise(arcs, gains, seeds, noise_kernels)
        for b, band in enumerate(bands):
            metrics[f"gain_{band}"] = gains[:, b]
    else:
        added = arcs.copy()
    injected = (images.astype(np.float64) + added).astype(np.float32)
    return injected, added, metrics
