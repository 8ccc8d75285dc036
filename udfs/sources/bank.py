"""The COSMOS source bank: the HDF5 layout shared by the bank builder and the injectors.

Layout (written by ``jobs.cosmos_source_loader``). Each galaxy is a unit-flux image on an ``S x S``
square, centred at pixel ``((S-1)/2, (S-1)/2)``, axis 0 = y (row), axis 1 = x (column), zero outside
its footprint; only the footprint's bounding box (its crop) is stored:

- dataset ``pixels``: float32 ``(P,)``, every galaxy's crop row-major, back to back; group ``crops``:
  int arrays of length N (:data:`CROP_COLUMNS`): ``offset`` of the crop in ``pixels``, its first row
  ``y0`` and column ``x0`` in the square, ``height``, ``width`` (0 x 0 for an all-zero image);
- attributes ``image_size`` (S), ``pixel_scale_arcsec``, ``code_version``, ``config`` (JSON), ``catalog_name``,
  ``rejected_counts`` and ``photometry_counts`` (JSON: the ``--photometry`` cross-match counts);
- group ``meta``: one array of length N per column (``ident``, ``catalog_index``, ``mag_f814w``,
  Sersic twin ``sersic_n``, ``sersic_hlr_arcsec``, ``sersic_q``, ``sersic_phi_rad``, morphology
  statistics, ...) and the photometry columns (:mod:`udfs.sources.bank_photometry`):
  - ``zphot`` (the redshift the galaxy sits at), ``zphot_source`` (``catalogue`` or the file's name);
  - ``mag_g``, ``mag_r``, ``mag_z``: DECam AB magnitudes of the unlensed galaxy at ``zphot``; ``g_r``, ``r_z``;
  - ``colour_source``: ``external_photometry`` | ``hsc_photometry`` | ``cww_template``;
  - ``phot_sep_arcsec``: separation to the matched ``--photometry`` row (NaN: not matched, or none given);
  - ``sed_coeff``: float64 ``(N, 4)``, the absolute SED in the CWW basis (:mod:`udfs.sources.sed`;
    ``magnitudes_at(sed_coeff, zphot)`` gives ``mag_r`` exactly and g, z within the fit residual).
Banks of the earlier layout (dataset ``images``, float32 ``(N, S, S)``) are read too (cropped on reading).
Executors call :func:`load_bank`: the pixels are memory-mapped read-only from one uncompressed copy per
node (:func:`node_copy`), shared by its Python workers through the page cache; boxes, meta and
attributes are decoded per worker. The driver reads only :func:`read_bank_info` and
:func:`read_bank_meta` (never the pixels).
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import h5py
import numpy as np

from udfs.io import storage
from udfs.io.errors import InputError

CROP_COLUMNS = ("offset", "y0", "x0", "height", "width")
NODE_COPY_VERSION = "crops-v1"   # part of the node-local copy's name: a new layout never reuses an old copy


class BankError(InputError):
    """A source bank file is unreadable or not in the bank layout, or a row index lies outside it."""


def _read_only(a: np.ndarray, dtype) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=dtype).view()  # a view: the caller's array keeps its flags
    a.flags.writeable = False  # one numba specialisation for in-memory and memory-mapped banks
    return a


@dataclass(frozen=True)
class Crops:
    """The footprint crops of N unit-flux ``S x S`` images: ``pixels`` ``(P,)`` float32, every crop
    row-major; ``boxes`` ``(N, 5)`` int64 rows ``(offset into pixels, y0, x0, height, width)``."""
    pixels: np.ndarray
    boxes: np.ndarray
    size: int                     # S

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def crop(self, i: int) -> np.ndarray:
        off, _, _, h, w = (int(v) for v in self.boxes[i])
        return self.pixels[off:off + h * w].reshape(h, w)

    def square(self, i: int) -> np.ndarray:
        """Galaxy ``i``'s whole ``S x S`` float32 image (zeros outside its crop)."""
        _, y0, x0, h, w = (int(v) for v in self.boxes[i])
        out = np.zeros((self.size, self.size), np.float32)
        out[y0:y0 + h, x0:x0 + w] = self.crop(i)
        return out

    @classmethod
    def checked(cls, pixels, boxes, size: int, name: str = "<crops>") -> Crops:
        """Read-only crops after checking that every box lies in the square and in ``pixels``."""
        pixels, boxes = _read_only(pixels, np.float32), _read_only(boxes, np.int64).reshape(-1, 5)
        off, y0, x0, h, w = boxes.T
        bad = ~((y0 >= 0) & (x0 >= 0) & (h >= 0) & (w >= 0) & (y0 + h <= size) & (x0 + w <= size)
                & (off >= 0) & (off + h * w <= pixels.size))
        if pixels.ndim != 1 or int(size) < 1 or bad.any():
            where = f"crop {np.argmax(bad)}: {boxes[np.argmax(bad)].tolist()}" if bad.any() else "layout"
            raise BankError(f"{name}: bad crops ({where}; image_size {size}, {pixels.size} pixels)")
        return cls(pixels=pixels, boxes=boxes, size=int(size))

    @classmethod
    def from_squares(cls, images, size: int | None = None) -> Crops:
        """Crops of ``(S, S)`` images (an ``(N, S, S)`` array or any iterable of squares of ``size``):
        each image's nonzero bounding box."""
        if size is None:
            if np.ndim(images) != 3 or np.shape(images)[1] != np.shape(images)[2]:
                raise BankError(f"images must be (N, S, S), got {np.shape(images)}")
            size = np.shape(images)[1]
        boxes, parts, off = [], [], 0
        for img in images:
            img = np.asarray(img, dtype=np.float32)
            rows, cols = np.flatnonzero(img.any(axis=1)), np.flatnonzero(img.any(axis=0))
            if not rows.size:
                boxes.append((off, 0, 0, 0, 0))
                continue
            part = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            boxes.append((off, rows[0], cols[0], *part.shape))
            parts.append(part.ravel())
            off += part.size
        pixels = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return cls.checked(pixels, np.array(boxes, np.int64).reshape(-1, 5), size)


