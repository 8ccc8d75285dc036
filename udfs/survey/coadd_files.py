"""Coadd files of a brick, read lazily by byte range (local, ``s3://`` or ``http(s)://``).

Files of a brick ``B`` under a base::

    <base>/coadd/<B[:3]>/<B>/legacysurvey-<B>-image-<band>.fits.fz    nanomaggies
    <base>/coadd/<B[:3]>/<B>/legacysurvey-<B>-invvar-<band>.fits.fz   1/nanomaggies^2
    <base>/coadd/<B[:3]>/<B>/legacysurvey-<B>-maskbits.fits.fz        MASKBITS bit plane

(``layout="flat"``: the same names directly under ``<base>``). The coadds are RICE tile-compressed
(100x100 tiles); astropy's ``CompImageHDU.section`` on a lazily opened seekable file decompresses
only the tiles a stamp overlaps. A brick group costs each file's FITS headers once plus, for the
tiles its stamps overlap, their tile-table rows and compressed bytes, each fetched once per group
(a :class:`CountingFile` keeps what it fetched while the group's files are open, never longer; the
table is read row by row, :class:`_TileTable`): a stamp's tiles are fetched up front
(:meth:`CoaddFile.section`), each run adjacent in the heap (a row of tiles) in one request, and
astropy's reads of them are served from memory.

Every byte is counted by :class:`CountingFile`, and every range a reader asked for is recorded as
its claim (:meth:`CoaddFile.take_claims`), so a group's fetched bytes can be split among the stamps
that used them (:func:`udfs.io.range_reader.split_shared`). Failed reads are retried by the one
policy of remote I/O (:class:`udfs.io.retry.RetryPolicy`: bounded, jittered exponential backoff,
honouring Retry-After; missing files and ignored Ranges are never retried), then raised as
:class:`RemoteReadError`. Each remote request (HEAD, range GET, S3 open or read) holds one of the
machine's ``max_requests`` slots (:func:`udfs.io.request_slots.remote_slot`) while it runs.
"""
from __future__ import annotations

import numpy as np
from astropy.io import fits

from udfs.io import storage
from udfs.io.http_range import HTTPRangeFile, http_size
from udfs.io.range_reader import RangeCache, RangeReader, merge_ranges
from udfs.io.request_slots import remote_slot
from udfs.io.retry import RetryPolicy, TransientError
from udfs.io.storage import is_http, is_s3


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


def _slots(uri: str, max_requests: int | None) -> int | None:
    """The request limit that applies to ``uri``: remote files only."""
    return max_requests if is_http(uri) or is_s3(uri) else None


def _open_raw(uri: str, size: int):
    return HTTPRangeFile(uri, size) if is_http(uri) else storage.open_input(uri)


