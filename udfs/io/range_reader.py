"""A seekable, read-only binary file whose subclasses fetch byte ranges: the one interface astropy
reads FITS tiles through, for counted local reads (:mod:`udfs.survey.coadd_files`) and HTTP(S)
(:mod:`udfs.io.http_range`); plus the bookkeeping of a group of readers sharing one file's bytes
(:class:`RangeCache`, :func:`merge_ranges`, :func:`split_shared`).

Nothing here reads ahead: a read of n bytes fetches exactly the n bytes (less any already cached).
"""
from __future__ import annotations

import bisect
import io

import numpy as np


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


class RangeCache:
    """The bytes of one file fetched so far, as disjoint ``[start, end)`` segments (never evicted:
    it holds at most the bytes its owner fetched, and lives as long as its owner)."""

    def __init__(self):
        self._starts: list[int] = []
        self._data: dict[int, bytes] = {}
        self.nbytes = 0

    def _first(self, pos: int) -> int:
        return max(bisect.bisect_right(self._starts, pos) - 1, 0)

    def gaps(self, pos: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[pos, end)`` not cached yet, in order."""
        out, cur = [], pos
        for s in self._starts[self._first(pos):]:
            if s >= end:
                break
            e = s + len(self._data[s])
            if e <= cur:
                continue
            if s > cur:
                out.append((cur, s))
            cur = e
        if cur < end:
            out.append((cur, end))
        return out

    def put(self, pos: int, data: bytes) -> None:
        """Store bytes fetched at ``pos`` (a gap: they overlap nothing cached)."""
        if data:
            bisect.insort(self._starts, pos)
            self._data[pos] = bytes(data)
            self.nbytes += len(data)

    def get(self, pos: int, end: int) -> bytes:
        """``[pos, end)``, which must be cached."""
        parts = []
        for s in self._starts[self._first(pos):]:
            if s >= end:
                break
            seg = self._data[s]
            if s + len(seg) > pos:
                parts.append(seg[max(pos - s, 0):end - s])
        out = b"".join(parts)
        if len(out) != end - pos:
            raise RuntimeError(f"range [{pos}, {end}) is not cached")
        return out


def merge_ranges(ranges) -> list[tuple[int, int]]:
    """Sorted ``[start, end)`` ranges with overlapping or touching ones merged (no gap is bridged,
    so no byte is added)."""
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def split_shared(claims: list[list[tuple[int, int]]]) -> np.ndarray:
    """Bytes per user when every byte of a file is split among the users who claimed it.

    ``claims[u]`` lists user u's ``[start, end)`` ranges (repeats and overlaps count once). A byte
    claimed by k users costs each 1/k; in integers, each run of bytes claimed by the same k users is
    split ``divmod(length, k)`` with the remainder going to the first users in order. The result
    sums exactly to the size of the union of all claims.
    """
    edges = np.unique(np.array([p for c in claims for r in c for p in r], dtype=np.int64))
    if len(edges) < 2:
        return np.zeros(len(claims), dtype=np.int64)
    cover = np.zeros((len(claims), len(edges) - 1), dtype=bool)
    for u, c in enumerate(claims):
        for a, b in c:
            if b > a:
                cover[u, np.searchsorted(edges, a):np.searchsorted(edges, b)] = True
    length = np.diff(edges)
    q, r = np.divmod(length, np.maximum(cover.sum(axis=0), 1))
    rank = np.cumsum(cover, axis=0, dtype=np.int32)
    return (cover * (q + (rank <= r))).sum(axis=1).astype(np.int64)
