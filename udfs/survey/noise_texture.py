"""The coadd's noise texture: the pixel-to-pixel correlation of its noise, measured and redrawn.

A Legacy Survey coadd is each CCD resampled (Lanczos-3) onto the brick grid, so its noise is
correlated between neighbouring pixels; the CCD noise before resampling is white.

Conventions (once, for every function here):

- ``image`` in nanomaggies, ``invvar`` = 1/variance per pixel in 1/nanomaggies^2 (0: no data);
  ``maskbits`` the MASKBITS plane (0: clean). Arrays are ``(ny, nx)``, indexed ``[y, x]``.
- The *whitened residual* is ``r = (image * sqrt(invvar)) - b``, where ``b`` is its local
  background: the mean of the source-free pixels in a ``background_box`` square around each pixel
  (``None``: one sigma-clipped mean over the mask). The local background removes the halos of
  bright galaxies and sky residuals, which otherwise pass for correlated noise.
- The *correlation* at lag ``(dy, dx)`` is ``rho[dy, dx] = C(dy, dx) / C(0, 0)`` with
  ``C(d) = mean over pixel pairs (p, p + d), both in the mask, of r[p] * r[p + d]``. It is
  returned as a ``(2R+1, 2R+1)`` array whose centre ``[R, R]`` is lag 0 (value 1) and whose element
  ``[R + dy, R + dx]`` is lag ``(dy, dx)``; ``rho[R+dy, R+dx] == rho[R-dy, R-dx]``.
- Subtracting a ``B x B`` box mean lowers every covariance at small lags by about
  ``C(0) * S / B^2``, ``S`` the sum of rho over all lags; :func:`measure_correlation` undoes this
  to first order with ``S`` from its own window (lags beyond it are left out: for the real z
  coadd's texture and ``B = 7`` the result stays ~0.01 low; white noise measures 0).
- The *neighbour correlation* is the mean of the 4 nearest-neighbour lags: the figure quoted for
  coadds (issues 11, 15).
- A *kernel* ``k`` (odd ``K x K``, ``sum k^2 = 1``) turns white unit noise ``w`` into noise of the
  texture: ``n = w (*) k`` has unit variance and autocorrelation ``sum_p k[p] k[p + d] = rho[d]``.
  :func:`correlated_noise` draws ``sigma * (w (*) k)`` with ``sigma = 1/sqrt(invvar)`` per pixel,
  so the variance map keeps its meaning.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from scipy import ndimage, optimize, signal

from udfs.io import storage
from udfs.io.errors import InputError

BACKGROUND_BOX = 7     # px: local-background box; larger boxes let galaxy halos in (real z coadd)
MIN_PIXELS = 50        # fewer usable pixels than this cannot give a correlation


class NoiseTextureError(InputError):
    """An image, weight map, mask or correlation that cannot give a noise texture; names it."""


def _check_same_shape(**arrays) -> tuple[int, int]:
    shapes = {name: np.shape(a) for name, a in arrays.items() if a is not None}
    first = next(iter(shapes.values()))
    if len(first) != 2:
        raise NoiseTextureError(f"noise texture needs 2-D arrays, got {shapes}")
    if any(s != first for s in shapes.values()):
        raise NoiseTextureError(f"noise texture: mismatched shapes {shapes}")
    return first


def _usable(invvar: np.ndarray, maskbits: np.ndarray | None) -> np.ndarray:
    good = np.isfinite(invvar) & (invvar > 0)
    if maskbits is not None:
        good &= np.asarray(maskbits) == 0
    return good


def _whiten(image: np.ndarray, invvar: np.ndarray, good: np.ndarray) -> np.ndarray:
    ivar = np.where(good, invvar, 0.0)
    return np.where(good, np.nan_to_num(image) * np.sqrt(ivar), 0.0)


def _local_background(s: np.ndarray, mask: np.ndarray, box: int | None) -> np.ndarray | float:
    """Mean of the mask pixels of ``s`` in a ``box`` square around each pixel (None: clipped mean)."""
    if box is None:
        return float(sigma_clipped_stats(s[mask], sigma=3.0, maxiters=5)[0])
    w = mask.astype(float)
    num = ndimage.uniform_filter(s * w, int(box), mode="constant")
    den = ndimage.uniform_filter(w, int(box), mode="constant")
    return np.where(den > 1e-9, num / np.maximum(den, 1e-9), 0.0)


def source_free_mask(image, invvar, maskbits=None, *, nsigma: float = 3.0, grow: int = 2,
                     background_box: int | None = BACKGROUND_BOX, max_iter: int = 10) -> np.ndarray:
    """Pixels usable for noise measurement: data (invvar > 0), clean maskbits, away from sources.

    Iterates: whiten, subtract the local background of the current mask, sigma-clip the residual
    (astropy) for its centre and robust std, flag pixels above ``nsigma`` std, drop them and
    every pixel within ``grow`` px (square dilation), until the mask stops changing.
    """
    image, invvar = np.asarray(image, float), np.asarray(invvar, float)
    _check_same_shape(image=image, invvar=invvar, maskbits=maskbits)
    good = _usable(invvar, maskbits)
    if good.sum() < MIN_PIXELS:
        raise NoiseTextureError(f"noise texture: only {int(good.sum())} pixels have invvar > 0 "
                                f"and clean maskbits (need {MIN_PIXELS})")
    s = _whiten(image, invvar, good)
    mask = good.copy()
    struct = np.ones((3, 3), bool)
    for _ in range(max_iter):
        r = s - _local_background(s, mask, background_box)
        _, centre, std = sigma_clipped_stats(r[mask], sigma=nsigma, maxiters=10)
        bright = good & (r - centre > nsigma * std)
        near = ndimage.binary_dilation(bright, struct, iterations=grow) if grow > 0 else bright
        new = good & ~near
        if new.sum() < MIN_PIXELS:
            raise NoiseTextureError(f"noise texture: no source-free pixels left ({int(new.sum())} "
                                    f"after masking sources at {nsigma} sigma)")
        if np.array_equal(new, mask):
            break
        mask = new
    return mask


def _lag_covariance(r: np.ndarray, mask: np.ndarray, radius: int) -> np.ndarray:
    """C[R+dy, R+dx] = mean of r[p] r[p+d] over pairs with both pixels in the mask."""
    ny, nx = r.shape
    cov = np.zeros((2 * radius + 1, 2 * radius + 1))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            y0, y1, x0, x1 = max(0, -dy), ny - max(0, dy), max(0, -dx), nx - max(0, dx)
            both = mask[y0:y1, x0:x1] & mask[y0 + dy:y1 + dy, x0 + dx:x1 + dx]
            if not both.any():
                raise NoiseTextureError(f"noise texture: no mask pixel pairs at lag ({dy}, {dx})")
            a, b = r[y0:y1, x0:x1], r[y0 + dy:y1 + dy, x0 + dx:x1 + dx]
            cov[dy + radius, dx + radius] = np.mean(a[both] * b[both])
    return 0.5 * (cov + cov[::-1, ::-1])


def measure_correlation(image, invvar, mask, *, radius: int = 1,
                        background_box: int | None = BACKGROUND_BOX) -> np.ndarray:
    """Normalised noise autocorrelation rho, ``(2 radius + 1)^2``, centre 1 (module docstring)."""
    image, invvar, mask = np.asarray(image, float), np.asarray(invvar, float), np.asarray(mask)
    ny, nx = _check_same_shape(image=image, invvar=invvar, mask=mask)
    radius = int(radius)
    if radius < 1 or 2 * radius + 1 > min(ny, nx):
        raise NoiseTextureError(f"noise texture: radius {radius} must be >= 1 and fit the {ny}x{nx} image")
    mask = mask.astype(bool) & _usable(invvar, None)
    if mask.sum() < MIN_PIXELS:
        raise NoiseTextureError(f"noise texture: only {int(mask.sum())} usable pixels in the mask "
                                f"(need {MIN_PIXELS})")
    s = _whiten(image, invvar, mask)
    r = np.where(mask, s - _local_background(s, mask, background_box), 0.0)
    wide = radius                                        # lags beyond: their S is left out
    cov = _lag_covariance(r, mask, wide)
    if not cov[wide, wide] > 0:
        raise NoiseTextureError("noise texture: the masked residual has zero variance")
    rho = measured = cov / cov[wide, wide]
    if background_box is not None:                       # first-order box-subtraction bias
        n_box = ndimage.uniform_filter(mask.astype(float), int(background_box), mode="constant")
        inv_n = float(np.mean(1.0 / (n_box[mask] * float(background_box) ** 2)))
        for _ in range(5):                               # S from the corrected rho: fixed point
            eps = min(rho.sum() * inv_n, 0.5)
            rho = measured * (1.0 - eps) + eps
            rho[wide, wide] = 1.0
    c = wide - radius
    return rho[c:c + 2 * radius + 1, c:c + 2 * radius + 1].copy()


def neighbour_correlation(rho) -> float:
    """Mean of the 4 nearest-neighbour lags of ``rho`` (centre at ``[R, R]``)."""
    rho = np.asarray(rho, float)
    if rho.ndim != 2 or rho.shape[0] != rho.shape[1] or rho.shape[0] % 2 == 0 or rho.shape[0] < 3:
        raise NoiseTextureError(f"noise texture: rho must be square, odd and >= 3x3, got {rho.shape}")
    c = rho.shape[0] // 2
    return float((rho[c - 1, c] + rho[c + 1, c] + rho[c, c - 1] + rho[c, c + 1]) / 4.0)


def _autocorr(k: np.ndarray, radius: int) -> np.ndarray:
    full = signal.correlate2d(k, k, mode="full")
    c = full.shape[0] // 2
    return full[c - radius:c + radius + 1, c - radius:c + radius + 1]


def _fft_start(rho: np.ndarray, size: int, grid: int = 32) -> np.ndarray:
    """sqrt of rho's power spectrum (negatives clipped) back in real space, cropped to size."""
    r = rho.shape[0] // 2
    padded = np.zeros((grid, grid))
    for dy in range(-r, r + 1):
        padded[dy % grid, np.arange(-r, r + 1) % grid] = rho[dy + r]
    amp = np.sqrt(np.clip(np.fft.fft2(padded).real, 0.0, None))
    k = np.fft.fftshift(np.fft.ifft2(amp).real)
    c, h = grid // 2, size // 2
    return k[c - h:c + h + 1, c - h:c + h + 1]