class CountingFile(RangeReader):
    """Seekable read-only view of a local, S3 or HTTP file that counts the bytes it fetches.

    Each byte is fetched at most once (kept in a :class:`~udfs.io.range_reader.RangeCache` until
    :meth:`close`); ``bytes_read`` / ``n_reads`` count what was fetched and in how many requests.
    ``claims`` lists the ``[start, end)`` ranges asked for (read or prefetched, cached or not) since
    the last :meth:`take_claims`; they cover every byte fetched. A failed fetch is retried by
    ``policy`` on a reopened file; each request holds one of ``max_requests`` machine-wide slots.
    """

    def __init__(self, uri: str, size: int, policy: RetryPolicy = RetryPolicy(retries=0),
                 max_requests: int | None = None):
        super().__init__(size)
        self.uri, self.policy, self.max_requests = uri, policy, _slots(uri, max_requests)
        self.bytes_read = 0
        self.n_reads = 0
        self.claims: list[tuple[int, int]] = []
        self._cache = RangeCache()
        self._raw = None
        self._raw = policy.call(self._open)

    def _open(self):
        with remote_slot(self.max_requests):
            return _open_raw(self.uri, self.size)

    def take_claims(self) -> list[tuple[int, int]]:
        """The ranges asked for since the last call (and forget them)."""
        out, self.claims = self.claims, []
        return out

    def _read_at(self, pos: int, n: int) -> bytes:
        self._fill(pos, pos + n)
        self.claims.append((pos, pos + n))
        return self._cache.get(pos, pos + n)

    def prefetch(self, ranges) -> None:
        """Fetch the uncached parts of ``ranges``, touching ranges in one request; claim them."""
        for a, b in merge_ranges(ranges):
            b = min(b, self.size)
            if b > a:
                self._fill(a, b)
                self.claims.append((a, b))

    def _fill(self, pos: int, end: int) -> None:
        for a, b in self._cache.gaps(pos, end):
            self._cache.put(a, self._fetch(a, b - a))
            self.claims.append((a, b))  # fetched: claimed even if a later gap fails

    def _fetch(self, pos: int, n: int) -> bytes:
        def attempt() -> bytes:
            if self._raw is None:
                self._raw = self._open()
            with remote_slot(self.max_requests):
                self._raw.seek(pos)
                data = self._raw.read(n)
            if len(data) != n:
                raise TransientError(f"short read: {len(data)} of {n} bytes at {pos}")
            return data

        try:
            data = self.policy.call(attempt, reset=self._drop_handle)
        except OSError as exc:
            raise RemoteReadError(f"{self.uri}: {exc} (after {getattr(exc, 'attempts', 1)} attempts)") from exc
        self.bytes_read += n
        self.n_reads += 1
        return data

    def _drop_handle(self) -> None:
        """Close a handle that failed; the next attempt reopens the file."""
        raw, self._raw = self._raw, None
        if raw is not None:
            try:
                raw.close()
            except Exception:  # noqa: BLE001 - the handle is being replaced anyway
                pass

    def close(self) -> None:
        try:
            self._drop_handle()
        finally:
            super().close()


class CoaddFile:
    """One coadd file of a brick, opened lazily once; records why it cannot be used.

    The bytes read on opening (headers, and for a tile-compressed image its tile table) are claimed
    again by every later :meth:`open`, so all users of the file share them."""

    def __init__(self, uri: str, label: str, policy: RetryPolicy, max_requests: int | None = None):
        self.uri, self.label = uri, label
        self.policy, self.max_requests = policy, _slots(uri, max_requests)
        self.size = 0
        self.error: str | None = None
        self.hdu = None
        self._file = None
        self._hdul = None
        self._opened = False
        self._open_claims: list[tuple[int, int]] = []
        self._tiles = None

    @property
    def bytes_read(self) -> int:
        return self._file.bytes_read if self._file is not None else 0

    @property
    def n_reads(self) -> int:
        return self._file.n_reads if self._file is not None else 0

    def take_claims(self) -> list[tuple[int, int]]:
        """Byte ranges used since the last call (see :meth:`CountingFile.take_claims`)."""
        return self._file.take_claims() if self._file is not None else []

    def open(self) -> str | None:
        """Open if not yet done; return None or ``"missing"``, ``"unreadable"``, ``"read_error"``."""
        if not self._opened:
            self._opened = True
            self.error = self._open_first()
            self._open_claims = self.take_claims()
        if self._file is not None:
            self._file.claims.extend(self._open_claims)
        return self.error

    def _head(self) -> int:
        with remote_slot(self.max_requests):
            return _file_size(self.uri)

    def _open_first(self) -> str | None:
        try:
            self.size = self.policy.call(self._head)
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "read_error"
        try:
            self._file = CountingFile(self.uri, self.size, self.policy, self.max_requests)
        except OSError:
            return "read_error"
        try:
            self._hdul = fits.open(self._file, lazy_load_hdus=True, memmap=False)
            for hdu in self._hdul:
                if hdu.is_image and hdu.header.get("NAXIS") == 2:
                    self.hdu = hdu
                    break
            if self.hdu is None:
                return "unreadable"
            if isinstance(self.hdu, fits.CompImageHDU):
                self._tiles = _TileTable.load(self.hdu, self._file)
        except RemoteReadError:
            return "read_error"
        except Exception:  # noqa: BLE001 - any parse failure of a corrupt file is "unreadable"
            return "unreadable"
        return None

    def section(self, y0: int, x0: int, n: int) -> np.ndarray:
        """Pixels ``[y0:y0+n, x0:x0+n]``; for a tile-compressed image its tiles are fetched first,
        each row of tiles (adjacent in the heap) in one request."""
        if self._tiles is not None:
            self._file.prefetch(self._tiles.ranges(y0, x0, n))
        return np.asarray(self.hdu.section[y0:y0 + n, x0:x0 + n])

    def close(self) -> None:
        for obj in (self._hdul, self._file):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - closing a broken remote handle
                    pass


