"""The COSMOS source bank: the HDF5 layout shared by the bank builder and the injectors.

Layout (written by ``jobs.cosmos_source_loader``):

- dataset ``images``: float32 ``(N, S, S)``, each image sums to 1 (unit flux), galaxy centred at
  pixel ``((S-1)/2, (S-1)/2)``, axis 1 = y (row), axis 2 = x (column);
- attributes ``pixel_scale_arcsec`` (float), ``code_version``, ``config`` (JSON), ``catalog_name``;
- group ``meta``: one 1-D array of length N per column (``ident``, ``mag_f814w``, ``zphot``,
  ``g_r``, ``r_z``, Sersic twin ``sersic_n``, ``sersic_hlr_arcsec``, ``sersic_q``,
  ``sersic_phi_rad``, morphology statistics, ...).

Executors load it once (``load_bank`` is cached per path) and pass plain arrays to the renderer.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import h5py
import numpy as np

from udfs.io import storage


@dataclass(frozen=True)
class SourceBank:
    images: np.ndarray            # (N, S, S) float32, unit flux
    pixel_scale: float            # arcsec / pixel
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @cached_property
    def support_pix(self) -> np.ndarray:
        """Per image, the radius (image pixels) beyond which it is zero (for the renderer)."""
        from udfs.lensing.render import support_radius

        return support_radius(self.images)

    def check_index(self, index: int) -> int:
        if not 0 <= int(index) < len(self):
            raise IndexError(f"source index {index} out of range: the bank holds {len(self)} galaxies")
        return int(index)


def read_bank(source: str | io.BytesIO) -> SourceBank:
    """Read a bank from a local path, an ``s3://`` URI or a file object; validate its layout."""
    name = source if isinstance(source, str) else "<bank>"
    try:
        f = h5py.File(io.BytesIO(storage.read_bytes(source)) if isinstance(source, str) else source, "r")
    except (OSError, FileNotFoundError) as exc:
        raise ValueError(f"{name}: not a readable HDF5 source bank ({exc})") from exc
    with f:
        if "images" not in f or "pixel_scale_arcsec" not in f.attrs:
            raise ValueError(f"{name}: not a source bank (needs dataset 'images' and attribute "
                             "'pixel_scale_arcsec')")
        images = f["images"][...].astype(np.float32, copy=False)
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"{name}: 'images' must be (N, S, S), got {images.shape}")
        meta = {k: v[...] for k, v in f["meta"].items()} if "meta" in f else {}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        scale = float(f.attrs["pixel_scale_arcsec"])
    if not scale > 0:
        raise ValueError(f"{name}: pixel_scale_arcsec must be > 0, got {scale}")
    return SourceBank(images=images, pixel_scale=scale, meta=meta, attrs=attrs)


@lru_cache(maxsize=2)
def load_bank(uri: str) -> SourceBank:
    """Cached :func:`read_bank`: one copy per Python worker process."""
    return read_bank(uri)