def correlation_kernel(rho, *, size: int | None = None) -> np.ndarray:
    """Small real kernel k (``size``: odd, default rho's size) with autocorrelation rho, sum k^2 = 1.

    Starts from the FFT square root of rho's power spectrum, then fits k by least squares so that
    its autocorrelation equals rho at every lag of rho's window (lags beyond it are left free but
    weakly pulled to 0), and renormalises to unit squared sum.
    """
    rho = np.asarray(rho, float)
    neighbour_correlation(rho)                            # validates the shape
    c = rho.shape[0] // 2
    if not (np.allclose(rho, rho[::-1, ::-1], atol=1e-9) and abs(rho[c, c] - 1.0) < 1e-9):
        raise NoiseTextureError("noise texture: rho must be point-symmetric with centre 1")
    size = int(size or rho.shape[0])
    if size % 2 == 0 or size < 1:
        raise NoiseTextureError(f"noise texture: kernel size must be odd, got {size}")
    r, reach = rho.shape[0] // 2, size - 1
    target = np.zeros((2 * reach + 1, 2 * reach + 1))
    keep = min(r, reach)
    target[reach - keep:reach + keep + 1, reach - keep:reach + keep + 1] = rho[r - keep:r + keep + 1,
                                                                               r - keep:r + keep + 1]
    weight = np.full_like(target, 0.05)
    weight[reach - keep:reach + keep + 1, reach - keep:reach + keep + 1] = 1.0

    def resid(p):
        return ((_autocorr(p.reshape(size, size), reach) - target) * weight).ravel()

    k0 = _fft_start(rho, size)
    k = optimize.least_squares(resid, k0.ravel(), xtol=1e-12, ftol=1e-12).x.reshape(size, size)
    return k / np.sqrt(np.sum(k * k))


