"""Training batches from a stage-5 stamps dataset: ``(image, label, truth)`` by split, streaming.

pyarrow + NumPy only (no Spark). :func:`iter_batches` reads the files of ``<uri>/split=<split>/``
one row group at a time (memory: one row group and one batch), keeps the rows with ``ok`` true
(failed rows have no pixels; they are counted in :attr:`StampBatches.skipped`) and yields
:class:`Batch` objects of ``batch_size`` rows (the last one shorter):

- ``image``: float32 ``(B, n_bands, N, N)``, nanomaggies, bands in the dataset's ``band_order``;
- ``label``: int64 ``(B,)``, 1 for an injected lens, 0 for its paired control;
- ``truth``: ``{column: (B,) array}`` for the requested scalar columns (default: ``task_id``,
  ``pair_id``, ``theta_e``, ``src_mag_r``, ``magnification``, ``arc_snr_r``; any scalar column of
  :mod:`udfs.schemas.stamps` may be asked for), NaN where a control has no value.

Order: files in name order, rows in file order; ``shuffle_buffer > 0`` draws rows at random from a
buffer of that many (seeded: the same seed gives the same order). :func:`torch_dataset` wraps the
same stream as a ``torch.utils.data.IterableDataset`` (torch is optional; it is imported only there).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from udfs.io import storage
from udfs.io.datasets import DatasetError, dataset_files, partition_values
from udfs.stamps.pixels import column_pixels, stamp_layout

DEFAULT_TRUTH = ("task_id", "pair_id", "theta_e", "src_mag_r", "magnification", "arc_snr_r")


@dataclass
class Batch:
    image: np.ndarray
    label: np.ndarray
    truth: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.label)


class StampBatches:
    """An iterable of :class:`Batch` over one split (see module doc); iterate it again to start over."""

    def __init__(self, uri: str, split: str, batch_size: int = 256, truth=DEFAULT_TRUTH,
                 shuffle_buffer: int = 0, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        self.files = [f for f in dataset_files(uri) if partition_values(uri, f).get("split") == split]
        if not self.files:
            raise DatasetError(f"{uri}: no stamps files for split {split!r} (expected split={split}/part-*.parquet)")
        first = pq.read_schema(storage.open_input(self.files[0]))
        self.layout = stamp_layout(first, self.files[0])
        unknown = [c for c in truth if c not in first.names]
        if unknown:
            raise DatasetError(f"{self.files[0]}: no column {unknown[0]!r} (truth columns must be stamp columns)")
        self.truth, self.batch_size = list(truth), batch_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.skipped = 0

    def _row_groups(self):
        """``(image, label, truth)`` arrays of the ok rows of each row group, in file order."""
        shape = (self.layout.n_bands, self.layout.npix, self.layout.npix)
        columns = ["ok", "is_control", "image", *self.truth]
        for path in self.files:
            with storage.open_input(path) as f:
                pf = pq.ParquetFile(f)
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g, columns=columns)
                    ok = t.column("ok").to_numpy(zero_copy_only=False).astype(bool)
                    self.skipped += int((~ok).sum())
                    t = t.filter(pa.array(ok))
                    if not t.num_rows:
                        continue
                    image = column_pixels(t, "image", shape, np.float32)
                    label = (~t.column("is_control").to_numpy(zero_copy_only=False).astype(bool)).astype(np.int64)
                    truth = {c: _values(t.column(c)) for c in self.truth}
                    yield image, label, truth

    def __iter__(self):
        self.skipped = 0
        groups = self._row_groups()
        if self.shuffle_buffer > 0:
            groups = _shuffled(groups, self.shuffle_buffer, np.random.default_rng(self.seed))
        queue: list[tuple] = []
        for group in groups:
            queue.append(group)
            while sum(len(g[1]) for g in queue) >= self.batch_size:
                batch, queue = _split(_concat(queue), self.batch_size)
                yield batch
        if queue:
            yield Batch(*_concat(queue))


def _values(column: pa.ChunkedArray) -> np.ndarray:
    """A scalar column as NumPy: numbers as float64 (null -> NaN), flags as bool, strings as object."""
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.float64) if column.null_count else column.to_numpy()
    return np.asarray(column.to_pylist(), dtype=bool if pa.types.is_boolean(column.type) else object)


def _concat(groups: list[tuple]) -> tuple:
    if len(groups) == 1:
        return groups[0]
    return (np.concatenate([g[0] for g in groups]), np.concatenate([g[1] for g in groups]),
            {c: np.concatenate([g[2][c] for g in groups]) for c in groups[0][2]})


def _rows(group: tuple, idx) -> tuple:
    return group[0][idx], group[1][idx], {c: v[idx] for c, v in group[2].items()}


def _split(group: tuple, n: int) -> tuple[Batch, list[tuple]]:
    """The first ``n`` rows as a batch, and the rest (a queue of at most one group)."""
    rest = _rows(group, slice(n, None))
    return Batch(*_rows(group, slice(0, n))), ([rest] if len(rest[1]) else [])


def _shuffled(groups, capacity: int, rng):
    """Rows of ``groups`` in random order through a buffer of ``capacity`` rows: once it is full,
    each incoming row takes the slot of a row drawn at random, which leaves."""
    buf, n = None, 0
    for group in groups:
        if buf is None:
            buf = (np.empty((capacity,) + group[0].shape[1:], group[0].dtype), np.empty(capacity, group[1].dtype),
                   {c: np.empty(capacity, v.dtype) for c, v in group[2].items()})
        fill = min(capacity - n, len(group[1]))
        _put(buf, slice(n, n + fill), _rows(group, slice(0, fill)))
        n += fill
        incoming = _rows(group, slice(fill, None))
        while len(incoming[1]):  # more new rows than slots: in pieces of at most `capacity`
            head, incoming = _rows(incoming, slice(0, capacity)), _rows(incoming, slice(capacity, None))
            slots = rng.choice(capacity, size=len(head[1]), replace=False)
            leaving = _rows(buf, slots)
            _put(buf, slots, head)
            yield leaving
    if n:
        yield _rows(buf, rng.permutation(n))


def _put(buf: tuple, idx, rows: tuple) -> None:
    buf[0][idx], buf[1][idx] = rows[0], rows[1]
    for c, v in rows[2].items():
        buf[2][c][idx] = v


def iter_batches(uri: str, split: str, batch_size: int = 256, truth=DEFAULT_TRUTH, shuffle_buffer: int = 0,
                 seed: int = 0) -> StampBatches:
    """The batches of ``split`` (see module doc)."""
    return StampBatches(uri, split, batch_size, truth, shuffle_buffer, seed)


def torch_dataset(uri: str, split: str, **kwargs):
    """A ``torch.utils.data.IterableDataset`` yielding ``(image, label, truth)`` batches as tensors
    (truth: the numeric columns as tensors, the others as lists); use with ``batch_size=None`` in a
    ``DataLoader``. Needs torch (optional; ``pip install torch``)."""
    import torch

    batches = StampBatches(uri, split, **kwargs)

    class _Stamps(torch.utils.data.IterableDataset):
        def __iter__(self):
            for b in batches:
                truth = {c: torch.from_numpy(v) if v.dtype.kind in "fiub" else list(v) for c, v in b.truth.items()}
                yield torch.from_numpy(b.image), torch.from_numpy(b.label), truth

    return _Stamps()
