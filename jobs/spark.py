"""Spark session and Parquet dataset I/O shared by every job.

Spark distributes the work; file I/O goes through :mod:`udfs.io.storage` (pyarrow) inside the tasks, so
local paths and ``s3://`` URIs behave the same in local mode (no Hadoop S3 connector needed) and on
EMR. Datasets are written deterministically: rows are hashed into a fixed number of buckets by a
key, each bucket is one file ``[<col>=<value>/]part-<bucket>.parquet`` sorted by the key, so a
rerun rewrites the same files with the same bytes and never duplicates rows.
"""
from __future__ import annotations

import io
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from udfs.io import storage
from udfs.io.datasets import DatasetError, dataset_files, file_schema, partition_values

BUCKET_COL = "_bucket"


def get_spark(app_name: str, conf: dict | None = None) -> SparkSession:
    """Return a session: the submit's master under spark-submit, else ``$LENSINJ_SPARK_MASTER``
    (default ``local[2]``).

    Python workers use the driver's interpreter (the project's virtualenv) unless
    ``PYSPARK_PYTHON`` says otherwise; BLAS/OpenMP/numba threads are pinned to 1 per task.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not launched by spark-submit
        builder = builder.master(os.environ.get("LENSINJ_SPARK_MASTER", "local[2]"))
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
    for key, value in {**settings, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a table to Parquet bytes with fixed writer options (byte-identical reruns)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", compression_level=3, write_statistics=True)
    return buf.getvalue()


def bucket_of(key: list[str], n_buckets: int):
    """The bucket (file) a row goes to: ``pmod(xxhash64(key...), n_buckets)``."""
    return F.pmod(F.xxhash64(*key), F.lit(n_buckets))


def write_parquet(df: DataFrame, uri: str, *, key: list[str], n_buckets: int,
                  partition_by: list[str] | None = None, arrow_schema: pa.Schema | None = None,
                  skip_existing: bool = False) -> list[dict]:
    """Write ``df`` as a Parquet dataset under ``uri``; return one summary dict per file written.

    ``key``: columns that identify a row; they choose the bucket (xxhash64) and the row order.
    ``partition_by``: hive-style folders (e.g. ``split``). ``arrow_schema``: cast each file to it
    (e.g. fixed-size lists for pixel arrays) and keep its metadata. ``skip_existing``: leave files
    that already exist untouched (resume after a killed run; content is the same by construction).
    """
    partition_by = list(partition_by or [])
    schema_json = arrow_schema.serialize().to_pybytes() if arrow_schema is not None else None
    bucketed = df.withColumn(BUCKET_COL, bucket_of(key, n_buckets))

    def write(batches):
        import pandas as pd

        frames = [b for b in batches if len(b)]
        if not frames:
            return
        pdf = pd.concat(frames, ignore_index=True)
        schema = pa.ipc.read_schema(pa.py_buffer(schema_json)) if schema_json else None
        for group, part in pdf.groupby(partition_by + [BUCKET_COL], sort=True):
            group = group if isinstance(group, tuple) else (group,)
            folder = uri
            for col, value in zip(partition_by, group[:-1]):
                folder = storage.join(folder, f"{col}={value}")
            path = storage.join(folder, f"part-{int(group[-1]):05d}.parquet")
            if skip_existing and storage.exists(path):
                status = "skipped"
            else:
                part = part.sort_values(key, kind="stable").drop(columns=partition_by + [BUCKET_COL])
                table = pa.Table.from_pandas(part, preserve_index=False)
                if schema is not None:
                    table = _null_lists_to_null_items(table.select(schema.names), schema).cast(schema)
                storage.write_bytes(path, parquet_bytes(table))
                status = "written"
            yield pd.DataFrame({"path": [path], "rows": [len(part)], "status": [status]})

    out = bucketed.repartition(n_buckets, BUCKET_COL).mapInPandas(
        write, "path string, rows long, status string")
    # collect, then sort here: a Spark sort would sample (and so run) the writing tasks twice
    return sorted((r.asDict() for r in out.collect()), key=lambda r: r["path"])


def _null_lists_to_null_items(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Columns bound for a fixed-size list of size n: a null entry becomes n null items.

    pyarrow 17's Parquet writer cannot store null fixed-size lists (it raises, or after a cast from
    variable-size lists writes a file that cannot be read back), so e.g. the pixels of a failed row
    are stored as a list of nulls: no value, never a zero.
    """
    import pyarrow.compute as pc

    for i, field in enumerate(schema):
        col = table.column(i)
        if not (pa.types.is_fixed_size_list(field.type) and col.null_count):
            continue
        n = field.type.list_size
        if pa.types.is_null(col.type):  # every entry null (pandas gave no element type)
            items = pa.FixedSizeListArray.from_arrays(pa.nulls(len(col) * n, field.type.value_type), n)
            table = table.set_column(i, field, items)
        elif not pa.types.is_fixed_size_list(col.type):
            empty = pa.scalar([None] * n, col.type)
            table = table.set_column(i, table.field(i), pc.if_else(pc.is_null(col), empty, col))
    return table


def read_parquet(spark: SparkSession, uri: str) -> DataFrame:
    """Read a dataset written by :func:`write_parquet` (local or s3://), one Spark task per file.

    Hive partition columns (``col=value`` folders) are restored as string columns.
    """
    files = dataset_files(uri)
    if not files:
        raise DatasetError(f"{uri}: no Parquet files found")
    parts = partition_values(uri, files[0])
    arrow_schema = pa.schema([f for f in file_schema(files[0]) if f.name not in parts] +
                             [pa.field(k, pa.string()) for k in parts])
    spark_schema = from_arrow_schema(_spark_compatible(arrow_schema))

    def read(batches):
        for batch in batches:
            for path in batch["path"]:
                table = pq.read_table(storage.open_input(path))
                table = table.cast(_spark_compatible(table.schema))
                df = table.to_pandas()
                for k, v in partition_values(uri, path).items():
                    df[k] = v
                yield df[[f.name for f in arrow_schema]]

    paths = spark.createDataFrame([(f,) for f in files], "path string").repartition(len(files))
    return paths.mapInPandas(read, spark_schema)


def _spark_compatible(schema: pa.Schema) -> pa.Schema:
    """Spark 3.5 has no fixed-size list type: read them as variable-size lists of the same values."""
    fields = []
    for f in schema:
        t = f.type
        if pa.types.is_fixed_size_list(t):
            t = pa.list_(t.value_type)
        fields.append(pa.field(f.name, t, f.nullable))
    return pa.schema(fields)


def write_json(uri: str, obj: dict) -> None:
    """Write a small JSON summary (funnel, report) beside a dataset."""
    storage.write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