def support_radius(crops: Crops | np.ndarray) -> np.ndarray:
    """Per bank image (``crops`` or ``(N, S, S)`` squares), the radius (image pixels) around the
    image centre beyond which its interpolant is zero."""
    crops = crops if isinstance(crops, Crops) else Crops.from_squares(crops)
    c = (crops.size - 1) / 2.0
    yy, xx = np.mgrid[0:crops.size, 0:crops.size]
    r = np.hypot(xx - c, yy - c) + math.sqrt(2.0)  # bilinear taper reaches one pixel beyond
    out = np.zeros(len(crops))
    for i, (off, y0, x0, h, w) in enumerate(crops.boxes.tolist()):
        nz = crops.pixels[off:off + h * w].reshape(h, w) != 0
        if nz.any():
            out[i] = r[y0:y0 + h, x0:x0 + w][nz].max()
    return out


@dataclass(frozen=True)
class SourceBank:
    crops: Crops                  # unit-flux footprint crops of the (S, S) images
    pixel_scale: float            # arcsec / pixel
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def image_size(self) -> int:
        return self.crops.size

    def image(self, index: int) -> np.ndarray:
        """Galaxy ``index``'s whole ``S x S`` float32 image."""
        return self.crops.square(self.check_index(index))

    @cached_property
    def support_pix(self) -> np.ndarray:
        """Per image, the radius (image pixels) beyond which it is zero (for the renderer)."""
        return support_radius(self.crops)

    def check_index(self, index: int) -> int:
        if not 0 <= int(index) < len(self):
            raise BankError(f"source index {index} out of range: the bank holds {len(self)} galaxies")
        return int(index)


def _attrs(f: h5py.File) -> dict[str, object]:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def _layout_problem(f: h5py.File) -> str | None:
    if "pixel_scale_arcsec" not in f.attrs or not ("images" in f or "pixels" in f):
        return ("not a source bank (needs attribute 'pixel_scale_arcsec' and dataset 'pixels' with group "
                "'crops', or the older dataset 'images')")
    if "pixels" not in f:
        shape = f["images"].shape
        return None if len(shape) == 3 and shape[1] == shape[2] else f"'images' must be (N, S, S), got {shape}"
    crops = f.get("crops")
    if "image_size" not in f.attrs or not isinstance(crops, h5py.Group) or set(CROP_COLUMNS) - set(crops):
        return f"dataset 'pixels' needs attribute 'image_size' and group 'crops' with {', '.join(CROP_COLUMNS)}"
    if len({crops[c].shape for c in CROP_COLUMNS}) != 1 or len(crops["offset"].shape) != 1:
        return "the 'crops' columns must be 1-D arrays of one length"
    return None


