"""Coadd files of a brick, read lazily by byte range (local, ``s3://`` or ``http(s)://``).

Files of a brick ``B`` under a base::

    <base>/coadd/<B[:3]>/<B>/legacysurvey-<B>-image-<band>.fits.fz    nanomaggies
    <base>/coadd/<B[:3]>/<B>/legacysurvey-<B>-invvar-<band>.fits.fz   1/nanomaggies^2
    <base>/coadd/<B[:3]>/<B>/legacysurvey-<B>-maskbits.fits.fz        MASKBITS bit plane

(``layout="flat"``: the same names directly under ``<base>``). The coadds are RICE tile-compressed
(100x100 tiles); astropy's ``CompImageHDU.section`` on a lazily opened seekable file decompresses
only the tiles a stamp overlaps, so a stamp costs the FITS headers, the tile table and a few tiles.
Every byte is counted by :class:`CountingFile`; remote read errors are retried with exponential
backoff (bounded), then raised as :class:`RemoteReadError`.
"""
from __future__ import annotations

import time

import numpy as np
from astropy.io import fits

from udfs.io import storage
from udfs.io.http_range import HTTPRangeFile, http_size
from udfs.io.range_reader import RangeReader
from udfs.io.storage import is_http


def brick_file(base: str, brick: str, kind: str, band: str | None = None, layout: str = "nested",
               ext: str = ".fits.fz") -> str:
    """URI of a coadd file; ``kind`` is image, invvar or maskbits (no band), or ccds (ext .fits)."""
    name = f"legacysurvey-{brick}-{kind}" + (f"-{band}" if band else "") + ext
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


class CoaddFile:
    """One coadd file of a brick, opened lazily once; records why it cannot be used."""

    def __init__(self, uri: str, label: str, retries: int, backoff_s: float):
        self.uri, self.label = uri, label
        self.retries, self.backoff_s = retries, backoff_s
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
            self.size = _with_retries(lambda: _file_size(self.uri), self.retries, self.backoff_s)
        except FileNotFoundError:
            self.error = "missing"
            return self.error
        except OSError:
            self.error = "read_error"
            return self.error
        try:
            self._file = CountingFile(self.uri, self.size, self.retries, self.backoff_s)
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


def _with_retries(fn, retries: int, backoff_s: float):
    """``fn()``, retried on OSError (not on FileNotFoundError) with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError:
            if attempt == retries:
                raise
            time.sleep(backoff_s * 2 ** attempt)
