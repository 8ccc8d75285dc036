"""Stage 5's unit of work: bucket b of the co-located manifest and cutouts -> bucket b's stamp files.

Stages 3 and 4 bucket their rows by the target's brick into the same number of files
(:data:`udfs.schemas.cutouts.BUCKET_KEY`; key and count in every file's schema metadata,
:mod:`udfs.io.parquet_files`), so the tasks of manifest file ``part-<b>`` find their cutouts in
cutouts file ``part-<b>``. :func:`inject_bucket` reads the two, takes the manifest rows in file
order (brick, target, task) in batches of :data:`BATCH_ROWS` with their cutout rows (a merge on
``target_id`` in memory), injects them (:func:`udfs.stamps.inject.inject_tasks`) and streams each
split's rows into ``<output>/split=<s>/part-<b>.parquet`` in row groups of at least
:data:`ROW_GROUP_ROWS` (:class:`udfs.io.parquet_files.StreamingFile`: each file published whole).
Stage 5 runs one Spark task per bucket: no pixel crosses a shuffle, and a Python worker holds one
bucket's cutouts and one batch of stamps.

A task with no cutout row (``target_id`` absent from the cutouts) fails with reason
``cutout:missing``, as a failed cutout does. Resume (``skip_existing``): a bucket whose every split
file exists is skipped; a bucket killed part-way is redone whole, with the same bytes.
"""
from __future__ import annotations

import pandas as pd
import pyarrow as pa

from udfs.io import parquet_files, storage
from udfs.io.datasets import DatasetError, check_readable, dataset_files, file_schema, read_table
from udfs.schemas import cutouts

BATCH_ROWS = 256
ROW_GROUP_ROWS = 256


def colocated_buckets(manifest_uri: str, cutouts_uri: str) -> dict[int, tuple[str, str | None]]:
    """``{bucket: (manifest file, cutouts file or None)}`` for every manifest bucket.

    Raises :class:`DatasetError` (naming both datasets and what to rebuild) unless both are
    bucketed by :data:`udfs.schemas.cutouts.BUCKET_KEY` into the same number of files.
    """
    layouts = {}
    for uri in (manifest_uri, cutouts_uri):
        files = dataset_files(uri)
        if not files:
            raise DatasetError(f"{uri}: no Parquet files found")
        check_readable(files)
        layouts[uri] = (parquet_files.bucketing(file_schema(files[0])),
                        {parquet_files.bucket_number(f): f for f in files})
    (m_layout, m_files), (c_layout, c_files) = layouts[manifest_uri], layouts[cutouts_uri]
    expected = tuple(cutouts.BUCKET_KEY)
    for uri, layout in ((manifest_uri, m_layout), (cutouts_uri, c_layout)):
        if layout is None or layout[0] != expected:
            told = "no bucket metadata" if layout is None else f"bucketed by {list(layout[0])}"
            raise DatasetError(f"{uri}: {told}; stage 5 needs the manifest and cutouts bucketed by "
                               f"{list(expected)} (rebuild it with this version of the pipeline)")
    if m_layout[1] != c_layout[1]:
        raise DatasetError(f"{manifest_uri}: {m_layout[1]} buckets, but {cutouts_uri} has {c_layout[1]}: "
                           "stage 5 merges bucket b of each, so the priors' n_buckets must equal "
                           "jobs.make_cutouts --n-buckets")
    if None in m_files or None in c_files:
        odd = m_files.get(None) or c_files.get(None)
        raise DatasetError(f"{odd}: not a part-<bucket>.parquet file of a bucketed dataset")
    return {b: (m_files[b], c_files.get(b)) for b in sorted(m_files)}


