"""The PSF each cutout's arcs are convolved with, per band, and how it was made (stage 4).

Choice, per target and band (``PSFConfig.model``):

- ``survey`` (the default): the inverse-variance stack of the PSFEx models of the CCDs covering
  the target (:mod:`udfs.survey.psf_stack`), from the brick's CCD table (the per-brick
  ``legacysurvey-<brick>-ccds.fits`` beside the coadd files, or a release ``survey-ccds`` table)
  and the ``<calib>/psfex`` files. Where that cannot be made (no table, no covering CCD, a PSFEx
  file missing or unreadable) it falls back to
- a Moffat of FWHM = the target's PSFSIZE (``psf_fwhm_<b>``, arcsec) and ``beta`` = the covering
  CCDs' ``moffat_beta`` (weights 1/sig1^2) where the CCD table has that column, else the
  configured ``moffat_beta`` (default 3.1: the median of Moffat fits to the 14 real DECam PSFEx
  models of the sample data, which range 2.65-4.02; tests/test_target_psf.py refits them);
- ``moffat``: that Moffat for every target; ``gaussian``: a Gaussian of the PSFSIZE, only when
  configured so (never a fallback: its wings are 1e-5 where DECam PSFs have 3-13%).

``psf_source`` strings, one per band: ``psfex_stack:<n> ccds``;
``moffat:fwhm=psfsize,beta=<b> (<from>); no stack: <why>``; ``moffat:fwhm=psfsize,beta=<b>
(<from>); configured``; ``gaussian:fwhm=psfsize (configured)``. Kernels: sampled at coadd pixel
centres, odd ``K``, centred, unit sum, cropped to ``flux_fraction`` of the flux; a row's bands
share the largest ``K`` (smaller kernels zero-padded), stored float32 ``(band, K, K)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from udfs.config.checker import ConfigError
from udfs.io import storage
from udfs.survey.bricks import PIXSCALE_ARCSEC
from udfs.survey.psf import gaussian_kernel, moffat_kernel
from udfs.survey.psf_stack import FileCache, PSFStackError, covering_ccds, crop_to_fraction, psf_at_target

PSF_MODELS = ("survey", "moffat", "gaussian")
DEFAULT_MOFFAT_BETA = 3.1


@dataclass(frozen=True)
class PSFConfig:
    """How stage 4 makes each target's PSF (``jobs.make_cutouts`` flags)."""

    model: str = "survey"              # --psf-model: survey | moffat | gaussian
    ccds: str | None = None            # --ccds: a survey-ccds table; None: the brick's -ccds.fits
    calib_base: str | None = None      # --calib-base: folder holding psfex/; None: <coadd base>/calib
    images_base: str | None = None     # --images-base: CCD images (header WCS); None: <calib>/../images if present
    moffat_beta: float = DEFAULT_MOFFAT_BETA
    flux_fraction: float = 0.995       # the kernel holds this fraction of the PSF's flux

    def validate(self) -> "PSFConfig":
        if self.model not in PSF_MODELS:
            raise ConfigError(f"--psf-model: {self.model!r} is not one of {', '.join(PSF_MODELS)}")
        if not self.moffat_beta > 1:
            raise ConfigError(f"--moffat-beta: {self.moffat_beta!r} must be > 1")
        if not 0.9 <= self.flux_fraction < 1:
            raise ConfigError(f"--psf-flux-fraction: {self.flux_fraction!r} is not in [0.9, 1)")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def source_method(source: str) -> str:
    """The method of a recorded ``psf_source`` (``psfex_stack``, ``moffat (fallback)``, ``moffat
    (configured)``, ``gaussian``, ``psfex_file``) or ``noise_source`` (``measured``, ``brick_median``,
    ``white``), for counting."""
    head = str(source).split(":", 1)[0]
    if head == "moffat":
        return "moffat (configured)" if str(source).endswith("; configured") else "moffat (fallback)"
    return head