def _open(source, name: str) -> h5py.File:
    """The bank as an open, layout-checked HDF5 file: a path or URI is read whole (one request), a
    file object is read by seeking in it."""
    try:
        f = h5py.File(io.BytesIO(storage.read_bytes(source)) if isinstance(source, str) else source, "r")
    except (OSError, FileNotFoundError) as exc:
        raise BankError(f"{name}: not a readable HDF5 source bank ({exc})") from exc
    problem = _layout_problem(f)
    if problem is None and not float(f.attrs["pixel_scale_arcsec"]) > 0:
        problem = f"pixel_scale_arcsec must be > 0, got {float(f.attrs['pixel_scale_arcsec'])}"
    if problem is None:
        return f
    f.close()
    raise BankError(f"{name}: {problem}")


def _boxes(f: h5py.File) -> np.ndarray:
    return np.stack([f["crops"][c][...].astype(np.int64) for c in CROP_COLUMNS], axis=-1).reshape(-1, 5)


def _crops(f: h5py.File, name: str) -> Crops:
    if "pixels" in f:
        return Crops.checked(f["pixels"][...], _boxes(f), int(f.attrs["image_size"]), name)
    ds, block = f["images"], 256   # the earlier layout: cut the crops a block of squares at a time
    return Crops.from_squares((img for k in range(0, ds.shape[0], block) for img in ds[k:k + block]),
                              ds.shape[1])


def read_bank(source: str | io.BytesIO) -> SourceBank:
    """Read a bank from a local path, an ``s3://`` URI or a file object; validate its layout."""
    name = source if isinstance(source, str) else "<bank>"
    with _open(source, name) as f:
        meta = {k: v[...] for k, v in f["meta"].items()} if "meta" in f else {}
        return SourceBank(crops=_crops(f, name), pixel_scale=float(f.attrs["pixel_scale_arcsec"]), meta=meta,
                          attrs=_attrs(f))


def write_crops(f: h5py.File, crops: Crops, chunk_pixels: int | None = None, gzip_level: int = 4) -> None:
    """Write ``crops`` into the open file ``f`` in the bank layout, without timestamps: ``pixels``
    contiguous and uncompressed (memory-mappable) or, with ``chunk_pixels``, gzip + shuffle in chunks
    of that many pixels."""
    packed = chunk_pixels is not None and crops.pixels.size > 0
    f.create_dataset("pixels", data=crops.pixels, chunks=(min(chunk_pixels, crops.pixels.size),) if packed else None,
                     compression="gzip" if packed else None, compression_opts=gzip_level if packed else None,
                     shuffle=packed, track_times=False)
    grp = untimed_group(f, "crops")
    for k, col in enumerate(CROP_COLUMNS):
        grp.create_dataset(col, data=crops.boxes[:, k].astype(np.int64 if col == "offset" else np.int32),
                           track_times=False)
    f.attrs["image_size"] = int(crops.size)


def untimed_group(f: h5py.File, name: str) -> h5py.Group:
    """A new group of ``f`` without a modification time (byte-identical reruns)."""
    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_obj_track_times(False)
    return h5py.Group(h5py.h5g.create(f.id, name.encode(), gcpl=gcpl))


@dataclass(frozen=True)
class BankInfo:
    """What the driver needs to know of a bank: its size N, image size S, pixel scale (arcsec),
    meta column names and attributes; not its pixels."""
    uri: str
    size: int
    image_size: int
    pixel_scale: float
    meta_columns: tuple[str, ...]
    attrs: dict[str, object]

    def check_meta(self, columns) -> None:
        """Raise :class:`BankError` naming the first of ``columns`` the bank's ``meta`` lacks."""
        for col in columns:
            if col not in self.meta_columns:
                raise BankError(f"{self.uri}: bank meta lacks column {col!r}")


def _seek(uri: str):  # the bank file opened for seeking
    try:
        return storage.open_input(uri)
    except FileNotFoundError as exc:
        raise BankError(f"{uri}: not a readable HDF5 source bank ({exc})") from exc