def _with_cutouts(tasks: pa.Table, cut: pa.Table, row_of: dict[str, int]) -> pd.DataFrame:
    """The manifest rows with their cutout's columns (``ok``/``fail_reason`` as ``cutout_ok``/
    ``cutout_fail_reason``; a target without a cutout row: not ok, reason ``missing``). Each target's
    pixels are converted once per batch, its tasks sharing them (a target has many tasks)."""
    first: dict[int | None, int] = {}
    local = [first.setdefault(row_of.get(str(t)), len(first)) for t in tasks.column("target_id").to_pylist()]
    joined = cut.take(pa.array(list(first), pa.int64())).drop_columns(["target_id"]).to_pandas().iloc[local]
    joined = joined.reset_index(drop=True).rename(columns={"ok": "cutout_ok", "fail_reason": "cutout_fail_reason"})
    pdf = pd.concat([tasks.to_pandas(), joined], axis=1)
    pdf["cutout_ok"] = pdf["cutout_ok"].fillna(False).astype(bool)
    pdf.loc[pdf["cutout_fail_reason"].isna() & ~pdf["cutout_ok"], "cutout_fail_reason"] = "missing"
    return pdf


class _SplitFiles:
    """One :class:`StreamingFile` per split of a bucket, fed in row groups of >= ROW_GROUP_ROWS."""

    def __init__(self, output: str, bucket: int, file_schema_: pa.Schema):
        self.output, self.name, self.schema = output, parquet_files.bucket_name(bucket), file_schema_
        self.files, self.pending = {}, {}

    def path(self, split: str) -> str:
        return storage.join(self.output, f"split={split}", self.name)

    def add(self, split: str, table: pa.Table) -> None:
        self.pending.setdefault(split, []).append(table)
        if sum(t.num_rows for t in self.pending[split]) >= ROW_GROUP_ROWS:
            self._flush(split)

    def _flush(self, split: str) -> None:
        tables = self.pending.pop(split, [])
        if tables:
            if split not in self.files:
                self.files[split] = parquet_files.StreamingFile(self.path(split), self.schema)
            self.files[split].write(pa.concat_tables(tables))

    def publish(self) -> list[dict]:
        for split in sorted(self.pending):
            self._flush(split)
        done = []
        for split in sorted(self.files):
            self.files[split].publish()
            done.append({"path": self.files[split].uri, "rows": self.files[split].rows, "status": "written"})
        return done

    def discard(self) -> None:
        for f in self.files.values():
            f.discard()


def inject_bucket(bucket: int, manifest_file: str, cutouts_file: str | None, output: str, *, inject,
                  file_schema_: pa.Schema, cutouts_schema: pa.Schema, skip_existing: bool = False) -> list[dict]:
    """Write bucket ``bucket``'s stamp files; one ``{path, rows, status}`` per file.

    ``inject``: a function from a batch of joined rows (pandas, see :func:`_with_cutouts`) to stamp
    rows with :func:`udfs.schemas.stamps.columns` (``split`` included). ``file_schema_``: the stamp
    files' Arrow schema (no ``split``). ``cutouts_schema``: the cutouts files' (read when bucket
    ``bucket`` has no cutouts file, every task then failing as ``missing``).
    """
    tasks = read_table(manifest_file)
    out = _SplitFiles(output, bucket, file_schema_)
    splits = sorted(set(tasks.column("split").to_pylist()))
    if skip_existing and all(storage.exists(out.path(s)) for s in splits):
        return [{"path": out.path(s), "rows": -1, "status": "skipped"} for s in splits]
    cut = (read_table(cutouts_file, cutouts.READER_COLUMNS) if cutouts_file is not None
           else cutouts_schema.empty_table().select(cutouts.READER_COLUMNS))
    row_of = {str(t): i for i, t in enumerate(cut.column("target_id").to_pylist())}
    try:
        for start in range(0, tasks.num_rows, BATCH_ROWS):
            stamps = inject(_with_cutouts(tasks.slice(start, BATCH_ROWS), cut, row_of))
            for split, part in stamps.groupby("split", sort=True):
                out.add(str(split), parquet_files.from_frame(part, file_schema_))
        return out.publish()
    except BaseException:
        out.discard()
        raise
