"""Cut per-target stamps out of Legacy Survey coadd bricks, reading only the tiles they need.

Files of a brick ``B`` under a base (local folder, ``s3://`` or ``http(s)://``)::

    <base>/coadd/<B[:3]>/<B>/legacysurvey-<B>-image-<band>.fits.fz    nanomaggies
    <base>/coadd/<B[:3]>/<B>/legacysurvey-<B>-invvar-<band>.fits.fz   1/nanomaggies^2
    <base>/coadd/<B[:3]>/<B>/legacysurvey-<B>-maskbits.fits.fz        MASKBITS bit plane

(``layout="flat"``: the same names directly under ``<base>``). The coadds are RICE tile-compressed
(100x100 tiles); astropy's ``CompImageHDU.section`` on a lazily opened seekable file decompresses
only the tiles a stamp overlaps, so a stamp costs the FITS headers, the tile table and a few tiles.
Every byte is counted by :class:`CountingFile`; remote read errors are retried with exponential
backoff (bounded), then reported on the row.

Stamp geometry (0-based pixels, x along columns): the target's brick pixel position (x, y) comes from
the brick's TAN WCS; the stamp of N x N pixels starts at ``x0 = floor(x - (N-1)/2 + 0.5)`` so the
target sits at stamp position ``((N-1)/2 + dx_pix, (N-1)/2 + dy_pix)`` with dx, dy in [-0.5, 0.5).

Failures never raise: the row has ``ok=False``, ``fail_reason`` (first failure found, in this
order) and null pixel arrays. Reasons: ``bad_psf:<b>`` (psf_fwhm_<b> missing, non-finite or <= 0),
``missing_band:<b>`` (image or invvar file absent), ``missing_maskbits``, ``unreadable:<file>``
(not a readable FITS image), ``read_error:<file>`` (I/O still failing after the retries),
``wcs_mismatch:<file>``, ``off_image`` (target outside the image), ``stamp_crosses_edge``,
``all_nan:<b>`` (no finite image pixel), ``low_coverage:<b>`` (fewer than ``min_good_frac`` of the
pixels have finite image and invvar > 0). In good rows, pixels with a non-finite value are set to
image 0, invvar 0 (the survey's "no data" convention; the invvar marks them, they never pass as good).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from udfs.io import storage
from udfs.io.http_range import HTTPRangeFile, http_size, is_http
from udfs.io.storage import RangeReader

WCS_KEYS = ("NAXIS1", "NAXIS2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2")


@dataclass(frozen=True)
class CutoutConfig:
    stamp_size: int = 64          # pixels per side
    bands: str = "grz"            # band order of the output arrays
    min_good_frac: float = 0.5    # per band, fraction of pixels with finite image and invvar > 0
    layout: str = "nested"        # "nested": coadd/<bri>/<brick>/..., "flat": files under base
    require_maskbits: bool = True  # False: rows without a maskbits file keep maskbits = null
    retries: int = 4              # extra attempts per failed remote read
    backoff_s: float = 0.25       # first wait; doubles per attempt

    def validate(self) -> "CutoutConfig":
        if not isinstance(self.stamp_size, int) or not 4 <= self.stamp_size <= 1024:
            raise ValueError(f"stamp_size: {self.stamp_size!r} is not an integer in [4, 1024]")
        if not self.bands or any(b not in "griz" for b in self.bands) or len(set(self.bands)) != len(self.bands):
            raise ValueError(f"bands: {self.bands!r} must be distinct letters from 'griz'")
        if not 0.0 <= self.min_good_frac <= 1.0:
            raise ValueError(f"min_good_frac: {self.min_good_frac!r} is not in [0, 1]")
        if self.layout not in ("nested", "flat"):
            raise ValueError(f"layout: {self.layout!r} is not 'nested' or 'flat'")
        if self.retries < 0 or self.backoff_s < 0:
            raise ValueError("retries and backoff_s must be >= 0")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


def brick_file(base: str, brick: str, kind: str, band: str | None = None, layout: str = "nested") -> str:
    """URI of a coadd file; ``kind`` is image, invvar or maskbits (no band)."""
    name = f"legacysurvey-{brick}-{kind}" + (f"-{band}" if band else "") + ".fits.fz"
    if layout == "flat":
        parts = [name]
    else:
        parts = ["coadd", brick[:3], brick, name]
    if is_http(base):
        return "/".join([str(base).rstrip("/")] + parts)
    return storage.join(base, *parts)


class RemoteReadError(OSError):
    """A read that kept failing after every retry."""


def _file_size(uri: str) -> int:
    if is_http(uri):
        return http_size(uri)
    return storage.size(uri)


def _open_raw(uri: str, size: int):
    return HTTPRangeFile(uri, size) if is_http(uri) else storage.open_input(uri)


class CountingFile(RangeReader):
    """Seekable read-only view of a local, S3 or HTTP file that counts the bytes it fetches.

    A failed read is retried ``retries`` times with exponential backoff, reopening the file.
    """

    def __init__(self, uri: str, size: int, retries: int = 0, backoff_s: float = 0.0):
        super().__init__(size)
        self.uri, self.retries, self.backoff_s = uri, retries, backoff_s
        self.bytes_read = 0
        self.n_reads = 0
        self._raw = _open_raw(uri, size)

    def _read_at(self, pos: int, n: int) -> bytes:
        for attempt in range(self.retries + 1):
            try:
                self._raw.seek(pos)
                data = self._raw.read(n)
                if len(data) != n:
                    raise OSError(f"short read: {len(data)} of {n} bytes at {pos}")
                break
            except (OSError, ValueError) as exc:
                if attempt == self.retries:
                    raise RemoteReadError(f"{self.uri}: {exc} (after {attempt + 1} attempts)") from exc
                time.sleep(self.backoff_s * 2 ** attempt)
                try:
                    self._raw.close()
                except Exception:  # noqa: BLE001 - the handle is being replaced anyway
                    pass
                try:
                    self._raw = _open_raw(self.uri, self.size)
                except OSError:
                    pass  # next attempt fails on the stale handle and backs off again
        self.bytes_read += n
        self.n_reads += 1
        return data

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


class _CoaddFile:
    """One coadd file of a brick, opened lazily once; records why it cannot be used."""

    def __init__(self, uri: str, label: str, cfg: CutoutConfig):
        self.uri, self.label, self.cfg = uri, label, cfg
        self.size = 0
        self.error: str | None = None
        self.hdu = None
        self._file = None
        self._hdul = None
        self._opened = False

    @property
    def bytes_read(self) -> int:
        return self._file.bytes_read if self._file is not None else 0

    def open(self) -> str | None:
        """Open if not yet done; return None or ``"missing"``, ``"unreadable"``, ``"read_error"``."""
        if self._opened:
            return self.error
        self._opened = True
        try:
            self.size = _with_retries(lambda: _file_size(self.uri), self.cfg)
        except FileNotFoundError:
            self.error = "missing"
            return self.error
        except OSError:
            self.error = "read_error"
            return self.error
        try:
            self._file = CountingFile(self.uri, self.size, self.cfg.retries, self.cfg.backoff_s)
            self._hdul = fits.open(self._file, lazy_load_hdus=True, memmap=False)
            for hdu in self._hdul:
                if hdu.is_image and hdu.header.get("NAXIS") == 2:
                    self.hdu = hdu
                    break
            if self.hdu is None:
                self.error = "unreadable"
        except RemoteReadError:
            self.error = "read_error"
        except Exception:  # noqa: BLE001 - any parse failure of a corrupt file is "unreadable"
            self.error = "unreadable"
        return self.error

    def section(self, y0: int, x0: int, n: int) -> np.ndarray:
        return np.asarray(self.hdu.section[y0:y0 + n, x0:x0 + n])

    def close(self) -> None:
        for obj in (self._hdul, self._file):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - closing a broken remote handle
                    pass


def _with_retries(fn, cfg: CutoutConfig):
    for attempt in range(cfg.retries + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError:
            if attempt == cfg.retries:
                raise
            time.sleep(cfg.backoff_s * 2 ** attempt)


def stamp_origin(x: float, n: int) -> tuple[int, float]:
    """First pixel of an n-pixel stamp around 0-based position x, and the target's offset dx."""
    x0 = int(math.floor(x - (n - 1) / 2 + 0.5))
    return x0, float(x - (x0 + (n - 1) / 2))