def correlated_noise(shape, sigma, kernel, rng) -> np.ndarray:
    """Gaussian noise of per-pixel std ``sigma`` (scalar or ``shape`` array) with kernel's texture.

    White N(0, 1) is drawn on a grid padded by the kernel's half-size, convolved ("valid": every
    output pixel sees a full kernel, no wrap-around), then scaled by ``sigma``. ``rng`` is a
    ``numpy.random.Generator`` or a seed; the same seed gives the same array.
    """
    shape = tuple(int(n) for n in shape)
    kernel = np.asarray(kernel, float)
    if len(shape) != 2 or min(shape) < 1:
        raise NoiseTextureError(f"noise texture: shape must be 2 positive ints, got {shape}")
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0 or not np.any(kernel):
        raise NoiseTextureError(f"noise texture: kernel must be a non-zero odd 2-D array, got {kernel.shape}")
    sigma = np.asarray(sigma, float)
    if sigma.ndim and sigma.shape != shape:
        raise NoiseTextureError(f"noise texture: sigma shape {sigma.shape} != image shape {shape}")
    if not np.all(np.isfinite(sigma) & (sigma >= 0)):
        raise NoiseTextureError("noise texture: sigma must be finite and >= 0")
    kernel = kernel / np.sqrt(np.sum(kernel * kernel))
    py, px = kernel.shape[0] // 2, kernel.shape[1] // 2
    white = np.random.default_rng(rng).standard_normal((shape[0] + 2 * py, shape[1] + 2 * px))
    return signal.fftconvolve(white, kernel, mode="valid") * sigma


