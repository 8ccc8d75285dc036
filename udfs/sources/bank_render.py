"""Render one COSMOS galaxy for the source bank with GalSim, and inspect its original HST stamp.

Conventions: images are ``(S, S)`` arrays, axis 0 = y (row), axis 1 = x (column); the bank centre
is pixel ``((S-1)/2, (S-1)/2)``. Fluxes are in the catalogue's HST units until normalised.

Rendering (``render``): ``galsim.RealGalaxy`` (the HST PSF is deconvolved) convolved with a round
Gaussian of ``target_psf_fwhm_arcsec`` (wider than every HST PSF, so the deconvolution stays
bounded), drawn with the pixel response on an ``S x S`` grid of ``pixel_scale_arcsec``, shifted by a
sub-pixel ``offset`` so the galaxy's light centroid lands on the centre. The drawn image still
carries the HST noise, transformed by the deconvolution and reconvolution (``final.noise``).

Noise treatment: the bank keeps only the galaxy's footprint (pixels above ``detect_nsigma`` times
the drawn noise sigma, connected to the centre, dilated by ``dilate_pix``) and sets every other
pixel to exactly 0, then normalises the footprint's flux to 1. The README quantifies what is left.
"""
from __future__ import annotations

from dataclasses import dataclass

import galsim
import numpy as np
from scipy import ndimage

from udfs.config.bank import RenderConfig

_EIGHT = ndimage.generate_binary_structure(2, 2)


def target_psf(cfg: RenderConfig) -> galsim.GSObject:
    return galsim.Gaussian(fwhm=cfg.target_psf_fwhm_arcsec)


def footprint(image: np.ndarray, sigma: float, nsigma: float) -> tuple[np.ndarray, int, np.ndarray]:
    """Label the connected regions above ``nsigma * sigma`` (8-connected).

    Returns ``(labels, central_label, fluxes)``: the central label is the region containing the
    stamp centre, else the region whose brightest pixel is nearest to it (0 when nothing is
    detected); ``fluxes[k]`` is the summed flux of region ``k`` (index 0 unused).
    """
    labels, n = ndimage.label(image > nsigma * sigma, structure=_EIGHT)
    if n == 0:
        return labels, 0, np.zeros(1)
    fluxes = np.concatenate([[0.0], ndimage.sum_labels(image, labels, np.arange(1, n + 1))])
    cy, cx = (image.shape[0] - 1) / 2.0, (image.shape[1] - 1) / 2.0
    central = labels[int(round(cy)), int(round(cx))]
    if central == 0:
        peaks = ndimage.maximum_position(image, labels, np.arange(1, n + 1))
        dist = [np.hypot(py - cy, px - cx) for py, px in peaks]
        central = int(np.argmin(dist)) + 1
    return labels, int(central), fluxes


@dataclass(frozen=True)
class OriginalInspection:
    touches_edge: bool              # the galaxy's footprint reaches the HST stamp's outer pixel ring
    neighbour_flux_ratio: float     # brightest other detected region / the galaxy (0 when none)
    detected: bool


def inspect_original(rgc: galsim.RealGalaxyCatalog, index: int, cfg: RenderConfig) -> OriginalInspection:
    """Detect the galaxy on its original HST stamp (smoothed by a Gaussian of
    ``original_smooth_sigma_pix``, threshold ``original_detect_nsigma`` times the smoothed noise
    sigma from the catalogue's noise model) to flag truncation by the stamp edge and neighbours."""
    image = rgc.getGalImage(index)
    sigma_pix = cfg.original_smooth_sigma_pix
    smooth = ndimage.gaussian_filter(image.array.astype(float), sigma_pix, mode="constant")
    kernel = galsim.Gaussian(sigma=sigma_pix * image.scale)
    sigma = float(np.sqrt(rgc.getNoise(index).convolvedWith(kernel).getVariance()))
    labels, central, fluxes = footprint(smooth, sigma, cfg.original_detect_nsigma)
    if central == 0:
        return OriginalInspection(False, 0.0, False)
    gal = labels == central
    edge = np.zeros_like(gal)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    others = np.delete(fluxes, [0, central])
    ratio = float(others.max() / fluxes[central]) if others.size else 0.0
    return OriginalInspection(bool(np.any(gal & edge)), ratio, True)