def _fail(row: dict, reason: str) -> dict:
    row.update(ok=False, fail_reason=reason, image=None, invvar=None, maskbits=None)
    return row


def cut_brick(base: str, brick: str, targets: pd.DataFrame, cfg: CutoutConfig) -> pd.DataFrame:
    """Stamps for the targets of one brick (columns target_id, ra, dec, psf_fwhm_<b>, and any
    others, which are carried through). One output row per input row, same order."""
    cfg.validate()
    n = cfg.stamp_size
    files: dict[str, _CoaddFile] = {}

    def get(kind: str, band: str | None = None) -> _CoaddFile:
        label = kind + (f"-{band}" if band else "")
        if label not in files:
            files[label] = _CoaddFile(brick_file(base, brick, kind, band, cfg.layout), label, cfg)
        return files[label]

    rows = []
    try:
        for rec in targets.to_dict("records"):
            before = sum(f.bytes_read for f in files.values())
            row = _cut_one(rec, brick, cfg, get, n)
            row["bytes_read"] = int(sum(f.bytes_read for f in files.values()) - before)
            rows.append(row)
    finally:
        for f in files.values():
            f.close()
    return pd.DataFrame(rows)


def _cut_one(rec: dict, brick: str, cfg: CutoutConfig, get, n: int) -> dict:
    row = dict(rec)
    row.update(brickname=brick, ok=False, fail_reason=None, dx_pix=float("nan"), dy_pix=float("nan"),
               x_pix=float("nan"), y_pix=float("nan"), stamp_x0=-1, stamp_y0=-1, bands=cfg.bands,
               good_frac=float("nan"), has_maskbits=False, file_bytes=0,
               image=None, invvar=None, maskbits=None)
    for b in cfg.bands:
        fwhm = rec.get(f"psf_fwhm_{b}")
        if fwhm is None or not np.isfinite(fwhm) or fwhm <= 0:
            return _fail(row, f"bad_psf:{b}")

    needed = [(get("image", b), get("invvar", b), b) for b in cfg.bands]
    for img_f, iv_f, b in needed:
        for f in (img_f, iv_f):
            err = f.open()
            row["file_bytes"] += f.size
            if err == "missing":
                return _fail(row, f"missing_band:{b}")
            if err:
                return _fail(row, f"{err}:{f.label}")
    mask_f = get("maskbits")
    mask_err = mask_f.open()
    if mask_err == "missing":
        if cfg.require_maskbits:
            return _fail(row, "missing_maskbits")
    elif mask_err:
        return _fail(row, f"{mask_err}:maskbits")
    else:
        row["file_bytes"] += mask_f.size

    ref = needed[0][0].hdu.header
    usable = [f for f, _, _ in needed] + [f for _, f, _ in needed] + ([] if mask_err else [mask_f])
    for f in usable[1:]:
        if any(not np.isclose(f.hdu.header.get(k, np.nan), ref.get(k, np.nan), rtol=1e-10, atol=0)
               for k in WCS_KEYS):
            return _fail(row, f"wcs_mismatch:{f.label}")

    nx, ny = int(ref["NAXIS1"]), int(ref["NAXIS2"])
    x, y = WCS(ref).all_world2pix(float(rec["ra"]), float(rec["dec"]), 0)
    x, y = float(x), float(y)
    if not (np.isfinite(x) and np.isfinite(y)):
        return _fail(row, "off_image")
    x0, dx = stamp_origin(x, n)
    y0, dy = stamp_origin(y, n)
    row.update(x_pix=x, y_pix=y, dx_pix=dx, dy_pix=dy, stamp_x0=x0, stamp_y0=y0)
    if not (-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
        return _fail(row, "off_image")
    if x0 < 0 or y0 < 0 or x0 + n > nx or y0 + n > ny:
        return _fail(row, "stamp_crosses_edge")

    images, invvars, good = [], [], []
    for img_f, iv_f, b in needed:
        try:
            img = img_f.section(y0, x0, n).astype(np.float32)
        except RemoteReadError:
            return _fail(row, f"read_error:{img_f.label}")
        except Exception:  # noqa: BLE001 - corrupt tile data
            return _fail(row, f"unreadable:{img_f.label}")
        try:
            iv = iv_f.section(y0, x0, n).astype(np.float32)
        except RemoteReadError:
            return _fail(row, f"read_error:{iv_f.label}")
        except Exception:  # noqa: BLE001
            return _fail(row, f"unreadable:{iv_f.label}")
        finite = np.isfinite(img)
        if not finite.any():
            return _fail(row, f"all_nan:{b}")
        bad = ~finite | ~np.isfinite(iv) | ~(iv > 0)
        frac = 1.0 - bad.mean()
        if frac < cfg.min_good_frac:
            return _fail(row, f"low_coverage:{b}")
        img[~finite] = 0.0
        iv[bad] = 0.0
        images.append(img)
        invvars.append(iv)
        good.append(frac)

    if not mask_err:
        try:
            row["maskbits"] = mask_f.section(y0, x0, n).astype(np.int32).ravel()
        except RemoteReadError:
            return _fail(row, "read_error:maskbits")
        except Exception:  # noqa: BLE001
            return _fail(row, "unreadable:maskbits")
        row["has_maskbits"] = True
    row.update(ok=True, image=np.stack(images).ravel(), invvar=np.stack(invvars).ravel(),
               good_frac=float(min(good)))
    return row
