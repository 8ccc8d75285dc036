"""Parquet datasets on local disk or S3: list their files, read ``col=value`` folders, check schemas.

A dataset is a folder of ``*.parquet`` files, possibly below hive-style ``<col>=<value>/`` folders
(e.g. ``split=train/part-00003.parquet``), or a single Parquet file. These helpers are pure pyarrow
(no Spark); the jobs' Spark readers and the stage-6 and training readers share them.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from udfs.io import storage
from udfs.io.errors import InputError


class DatasetError(InputError):
    """A dataset is missing, empty, or lacks the columns or metadata its reader needs."""


def dataset_files(uri: str) -> list[str]:
    """The ``*.parquet`` files of a dataset, recursing into hive partitions, sorted; ``[]`` if none.

    A dataset this pipeline published lists its parts in ``_SUCCESS.json`` (:mod:`udfs.io.publish`):
    exactly those are returned. One with a run lock (``_RUN.json``) is unfinished (being written, or
    its run was killed) and is refused, unless this process holds the lock (a job reading back what
    it wrote). A folder with neither (written elsewhere) is every Parquet file in it.
    """
    from udfs.io import output_lock, publish

    fs, path = storage.resolve(uri)
    info = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    names = {i.path for i in info if i.type == pafs.FileType.File}
    root = path.rstrip("/")
    lock = storage.join(uri, output_lock.LOCK_FILE)
    if f"{root}/{output_lock.LOCK_FILE}" in names and not output_lock.held_here(lock):
        record = output_lock.read_record(lock) or {}
        raise DatasetError(f"{uri}: unfinished dataset: {output_lock.describe(record)} is writing it or was "
                           "killed; rerun that job to finish it")
    if f"{root}/{publish.SUCCESS_FILE}" in names:
        parts = publish.read_success(uri)["parts"]
        missing = [p for p in parts if f"{root}/{p}" not in names]
        if missing:
            raise DatasetError(f"{uri}: {len(missing)} published part(s) are missing, e.g. {missing[0]}")
        files = [f"{root}/{p}" for p in parts]
    else:
        files = sorted(n for n in names if n.endswith(".parquet"))
    return ["s3://" + f for f in files] if storage.is_s3(uri) else files


def partition_values(uri: str, path: str) -> dict[str, str]:
    """The ``col=value`` folders between the dataset root ``uri`` and one of its files."""
    rel = path.replace("\\", "/")[len(uri.replace("\\", "/")):]
    return dict(seg.split("=", 1) for seg in rel.split("/")[:-1] if "=" in seg)


def list_dataset(uri: str, what: str, *, allow_file: bool = False) -> list[str]:
    """The files of the dataset at ``uri`` (``what`` names it in errors, e.g. "the stage-1 targets").

    ``allow_file``: a single Parquet file is accepted as a one-file dataset.
    Raises :class:`DatasetError` when the location cannot be listed or holds no Parquet file.
    """
    try:
        fs, path = storage.resolve(uri)
        if allow_file and fs.get_file_info(path).type == pafs.FileType.File:
            return [uri]
        files = dataset_files(uri)
    except OSError as exc:
        raise DatasetError(f"{uri}: cannot list {what} ({exc})") from exc
    if not files:
        raise DatasetError(f"{uri}: no Parquet files found (expected {what})")
    return files


def file_schema(path: str) -> pa.Schema:
    """The Arrow schema (with metadata) stored in one Parquet file; :class:`DatasetError` naming the
    file when it is not a readable Parquet file (truncated, corrupt footer)."""
    with storage.open_input(path) as f:
        try:
            return pq.read_schema(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc


def file_rows(path: str) -> int:
    """Rows of one Parquet file, from its footer."""
    with storage.open_input(path) as f:
        return pq.read_metadata(f).num_rows


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file as a table; :class:`DatasetError` naming the file when its data cannot be
    read or decoded (pages corrupt behind a sound footer, a read that fails): in a Spark task, the
    job then stops with that one line (:func:`jobs.cli.task_input_error`)."""
    with storage.open_input(path) as f:
        try:
            return pq.read_table(f, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"{path}: cannot read its Parquet data ({' '.join(str(exc).split())})") from exc


def check_readable(files: list[str]) -> None:
    """Every file's footer can be read (one small read each): a truncated or corrupt part is a
    :class:`DatasetError` naming it here, on the driver, not an error inside a Spark task."""
    for f in files:
        file_schema(f)


def check_columns(path: str, schema: pa.Schema, columns: list[str],
                  partitions: dict[str, str] | None = None) -> None:
    """Raise :class:`DatasetError` naming ``path`` if any of ``columns`` is neither in ``schema`` nor
    a partition folder of the file."""
    missing = [c for c in columns if c not in schema.names and c not in (partitions or {})]
    if missing:
        raise DatasetError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")


def open_dataset(uri: str, what: str, columns: list[str], *, allow_file: bool = False
                 ) -> tuple[list[str], pa.Schema]:
    """List a dataset and check that its first file has ``columns``: ``(files, first file's schema)``."""
    files = list_dataset(uri, what, allow_file=allow_file)
    schema = file_schema(files[0])
    check_columns(files[0], schema, columns, partition_values(uri, files[0]))
    return files, schema


def read_columns(uri: str, what: str, columns: list[str], *, allow_file: bool = False):
    """``columns`` of every file of a dataset as one pandas frame, in file order; a column may be a
    ``col=value`` folder (restored as strings). Every file must have them (:class:`DatasetError`)."""
    tables = []
    for f in list_dataset(uri, what, allow_file=allow_file):
        parts, schema = partition_values(uri, f), file_schema(f)
        check_columns(f, schema, columns, parts)
        t = read_table(f, [c for c in columns if c in schema.names])
        for k, v in parts.items():
            if k in columns and k not in t.column_names:
                t = t.append_column(k, pa.array([v] * len(t), pa.string()))
        tables.append(t.select(columns))
    return pa.concat_tables(tables).to_pandas()


def schema_metadata(schema: pa.Schema) -> dict[str, str]:
    """A schema's key/value metadata as ``str -> str``."""
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
