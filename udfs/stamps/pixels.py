"""Pixel arrays of the stage-5 stamps dataset as NumPy, and the radial masks stage 6 uses.

Pixel columns are band-major ``(n_bands, N, N)`` flattened row-major (``maskbits``: one ``(N, N)``
plane): in the stamps, one byte-stream-split binary value per row (:mod:`udfs.io.pixel_codec`);
in the cutouts and the stage-6 frames, Arrow lists. The schema metadata holds ``image_shape`` (JSON
``[n_bands, N, N]``), ``band_order`` (e.g. ``grz``) and ``pixel_scale_arcsec``. Failed rows hold
no pixels (null, or lists of null items), returned here as NaN. Radii are measured from the stamp centre ``(N-1)/2``
(the lens centre up to the cutout's sub-pixel offset, |dx|, |dy| <= 0.5 px), in pixels.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from udfs.io import pixel_codec
from udfs.io.datasets import schema_metadata
from udfs.io.errors import InputError
from udfs.schemas.stamps import LAYOUT_KEYS

_FLOAT = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


class StampInputError(InputError):
    """The stamps dataset does not follow the stage-5 layout (message names the file and the key)."""


@dataclass(frozen=True)
class StampLayout:
    n_bands: int
    npix: int
    bands: str
    pixel_scale: float  # arcsec / pixel
    arc_dtype: str = "float32"  # how ``arc`` is stored (float16 since issue 13: its rounding unit)


def stamp_layout(schema: pa.Schema, source: str) -> StampLayout:
    """Read ``image_shape``, ``band_order`` and ``pixel_scale_arcsec`` from the schema metadata."""
    meta = schema_metadata(schema)
    for key in LAYOUT_KEYS:
        if key not in meta:
            raise StampInputError(f"{source}: schema metadata has no {key!r} (expected the stage-5 stamps layout)")
    try:
        shape = json.loads(meta["image_shape"])
    except json.JSONDecodeError as exc:
        raise StampInputError(f"{source}: unreadable schema metadata image_shape/pixel_scale_arcsec ({exc})") from exc
    if not _FLOAT.match(meta["pixel_scale_arcsec"]):
        raise StampInputError(f"{source}: unreadable schema metadata image_shape/pixel_scale_arcsec "
                              f"(pixel_scale_arcsec is {meta['pixel_scale_arcsec']!r}, not a number)")
    pixel_scale = float(meta["pixel_scale_arcsec"])
    if not (isinstance(shape, list) and len(shape) == 3 and shape[1] == shape[2] and shape[0] == len(meta["band_order"])):
        raise StampInputError(f"{source}: image_shape {meta['image_shape']} does not match band_order "
                              f"{meta['band_order']!r} as [n_bands, N, N]")
    arc_dtype = "float32"
    if "arc" in schema.names:
        arc = schema.field("arc")
        if pixel_codec.is_encoded(arc):
            arc_dtype = pixel_codec.dtype_of(arc).name
        elif pa.types.is_float16(getattr(arc.type, "value_type", arc.type)):
            arc_dtype = "float16"
    return StampLayout(n_bands=int(shape[0]), npix=int(shape[1]), bands=meta["band_order"], pixel_scale=pixel_scale,
                       arc_dtype=arc_dtype)


def column_pixels(table: pa.Table, name: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """``(n_rows, *shape)`` of pixel column ``name`` of ``table`` in ``dtype`` (float32 on a
    float32 column: no copy) as it is stored (a :mod:`udfs.io.pixel_codec` binary column, per its
    field's metadata, or a fixed-size list); rows without pixels become NaN."""
    f = table.schema.field(name)
    if not pixel_codec.is_encoded(f):
        return pixel_array(table.column(name), shape).astype(dtype, copy=False)
    if pixel_codec.n_values(f) != int(np.prod(shape)):
        raise StampInputError(f"pixel column {name} holds {pixel_codec.n_values(f)} values per row, "
                              f"not the {int(np.prod(shape))} of shape {list(shape)}")
    values, valid = pixel_codec.decode(table.column(name), f)
    out = values.astype(dtype, copy=False)
    out[~valid] = np.nan
    return out.reshape((len(out),) + tuple(shape))


def pixel_array(column, shape: tuple[int, ...]) -> np.ndarray:
    """``(n_rows, *shape)`` float64 from a fixed-size-list column (pyarrow, or a sequence of arrays
    as pandas gives them); null entries and null items become NaN."""
    size = int(np.prod(shape))
    n = len(column)
    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if arr.null_count:
            column = arr.to_pylist()
        else:
            flat = arr.flatten().to_numpy(zero_copy_only=False)
            if flat.size != n * size:
                raise StampInputError(f"pixel column has {flat.size} values for {n} rows of shape {list(shape)}")
            return np.asarray(flat, dtype=np.float64).reshape((n,) + tuple(shape))
    out = np.full((n, size), np.nan)
    for i, v in enumerate(column):
        if v is None:
            continue
        v = np.asarray(v, dtype=np.float64) if not isinstance(v, list) else \
            np.array([np.nan if x is None else x for x in v], dtype=np.float64)
        if v.size != size:
            raise StampInputError(f"pixel row {i} has {v.size} values, expected {size} for shape {list(shape)}")
        out[i] = v
    return out.reshape((n,) + tuple(shape))


def radii(npix: int, offset=(0.0, 0.0)) -> np.ndarray:
    """``(N, N)`` distance of each pixel centre from the stamp centre ``(N-1)/2`` moved by
    ``offset = (dx, dy)``, pixels."""
    c = (npix - 1) / 2.0
    y, x = np.mgrid[:npix, :npix]
    return np.hypot(x - (c + offset[0]), y - (c + offset[1]))


def core_mask(npix: int, radius: float) -> np.ndarray:
    return radii(npix) <= radius


def annulus_mask(npix: int, inner: float, outer: float) -> np.ndarray:
    r = radii(npix)
    mask = (r >= inner) & (r <= outer)
    if not mask.any():
        raise StampInputError(f"annulus {inner}..{outer} px holds no pixel of a {npix}x{npix} stamp")
    return mask


def hash_uniform(keys, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per key from BLAKE2b-64 of ``"seed:key"`` (deterministic subsampling)."""
    out = np.empty(len(keys))
    for i, k in enumerate(keys):
        h = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "little") / 2.0 ** 64
    return out