def final_profile(rgc: galsim.RealGalaxyCatalog, index: int, cfg: RenderConfig,
                  noise_pad_size: float = 0.0, rng: galsim.BaseDeviate | None = None) -> galsim.GSObject:
    """RealGalaxy (HST PSF deconvolved) convolved with the bank's Gaussian target PSF."""
    gal = galsim.RealGalaxy(rgc, index=index, noise_pad_size=noise_pad_size, rng=rng)
    return galsim.Convolve(gal, target_psf(cfg))


def draw(profile: galsim.GSObject, cfg: RenderConfig, offset=(0.0, 0.0), size: int | None = None) -> np.ndarray:
    """Draw on the bank grid (pixel response included); ``offset`` (dx, dy) in pixels."""
    n = size or cfg.stamp_size
    return profile.drawImage(nx=n, ny=n, scale=cfg.pixel_scale_arcsec, offset=offset,
                             method="auto", dtype=np.float64).array


def centroid(image: np.ndarray) -> tuple[float, float]:
    """Flux-weighted (x, y) centroid in pixels."""
    total = image.sum()
    ys, xs = np.indices(image.shape)
    return float((image * xs).sum() / total), float((image * ys).sum() / total)


@dataclass
class Rendered:
    image: np.ndarray               # (S, S) float64, unit flux, 0 outside the footprint
    unmasked: np.ndarray            # (S, S) same normalisation, noise kept (for morphology)
    mask: np.ndarray                # footprint (bool)
    offset: tuple[float, float]     # (dx, dy) pixels passed to drawImage
    flux_hst: float                 # footprint flux in catalogue units (the normalisation)
    noise_sigma_unit: float         # per-pixel sigma of the drawn noise, unit-flux units
    touches_border: bool            # the footprint reaches the bank stamp's outer pixel ring
    profile: galsim.GSObject        # the drawn GalSim profile (not for Spark: stays in the task)


def render(rgc: galsim.RealGalaxyCatalog, index: int, cfg: RenderConfig, max_iter: int = 8) -> Rendered | None:
    """Render, centre and normalise one galaxy; ``None`` when nothing is detected at the centre.

    The footprint is detected once on the first drawing (offset 0); the centroid over that fixed
    footprint is then cancelled by the drawing offset, repeated until the residual is below 0.005
    pixel or ``max_iter`` drawings were made (a fixed footprint makes the iteration a smooth
    fixed-point problem; the shift is below a pixel, well inside the ``dilate_pix`` margin). The
    returned image is always the one drawn with the returned offset.
    """
    profile = final_profile(rgc, index, cfg)
    sigma = float(np.sqrt(profile.noise.getVariance()))
    centre = (cfg.stamp_size - 1) / 2.0
    offset = np.zeros(2)
    image = draw(profile, cfg)
    labels, central, _ = footprint(image, sigma, cfg.detect_nsigma)
    if central == 0:
        return None
    mask = ndimage.binary_dilation(labels == central, structure=_EIGHT, iterations=cfg.dilate_pix)
    for it in range(max_iter):
        if it:
            image = draw(profile, cfg, offset=tuple(offset))
        cx, cy = centroid(np.where(mask, image, 0.0))
        residual = np.array([cx - centre, cy - centre])
        if np.all(np.abs(residual) < 5e-3) or it == max_iter - 1:
            break
        offset -= residual
    flux = float(image[mask].sum())
    if not flux > 0:
        return None
    border = np.zeros_like(mask)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return Rendered(image=np.where(mask, image, 0.0) / flux, unmasked=image / flux, mask=mask,
                    offset=(float(offset[0]), float(offset[1])), flux_hst=flux,
                    noise_sigma_unit=sigma / flux, touches_border=bool(np.any(mask & border)),
                    profile=profile)


def half_light_radius(image: np.ndarray, pixel_scale: float) -> float:
    """Circular half-light radius (arcsec) about the stamp centre of a unit-flux image."""
    n = image.shape[0]
    c = (n - 1) / 2.0
    ys, xs = np.indices(image.shape)
    r = np.hypot(xs - c, ys - c).ravel()
    order = np.argsort(r, kind="stable")
    cum = np.cumsum(image.ravel()[order])
    k = int(np.searchsorted(cum, 0.5 * cum[-1]))
    return float(r[order][k] * pixel_scale)
