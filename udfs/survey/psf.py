"""PSF kernels (Gaussian, Moffat, PSFEx) and centroid-preserving FFT convolution.

Kernels are the PSF *sampled* at pixel centres (GalSim ``method='no_pixel'``) because the lensed
images they convolve are already integrated over pixels; they are normalised to unit sum and
centred on the kernel's geometric centre ``((K-1)/2, (K-1)/2)`` for odd and even ``K`` alike.
Convolution is linear (zero padding, never wrap-around); a kernel larger than the stamp is fine.
"""
from __future__ import annotations

import math
from functools import lru_cache

import galsim
import numpy as np
from astropy.io import fits
from scipy import fft as sfft

from udfs.io import storage
from udfs.io.errors import InputError

PSF_FLUX_CAPTURED = 0.999   # kernel radius encloses this fraction of a Moffat's flux
DECAM_PIXEL_SCALE = 0.262   # arcsec; PSFEx models of DECam CCDs are sampled in CCD pixels


class PSFError(InputError):
    """A PSF model, size or file that cannot give a kernel; the message names it."""


def _kernel_size(radius_arcsec: float, pixel_scale: float, size: int | None) -> int:
    return int(size) if size else 2 * int(math.ceil(radius_arcsec / pixel_scale)) + 1


def _check_fwhm(fwhm: float, band: str = "") -> float:
    fwhm = float(fwhm)
    if not (math.isfinite(fwhm) and fwhm > 0):
        where = f" for band {band}" if band else ""
        raise PSFError(f"PSF FWHM{where} must be a positive number of arcsec, got {fwhm}")
    return fwhm


@lru_cache(maxsize=4096)
def gaussian_kernel(fwhm: float, pixel_scale: float, size: int | None = None) -> np.ndarray:
    """Gaussian PSF of ``fwhm`` arcsec on ``pixel_scale`` pixels (default size: +-2 FWHM, i.e.
    4.7 sigma, beyond which 1.6e-5 of the flux lies)."""
    fwhm = _check_fwhm(fwhm)
    k = _kernel_size(2.0 * fwhm, pixel_scale, size)
    return _draw(galsim.Gaussian(fwhm=fwhm), k, pixel_scale)


@lru_cache(maxsize=4096)
def moffat_kernel(fwhm: float, beta: float, pixel_scale: float, size: int | None = None) -> np.ndarray:
    """Moffat PSF (``beta`` > 1) of ``fwhm`` arcsec; default size encloses 99.9% of its flux."""
    fwhm = _check_fwhm(fwhm)
    if not beta > 1:
        raise PSFError(f"Moffat beta must be > 1, got {beta}")
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    radius = alpha * math.sqrt((1.0 - PSF_FLUX_CAPTURED) ** (1.0 / (1.0 - beta)) - 1.0)
    k = _kernel_size(radius, pixel_scale, size)
    return _draw(galsim.Moffat(beta=beta, fwhm=fwhm), k, pixel_scale)


def _draw(profile: galsim.GSObject, k: int, pixel_scale: float) -> np.ndarray:
    arr = profile.drawImage(nx=k, ny=k, scale=pixel_scale, method="no_pixel").array.astype(np.float64)
    arr.setflags(write=False)
    return arr / arr.sum()


def psf_kernel(model: str, fwhm: float, pixel_scale: float, beta: float | None = None) -> np.ndarray:
    """Kernel for ``model`` 'gaussian' or 'moffat' (``beta`` required)."""
    if model == "gaussian":
        return gaussian_kernel(float(fwhm), float(pixel_scale))
    if model == "moffat":
        if beta is None:
            raise PSFError("the Moffat PSF needs beta")
        return moffat_kernel(float(fwhm), float(beta), float(pixel_scale))
    raise PSFError(f"unknown PSF model {model!r}: use 'gaussian', 'moffat' or a PSFEx file")


PSFEX_KEYS = ("polnaxis", "polzero1", "polzero2", "polscal1", "polscal2", "polname1", "polname2",
              "polngrp", "polgrp1", "polgrp2", "poldeg1", "psfnaxis", "psfaxis1", "psfaxis2", "psfaxis3",
              "psf_samp")


def des_psfex(table: fits.BinTableHDU, row: int):
    """GalSim ``DES_PSFEx`` of one row of a Legacy Survey PSFEx table.

    Legacy Survey files keep PSFEx's keywords (POLZERO, POLSCAL, POLDEG, PSF_SAMP, ...) as table
    columns (one row per CCD in the merged per-exposure files); they are moved into a header so
    that GalSim evaluates the polynomial basis.
    """
    import galsim.des

    values = table.data[row]
    header = fits.Header()
    for key in PSFEX_KEYS:
        value = values[key]
        header[key.upper()] = value.item() if hasattr(value, "item") else str(value).strip()
    col = table.columns["psf_mask"]
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name="PSF_MASK", format=col.format, dim=col.dim,
                     array=table.data["psf_mask"][row: row + 1])], header=header)
    return galsim.des.DES_PSFEx(hdu)