@dataclass(frozen=True)
class NoiseTexture:
    """The measured texture of one coadd: rho, its neighbour figure, pixels used, the kernel."""

    rho: np.ndarray
    neighbour: float
    n_pixels: int
    kernel: np.ndarray

    def as_dict(self) -> dict:
        """JSON-serialisable (FITS headers, Parquet rows): nested lists of floats."""
        return {"rho": np.asarray(self.rho, float).round(6).tolist(),
                "neighbour": round(float(self.neighbour), 6), "n_pixels": int(self.n_pixels),
                "kernel": np.asarray(self.kernel, float).round(6).tolist()}


def _as_array(data) -> np.ndarray | None:
    """An array, or the first HDU with data of a FITS file (local path, s3:// or any storage URI)."""
    if data is None or isinstance(data, np.ndarray):
        return data
    if isinstance(data, (str, Path)):
        uri = str(data)
        try:
            with storage.open_input(uri) as f, fits.open(f) as hdul:
                hdu = next((h for h in hdul if h.data is not None), None)
                if hdu is None:
                    raise NoiseTextureError(f"{uri}: no image HDU")
                return np.asarray(hdu.data, float)
        except (FileNotFoundError, OSError) as exc:
            raise NoiseTextureError(f"{uri}: cannot read ({exc})") from exc
    return np.asarray(data, float)


def texture_of_coadd(image_uri_or_array, invvar, maskbits=None, radius: int = 1) -> NoiseTexture:
    """Source-free mask, correlation, neighbour figure and kernel of one coadd (arrays or FITS URIs)."""
    image, ivar, bits = (_as_array(x) for x in (image_uri_or_array, invvar, maskbits))
    mask = source_free_mask(image, ivar, bits)
    rho = measure_correlation(image, ivar, mask, radius=radius)
    return NoiseTexture(rho=rho, neighbour=neighbour_correlation(rho), n_pixels=int(mask.sum()),
                        kernel=correlation_kernel(rho))


MIN_STAMP_PIXELS = 500  # fewer source-free pixels in a stamp: its rho error exceeds ~0.05


def cutout_texture(image, invvar, maskbits=None,
                   min_pixels: int = MIN_STAMP_PIXELS) -> tuple[np.ndarray, np.ndarray, str]:
    """One band of a cutout: ``(rho 3x3, kernel 3x3, noise_source)`` with ``noise_source``
    ``measured:<n> px``. Where no texture can be measured (fewer than ``min_pixels``
    source-free pixels, e.g. a stamp filled by its galaxy) rho is NaN, the kernel the identity
    (white) and ``noise_source`` says why: ``white:<reason>`` (stage 4 then lends such stamps
    the median texture of their brick's measured stamps, :func:`brick_median_texture`)."""
    white = np.zeros((3, 3))
    white[1, 1] = 1.0
    try:
        image, invvar = np.asarray(image, float), np.asarray(invvar, float)
        mask = source_free_mask(image, invvar, maskbits)
        if mask.sum() < min_pixels:
            raise NoiseTextureError(f"only {int(mask.sum())} source-free pixels (need {min_pixels})")
        rho = measure_correlation(image, invvar, mask)
    except NoiseTextureError as exc:
        return np.full((3, 3), np.nan), white, f"white:{str(exc).removeprefix('noise texture: ')}"
    return rho, correlation_kernel(rho), f"measured:{int(mask.sum())} px"


def brick_median_texture(rhos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """Median rho of a brick's measured stamps (NaN-free ones) and its kernel; None if there are none."""
    good = [r for r in rhos if np.isfinite(r).all()]
    if not good:
        return None
    rho = np.median(np.stack(good), axis=0)
    rho = 0.5 * (rho + rho[::-1, ::-1])
    rho[rho.shape[0] // 2, rho.shape[1] // 2] = 1.0
    return rho, correlation_kernel(rho)
