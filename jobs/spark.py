"""Spark session and Parquet dataset I/O shared by every job.

Spark distributes the work; file I/O goes through :mod:`udfs.io.storage` (pyarrow) inside the tasks, so
local paths and ``s3://`` URIs behave the same in local mode (no Hadoop S3 connector needed) and on
EMR. Datasets are written deterministically: rows are hashed into a fixed number of buckets by a
key, each bucket is one file ``[<col>=<value>/]part-<bucket>.parquet`` sorted by the key, so a
rerun rewrites the same files with the same bytes and never duplicates rows.
"""
from __future__ import annotations

import json
import os
import sys

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from udfs.io import parquet_files, storage
from udfs.io.datasets import (DatasetError, check_readable, dataset_files, file_rows, file_schema,
                               partition_values, read_table)

BUCKET_COL = "_bucket"


def get_spark(app_name: str, conf: dict | None = None) -> SparkSession:
    """Return a session: the submit's master under spark-submit, else ``$LENSINJ_SPARK_MASTER``
    (default ``local[2,4]``: 2 cores, a failed task tried up to 4 times, as EMR's default
    ``spark.task.maxFailures``, so a lost Python worker costs its task, not the job).

    Python workers use the driver's interpreter (the project's virtualenv) unless
    ``PYSPARK_PYTHON`` says otherwise; BLAS/OpenMP/numba threads are pinned to 1 per task; Arrow's
    memory pool is the driver's (:mod:`jobs`).
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not launched by spark-submit
        builder = builder.master(os.environ.get("LENSINJ_SPARK_MASTER", "local[2,4]"))
    settings = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": os.environ.get("LENSINJ_SHUFFLE_PARTITIONS", "8"),
        # stamps carry ~115 kB of pixels per row: keep Arrow batches to tens of MB (the default
        # 10,000 rows exhausts the JVM's direct memory, and the Python worker then hangs)
        "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
        "spark.driver.memory": os.environ.get("LENSINJ_DRIVER_MEMORY", "4g"),
    }
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        settings[f"spark.executorEnv.{var}"] = "1"
    settings["spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL"] = os.environ["ARROW_DEFAULT_MEMORY_POOL"]  # jobs/__init__.py
    for key, value in {**settings, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # a failed task is reported once, by the driver (jobs.cli): the executors' own ERROR logs of it
    # would print a Java stack trace even for bad input
    spark.sparkContext.setLogLevel("FATAL")
    return spark


def bucket_of(key: list[str], n_buckets: int):
    """The bucket (file) a row goes to: ``pmod(xxhash64(key...), n_buckets)``."""
    return F.pmod(F.xxhash64(*key), F.lit(n_buckets))


def write_parquet(df: DataFrame, uri: str, *, key: list[str], n_buckets: int,
                  partition_by: list[str] | None = None, arrow_schema: pa.Schema | None = None,
                  skip_existing: bool = False, order: list[str] | None = None,
                  transform=None) -> list[dict]:
    """Write ``df`` as a Parquet dataset under ``uri``; return one summary dict per file written.

    ``key``: the columns whose hash chooses the bucket (file); recorded in each file's schema
    metadata (:func:`udfs.io.parquet_files.with_bucketing`). ``order``: the row order within a file
    (default ``key``; with ``key`` it must identify a row). ``partition_by``: hive-style folders
    (e.g. ``split``). ``arrow_schema``: cast each file to it (e.g. fixed-size lists for pixel
    arrays) and keep its metadata. ``skip_existing``: leave files that already exist untouched
    (resume after a killed run; content is the same by construction). ``transform``: a function
    from one bucket's rows (pandas) to the rows to write, run in the writing task: only ``df``'s
    rows cross the shuffle (e.g. stage 4 ships targets, and cuts their pixels where it writes them).
    """
    partition_by = list(partition_by or [])
    order = list(order or key)
    schema_json = arrow_schema.serialize().to_pybytes() if arrow_schema is not None else None
    bucketed = df.withColumn(BUCKET_COL, bucket_of(key, n_buckets))

    def write(batches):
        import pandas as pd

        frames = [b for b in batches if len(b)]
        if not frames:
            return
        pdf = pd.concat(frames, ignore_index=True)
        schema = pa.ipc.read_schema(pa.py_buffer(schema_json)) if schema_json else None
        for bucket, rows in pdf.groupby(BUCKET_COL, sort=True):
            whole = storage.join(uri, parquet_files.bucket_name(bucket))
            if skip_existing and not partition_by and storage.exists(whole):  # before any transform
                yield pd.DataFrame({"path": [whole], "rows": [file_rows(whole)],
                                    "status": ["skipped"]})
                continue
            if transform is not None:
                rows = transform(rows.drop(columns=[BUCKET_COL])).assign(**{BUCKET_COL: bucket})
            for group, part in rows.groupby(partition_by + [BUCKET_COL], sort=True):
                group = group if isinstance(group, tuple) else (group,)
                folder = uri
                for col, value in zip(partition_by, group[:-1]):
                    folder = storage.join(folder, f"{col}={value}")
                path = storage.join(folder, parquet_files.bucket_name(group[-1]))
                if skip_existing and partition_by and storage.exists(path):  # unpartitioned: checked above
                    status = "skipped"
                else:
                    part = part.sort_values(order, kind="stable").drop(columns=partition_by + [BUCKET_COL])
                    table = pa.Table.from_pandas(part, preserve_index=False)
                    if schema is not None:
                        table = parquet_files.conform(table, schema)
                    table = table.replace_schema_metadata(
                        parquet_files.with_bucketing(table.schema, key, n_buckets).metadata)
                    storage.write_bytes(path, parquet_files.parquet_bytes(table))
                    status = "written"
                yield pd.DataFrame({"path": [path], "rows": [len(part)], "status": [status]})

    out = bucketed.repartition(n_buckets, BUCKET_COL).mapInPandas(
        write, "path string, rows long, status string")
    # collect, then sort here: a Spark sort would sample (and so run) the writing tasks twice
    return sorted((r.asDict() for r in out.collect()), key=lambda r: r["path"])


def read_parquet(spark: SparkSession, uri: str) -> DataFrame:
    """Read a dataset written by :func:`write_parquet` (local or s3://), one Spark task per file.

    Hive partition columns (``col=value`` folders) are restored as string columns.
    """
    files = dataset_files(uri)
    if not files:
        raise DatasetError(f"{uri}: no Parquet files found")
    check_readable(files)
    parts = partition_values(uri, files[0])
    arrow_schema = pa.schema([f for f in file_schema(files[0]) if f.name not in parts] +
                             [pa.field(k, pa.string()) for k in parts])
    spark_schema = from_arrow_schema(_spark_compatible(arrow_schema))

    def read(batches):
        for batch in batches:
            for path in batch["path"]:
                table = read_table(path)
                table = table.cast(_spark_compatible(table.schema))
                df = table.to_pandas()
                for k, v in partition_values(uri, path).items():
                    df[k] = v
                yield df[[f.name for f in arrow_schema]]

    paths = spark.createDataFrame([(f,) for f in files], "path string").repartition(len(files))
    return paths.mapInPandas(read, spark_schema)


def _spark_compatible(schema: pa.Schema) -> pa.Schema:
    """Spark 3.5 has no fixed-size list or float16 type: read them as variable-size lists of the
    same values, float16 as float32."""
    fields = []
    for f in schema:
        t = f.type
        if pa.types.is_fixed_size_list(t):
            t = pa.list_(pa.float32() if pa.types.is_float16(t.value_type) else t.value_type)
        fields.append(pa.field(f.name, t, f.nullable))
    return pa.schema(fields)


def write_json(uri: str, obj: dict) -> None:
    """Write a small JSON summary (funnel, report) beside a dataset."""
    storage.write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