def read_bank_info(uri: str) -> BankInfo:
    """The bank's size, attributes and meta column names, read by seeking in the HDF5 file (local
    or ``s3://``): the pixel and meta datasets are never read."""
    with _seek(uri) as raw, _open(raw, uri) as f:
        n, s = (f["crops/offset"].shape[0], f.attrs["image_size"]) if "pixels" in f else f["images"].shape[:2]
        columns = tuple(f["meta"].keys()) if "meta" in f else ()
        return BankInfo(uri=uri, size=int(n), image_size=int(s), pixel_scale=float(f.attrs["pixel_scale_arcsec"]),
                        meta_columns=columns, attrs=_attrs(f))


def read_bank_meta(uri: str, columns) -> dict[str, np.ndarray]:
    """Only the named ``meta`` columns of a bank (local or ``s3://``, read by seeking; never the
    pixels); :class:`BankError` names a missing column."""
    with _seek(uri) as raw, _open(raw, uri) as f:
        meta = f["meta"] if "meta" in f else {}
        missing = [c for c in columns if c not in meta]
        if missing:
            raise BankError(f"{uri}: bank meta lacks column {missing[0]!r}")
        return {c: meta[c][...] for c in columns}


def _fingerprint(uri: str) -> str:
    """A name for the bank at ``uri`` as it is now: its location, size and modification time."""
    try:
        if storage.is_http(uri):
            stamp = [uri, storage.size(uri), None]
        else:
            fs, path = storage.resolve(uri)
            info = fs.get_file_info(path)
            if not info.is_file:
                raise FileNotFoundError(f"{uri}: no such file")
            stamp = [uri if storage.is_s3(uri) else path, info.size, info.mtime_ns]
    except (OSError, FileNotFoundError) as exc:
        raise BankError(f"{uri}: not a readable HDF5 source bank ({exc})") from exc
    return hashlib.sha256(json.dumps([NODE_COPY_VERSION, *stamp]).encode()).hexdigest()[:32]


def node_copy(uri: str) -> str:
    """The path of this node's uncompressed copy of the bank at ``uri`` (``pixels`` contiguous), named
    by the bank's location, size and modification time, under the first of ``$SPARK_LOCAL_DIRS`` (a
    Python worker's is its executor's ``blockmgr-*`` folder: its parent, e.g. YARN's per-application
    folder, is shared by the node's executors) or the temp directory. The first caller on the node
    writes it (temp file, ``os.replace``); concurrent callers wait on a lock file and reuse it."""
    local = os.environ.get("SPARK_LOCAL_DIRS", "").split(",")[0].strip().rstrip("/")
    local = os.path.dirname(local) if os.path.basename(local).startswith("blockmgr-") else local
    directory = os.path.join(local or tempfile.gettempdir(), "source-bank-cache")
    path = os.path.join(directory, f"bank-{_fingerprint(uri)}.h5")
    if os.path.exists(path):
        return path
    os.makedirs(directory, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the lock file closes
        if not os.path.exists(path):
            bank = read_bank(uri)
            tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
            try:
                with h5py.File(tmp, "w") as f:
                    f.attrs.update(bank.attrs)
                    write_crops(f, bank.crops)
                    for k, v in bank.meta.items():
                        f[f"meta/{k}"] = v
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    return path


def open_node_copy(path: str) -> SourceBank:
    """The bank in a :func:`node_copy` file: pixels memory-mapped read-only (shared by every process
    that maps the file), boxes, meta and attributes decoded."""
    with h5py.File(path, "r") as f:
        ds = f["pixels"]
        if ds.chunks is not None or ds.dtype != np.dtype("<f4"):
            raise BankError(f"{path}: not a node copy (pixels must be contiguous little-endian float32)")
        n, offset = ds.shape[0], ds.id.get_offset()
        boxes, size, scale = _boxes(f), int(f.attrs["image_size"]), float(f.attrs["pixel_scale_arcsec"])
        meta, attrs = ({k: v[...] for k, v in f["meta"].items()} if "meta" in f else {}), _attrs(f)
    pixels = np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=(n,)) if n else np.zeros(0, np.float32)
    return SourceBank(crops=Crops.checked(pixels, boxes, size, path), pixel_scale=scale, meta=meta, attrs=attrs)


@lru_cache(maxsize=2)
def load_bank(uri: str) -> SourceBank:
    """The bank for an executor: memory-mapped from this node's :func:`node_copy` (one copy of the
    pixels per node, shared by its Python workers), cached per worker."""
    return open_node_copy(node_copy(uri))