class _TileTable:
    """The tile table of a 2-D tile-compressed image, read row by row as stamps need them.

    astropy's ``CompImageHDU.section`` takes descriptors (heap length, offset) and ZSCALE/ZZERO of
    the tiles it decompresses from ``hdu.compressed_data``; here that table is a full-size array
    of zeros (read from nowhere) whose rows are filled from the file only for the tiles a stamp
    overlaps, so a stamp costs its tiles' table rows (``NAXIS1`` bytes each) instead of the whole
    table. The tiles' heap ranges are then known before astropy asks for them."""

    def __init__(self, hdu, file: CountingFile):
        from astropy.io.fits.hdu.compressed._tiled_compression import _column_dtype

        hdr = hdu._header
        self.tile = (int(hdr["ZTILE2"]), int(hdr["ZTILE1"]))
        self.ntx = -(-int(hdr["ZNAXIS1"]) // self.tile[1])
        self.nrows, self.rowsize = int(hdr["NAXIS2"]), int(hdr["NAXIS1"])
        self.offset, self.heap, self.file = hdu._data_offset, hdu._data_offset + hdu._theap, file
        raw = np.zeros(self.nrows, dtype=hdu.columns.dtype)
        read = hdu._get_raw_data
        hdu._get_raw_data = lambda shape, code, offset: raw if offset == self.offset else read(shape, code, offset)
        try:
            self.table = hdu.compressed_data
        finally:
            del hdu._get_raw_data
        if raw.dtype.itemsize != self.rowsize or not np.shares_memory(self.table, raw):
            raise ValueError("tile table layout not understood")
        self._bytes = raw.view(np.uint8)
        self._rows = raw.view(raw.dtype.newbyteorder(">"))  # the file's bytes, read directly
        self.itemsize = {c: _column_dtype(self.table._coldefs, c).itemsize
                         for c in ("COMPRESSED_DATA", "GZIP_COMPRESSED_DATA") if c in raw.dtype.names}

    @classmethod
    def load(cls, hdu, file: CountingFile) -> "_TileTable | None":
        """The sparse table, or None (with astropy's whole table loaded) for an unusual layout."""
        if hdu._header.get("ZNAXIS") == 2 and "ZTILE1" in hdu._header and "ZTILE2" in hdu._header:
            try:
                return cls(hdu, file)
            except (KeyError, ValueError, TypeError, AttributeError):
                if "compressed_data" in hdu.__dict__:
                    del hdu.compressed_data
        hdu.compressed_data  # noqa: B018 - astropy reads the whole table
        return None

    def ranges(self, y0: int, x0: int, n: int) -> list[tuple[int, int]]:
        """Fill (and claim) the table rows of the tiles an ``n`` x ``n`` section at ``(y0, x0)``
        overlaps; return those tiles' byte ranges in the file."""
        (ty, tx), ntx = self.tile, self.ntx
        rows = [j * ntx + i for j in range(y0 // ty, (y0 + n - 1) // ty + 1)
                for i in range(x0 // tx, (x0 + n - 1) // tx + 1)]
        rows = [r for r in rows if 0 <= r < self.nrows]
        for a, b in merge_ranges((r, r + 1) for r in rows):
            self.file.seek(self.offset + a * self.rowsize)
            self._bytes[a * self.rowsize:b * self.rowsize] = np.frombuffer(
                self.file.read((b - a) * self.rowsize), np.uint8)
        for name in self._rows.dtype.names:  # astropy must see the rows just filled
            if not np.array_equal(np.asarray(self.table[name])[rows], self._rows[name][rows]):
                raise RuntimeError(f"tile table column {name} is not a view of the rows read")
        out = []
        for r in rows:
            name = "COMPRESSED_DATA"
            if self._rows[name][r][0] == 0 and "GZIP_COMPRESSED_DATA" in self.itemsize:
                name = "GZIP_COMPRESSED_DATA"
            length, start = (int(v) for v in self._rows[name][r])
            out.append((self.heap + start, self.heap + start + length * self.itemsize[name]))
        return out

