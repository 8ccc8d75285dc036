"""Train/val/test labels by HEALPix cell, so that no patch of sky is in two splits.

Cells are HEALPix pixels in the NESTED scheme (astropy-healpix) at a configurable ``nside``. Each
cell draws one number ``u`` in [0, 1) from a hash of ``(seed, nside, cell)`` (BLAKE2b, 64 bits)
and takes the split whose cumulative fraction interval holds ``u`` (intervals in the configured
order). A cell's label depends only on the seed, nside and the cell itself: adding targets never
moves another target to a different split. The realised target fractions therefore scatter about
the requested ones by about ``sqrt(f (1 - f) / N_cells)`` for ``N_cells`` occupied cells: use a
larger nside for small areas of sky.
"""
from __future__ import annotations

import hashlib

import astropy.units as u
import numpy as np
from astropy_healpix import HEALPix


def healpix_cells(ra_deg: np.ndarray, dec_deg: np.ndarray, nside: int) -> np.ndarray:
    """NESTED HEALPix pixel index (int64) of each position (ICRS degrees)."""
    hp = HEALPix(nside=nside, order="nested")
    cells = hp.lonlat_to_healpix(np.asarray(ra_deg, dtype=np.float64) * u.deg,
                                 np.asarray(dec_deg, dtype=np.float64) * u.deg)
    return np.asarray(cells, dtype=np.int64)


def cell_uniform(cells: np.ndarray, seed: int, nside: int) -> np.ndarray:
    """A uniform number in [0, 1) per cell from BLAKE2b-64 of ``"seed:nside:cell"``."""
    cells = np.asarray(cells, dtype=np.int64)
    uniq, inverse = np.unique(cells, return_inverse=True)
    draws = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{nside}:{int(c)}".encode(),
                                                     digest_size=8).digest(), "big") / 2.0 ** 64
                      for c in uniq], dtype=np.float64)
    return draws[inverse] if len(cells) else np.zeros(0)


def assign_splits(cells: np.ndarray, seed: int, nside: int, fractions: dict[str, float]) -> np.ndarray:
    """Split label per target from its cell; ``fractions`` (ordered) must sum to 1."""
    names = list(fractions)
    edges = np.cumsum([fractions[n] for n in names])
    edges[-1] = 1.0 + 1e-12  # guard against round-off: every u < 1 falls in some interval
    idx = np.searchsorted(edges, cell_uniform(cells, seed, nside), side="right")
    return np.asarray(names, dtype=object)[idx].astype(str)


def realised_fractions(counts: dict[str, int], names: list[str]) -> dict[str, float]:
    """Fraction of the targets in each split from per-split counts (0.0 for every split when empty)."""
    total = sum(counts.values())
    return {name: (counts.get(name, 0) / total if total else 0.0) for name in names}
