"""A seekable, read-only binary file whose subclasses fetch byte ranges: the one interface astropy
reads FITS tiles through, for counted local reads (:mod:`udfs.survey.coadd_files`) and HTTP(S)
(:mod:`udfs.io.http_range`)."""
from __future__ import annotations

import io


class RangeReader(io.RawIOBase):
    """Seekable read-only file of known ``size`` whose subclasses fetch byte ranges
    (``_read_at(pos, n) -> bytes``, exactly ``n`` bytes): what astropy needs to read FITS tiles."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(base + int(offset), 0)
        return self._pos

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self._pos)
        if n <= 0:
            return 0
        buf[:n] = self._read_at(self._pos, n)
        self._pos += n
        return n

    def _read_at(self, pos: int, n: int) -> bytes:
        raise NotImplementedError