@lru_cache(maxsize=64)
def psfex_kernel(uri: str, x: float | None, y: float | None, pixel_scale: float, size: int = 63,
                 psfex_pixel_scale: float = DECAM_PIXEL_SCALE) -> np.ndarray:
    """PSF image of a Legacy Survey PSFEx model (``*-psfex.fits``) at CCD pixel ``(x, y)``
    (``None``: the model's fit centre, POLZERO).

    The model is row 0 of the file (:func:`des_psfex`), resampled from the model's sampling
    (``psf_samp * psfex_pixel_scale`` arcsec) onto ``pixel_scale``.
    """
    try:
        with fits.open(storage.open_input(uri)) as hdul:
            row, model = hdul[1].data[0], des_psfex(hdul[1], 0)
    except (OSError, KeyError, IndexError, TypeError) as exc:  # FileNotFoundError is an OSError
        raise PSFError(f"{uri}: not a readable Legacy Survey PSFEx model ({exc})") from exc
    if x is None or y is None:
        x, y = float(row["polzero1"]), float(row["polzero2"])
    psf = model.getPSF(galsim.PositionD(x, y))  # in CCD pixel units
    return _draw(psf, size, pixel_scale / psfex_pixel_scale)


@lru_cache(maxsize=512)
def _kernel_fft(kernel_bytes: bytes, k: int, shape: tuple[int, int], single: bool = False) -> np.ndarray:
    kernel = np.frombuffer(kernel_bytes, dtype=np.float64).reshape(k, k)
    kf = sfft.rfft2(kernel, s=shape)
    # Place the kernel's geometric centre (K-1)/2 on the origin: integer part by cropping in
    # convolve(), the half-pixel part of even kernels by a phase ramp here.
    frac = (k - 1) / 2.0 - (k - 1) // 2
    if frac:
        fy = sfft.fftfreq(shape[0])[:, None]
        fx = sfft.rfftfreq(shape[1])[None, :]
        kf = kf * np.exp(2j * np.pi * frac * (fx + fy))
    kf = kf.astype(np.complex64) if single else kf
    kf.setflags(write=False)
    return kf


def _padded_shape(n: int, k: int) -> tuple[int, int]:
    return (sfft.next_fast_len(n + k - 1, real=True),) * 2


def convolve_bands(image: np.ndarray, kernels: list[np.ndarray]) -> np.ndarray:
    """Convolve one ``(N, N)`` image with each kernel (one per band): ``(n_bands, N, N)``.

    The image's FFT is taken once on a canvas padded for the largest kernel.
    """
    return convolve_stamps(image[None], [kernels])[0]


def convolve_stamps(images: np.ndarray, kernels: list[list[np.ndarray]], chunk: int = 64,
                    single: bool = False) -> np.ndarray:
    """:func:`convolve_bands` of a batch: ``images (B, N, N)``, ``kernels[s][b]`` -> ``(B, n_bands, N, N)``.

    Stamps are transformed together in chunks of those sharing a padded canvas (each stamp's canvas
    is set by its own largest kernel, so a stamp's result does not depend on its batch). ``single``:
    transforms in float32 (twice as fast; errors ~1e-7 of the peak), the result still float64.
    """
    n_stamp, n = images.shape[0], images.shape[-1]
    n_bands = len(kernels[0]) if n_stamp else 0
    out = np.empty((n_stamp, n_bands, n, n))
    kernels = [[np.ascontiguousarray(kk, dtype=np.float64) for kk in ks] for ks in kernels]
    shapes = [_padded_shape(n, max(kk.shape[0] for kk in ks)) for ks in kernels]
    for shape in sorted(set(shapes)):
        members = np.flatnonzero([sh == shape for sh in shapes])
        for start in range(0, len(members), chunk):
            idx = members[start: start + chunk]
            spec = sfft.rfft2(images[idx].astype(np.float32) if single else images[idx], s=shape)
            prod = np.empty((len(idx), n_bands) + spec.shape[1:], dtype=spec.dtype)
            for j, s in enumerate(idx):
                for b, kernel in enumerate(kernels[s]):
                    prod[j, b] = spec[j] * _kernel_fft(kernel.tobytes(), kernel.shape[0], shape, single)
            conv = sfft.irfft2(prod, s=shape)
            for b in range(n_bands):
                offs = [(kernels[s][b].shape[0] - 1) // 2 for s in idx]
                for j, off in enumerate(offs):
                    out[idx[j], b] = conv[j, b, off: off + n, off: off + n]
    return out


def convolve(images: np.ndarray, kernel: np.ndarray, full: bool = False) -> np.ndarray:
    """Convolve ``(..., N, N)`` images with a ``(K, K)`` kernel; returns the same shape.

    Linear convolution (zero padding to ``N + K - 1``): no wrap-around whatever ``K``. The output
    pixel ``(j, i)`` is centred where the input pixel ``(j, i)`` was (centroids are preserved).
    With ``full=True`` returns the whole ``N + K - 1`` canvas (offset ``(K-1)//2``), which holds
    all of the flux.
    """
    kernel = np.ascontiguousarray(kernel, dtype=np.float64)
    k = kernel.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != k:
        raise ValueError(f"PSF kernel must be square, got {kernel.shape}")
    n = images.shape[-1]
    shape = _padded_shape(n, k)
    kf = _kernel_fft(kernel.tobytes(), k, shape)
    conv = sfft.irfft2(sfft.rfft2(images, s=shape) * kf, s=shape)
    if full:
        return conv[..., : n + k - 1, : n + k - 1]
    off = (k - 1) // 2
    return conv[..., off: off + n, off: off + n]