def pad_to(kernel: np.ndarray, k: int) -> np.ndarray:
    """An odd kernel zero-padded (centred) to ``k x k``."""
    p = (k - kernel.shape[0]) // 2
    return np.pad(kernel, p) if p else kernel


class BrickPSF:
    """PSFs of the targets of one brick; CCD table, image headers and PSFEx models read once."""

    def __init__(self, cfg: PSFConfig, ccds_uri: str, calib_root: str,
                 pixel_scale: float = PIXSCALE_ARCSEC):
        self.cfg, self.ccds_uri, self.calib_root, self.pixel_scale = cfg, ccds_uri, calib_root, pixel_scale
        self.cache = FileCache()
        self._table, self._table_error = None, None
        images = cfg.images_base
        if images is None:
            guess = storage.join(storage.parent(calib_root), "images")
            images = guess if storage.exists(guess) else None
        self.images_root = images

    def _ccds(self):
        if self._table is None and self._table_error is None:
            try:
                self._table = self.cache.table(self.ccds_uri)
            except PSFStackError as exc:
                self._table_error = str(exc) if storage.exists(self.ccds_uri) else f"no CCD table {self.ccds_uri}"
        if self._table_error:
            raise PSFStackError(self._table_error)
        return self._table

    def _moffat(self, ra: float, dec: float, band: str, fwhm: float, why: str) -> tuple[np.ndarray, str]:
        beta, origin = self.cfg.moffat_beta, "default"
        try:
            table = self._ccds()
            if "moffat_beta" in table.colnames:
                rows = covering_ccds(table, ra, dec, band, self.images_root, self.pixel_scale, self.cache)
                good = [(float(r["moffat_beta"]), 1.0 / float(r["sig1"]) ** 2) for r in rows
                        if np.isfinite(r["moffat_beta"]) and r["moffat_beta"] > 1 and r["sig1"] > 0]
                if good:
                    beta = float(np.average([b for b, _ in good], weights=[w for _, w in good]))
                    origin = f"ccds table, {len(good)} ccds"
        except PSFStackError:
            pass
        kernel = crop_to_fraction(moffat_kernel(fwhm, beta, self.pixel_scale), self.cfg.flux_fraction)
        tail = f"; no stack: {why}" if why else ""
        return kernel, f"moffat:fwhm=psfsize,beta={beta:.2f} ({origin}){tail}"

    def band_psf(self, ra: float, dec: float, band: str, fwhm: float) -> tuple[np.ndarray, str]:
        """One band's kernel (float64, odd, unit sum) and its ``psf_source``."""
        model = self.cfg.model
        if model == "gaussian":
            return gaussian_kernel(float(fwhm), self.pixel_scale), "gaussian:fwhm=psfsize (configured)"
        if model == "moffat":
            kernel, source = self._moffat(ra, dec, band, fwhm, "")
            return kernel, source + "; configured"
        try:
            kernel, source, _ = psf_at_target(self._ccds(), self.calib_root, ra, dec, band, self.pixel_scale,
                                              self.cfg.flux_fraction, self.images_root, self.cache)
            return kernel.astype(np.float64), source
        except PSFStackError as exc:
            return self._moffat(ra, dec, band, fwhm, str(exc))

    def at(self, ra: float, dec: float, bands: str, fwhms: dict) -> tuple[np.ndarray, list[str]]:
        """``(kernels float32 (n_bands, K, K), psf_source per band)`` at one target."""
        made = [self.band_psf(ra, dec, b, float(fwhms[b])) for b in bands]
        k = max(kern.shape[0] for kern, _ in made)
        stack = np.stack([pad_to(kern, k) for kern, _ in made]).astype(np.float32)
        stack /= stack.sum(axis=(1, 2), dtype=np.float64)[:, None, None].astype(np.float32)
        return stack, [src for _, src in made]

    def files_read(self) -> list[dict]:
        return list(self.cache.log)
