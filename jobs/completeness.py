"""Completeness of a lens finder on injected stamps vs theta_E, arc SNR, PSF and depth.

    python -m jobs.completeness --stamps PATH --scores SCORES --output DIR [--config conf/validation.yaml]

PATH: the stage-5 stamps dataset; SCORES: a Parquet file or dataset with columns ``task_id`` and
``score`` (one row per scored stamp; local or s3://). Spark reads the stamps' truth columns one task
per file (pyarrow, no pixels), joins the scores on task_id, and counts per bin and threshold
(:mod:`udfs.qa.selection_function`). Writes ``DIR/completeness.parquet`` (one row per axis bin or heat-map
cell and threshold: n, k, completeness, Wilson interval), ``DIR/completeness.json`` (the same plus
totals, unmatched counts and the control stamps' false-positive rate per threshold) and
``DIR/completeness_heatmap_t<threshold>.png``. Exit 2 on bad input, naming the file/column.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow as pa

from jobs.cli import job_main
from udfs.config.provenance import REPO_ROOT, code_version, config_hash
from udfs.config.validation import load_config
from udfs.io import storage
from udfs.io.datasets import open_dataset
from udfs.qa.recall import ScoreTableError
from udfs.qa.selection_function import (COUNT_COLUMNS, COUNT_DDL, bin_counter, column_reader, completeness_summary,
                                        completeness_table, heatmap_pngs, matched_counts)

DEFAULT_CONFIG = str(REPO_ROOT / "conf" / "validation.yaml")
STAMP_COLUMNS = ["task_id", "is_control", "ok"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.completeness", description=__doc__.split("\n")[0])
    p.add_argument("--stamps", required=True, help="stage-5 stamps dataset (local or s3://)")
    p.add_argument("--scores", required=True, help="Parquet file or dataset with task_id, score")
    p.add_argument("--output", required=True, help="output folder (local or s3://)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="validation config (default: %(default)s)")
    return p.parse_args(argv)


def spark_columns(spark, files: list[str], columns: list[str], ddl: str):
    """A DataFrame of ``columns`` read with pyarrow inside the tasks, one task per file."""
    return (spark.createDataFrame([(f,) for f in files], "path string").repartition(len(files))
            .mapInPandas(column_reader(columns), ddl))


def read_scores(spark, uri: str, files: list[str]):
    """The scores (task_id, score) as a DataFrame; one finite score per task_id, else ScoreTableError."""
    from pyspark.sql import functions as F

    scores = spark_columns(spark, files, ["task_id", "score"], "task_id string, score double")
    dup = scores.groupBy("task_id").count().filter("count > 1").limit(1).collect()
    if dup:
        raise ScoreTableError(f"{uri}: task_id {dup[0]['task_id']!r} has {dup[0]['count']} scores")
    nan_scores = scores.filter(F.col("score").isNull() | F.isnan("score")).count()
    if nan_scores:
        raise ScoreTableError(f"{uri}: {nan_scores} score(s) are null or NaN")
    return scores


@job_main
def main(argv=None) -> int:
    from pyspark.sql import functions as F

    from jobs.spark import get_spark, write_json
    from udfs.io.parquet_files import parquet_bytes
    from udfs.io.publish import publishing

    args = parse_args(argv)
    storage.check_writable(args.output, folder=True)  # before any input is read
    full_cfg = load_config(args.config)
    cfg = full_cfg.completeness
    axes = list(cfg.bins)
    stamp_files, _ = open_dataset(args.stamps, "the stage-5 stamps dataset", STAMP_COLUMNS + axes, allow_file=True)
    score_files, _ = open_dataset(args.scores, "the scores (task_id, score)", ["task_id", "score"], allow_file=True)
    spark = get_spark("completeness")
    stamps = spark_columns(spark, stamp_files, STAMP_COLUMNS + axes, "task_id string, is_control boolean, ok boolean, "
                          + ", ".join(f"{a} double" for a in axes))
    scores = read_scores(spark, args.scores, score_files)
    joined = stamps.join(scores, "task_id", "left")
    tally = joined.groupBy("is_control", "ok", F.col("score").isNotNull().alias("scored")).count().collect()
    matched = matched_counts([r.asDict() for r in tally], scores.count())
    if not any(r["scored"] for r in tally):
        raise ScoreTableError(f"{args.scores}: no task_id matches a stamp of {args.stamps}")

    inj = joined.filter(~F.col("is_control") & F.col("ok") & F.col("score").isNotNull()).select("score", *axes)
    counts = (inj.mapInPandas(bin_counter(cfg.bins, cfg.thresholds, cfg.heatmap), COUNT_DDL)
              .groupBy(*COUNT_COLUMNS[:5]).agg(F.sum("n").alias("n"), F.sum("k").alias("k")).toPandas())
    table = completeness_table(counts, cfg.bins, cfg.confidence)
    ctl = joined.filter(F.col("is_control") & F.col("ok") & F.col("score").isNotNull()).select("score")
    summary = completeness_summary(table, matched, np.array([r["score"] for r in inj.select("score").collect()]),
                                   np.array([r["score"] for r in ctl.collect()]), cfg)

    chash = config_hash(full_cfg.as_dict())
    with publishing(args.output, job="jobs.completeness", config_hash=chash) as output:
        parquet = storage.join(args.output, "completeness.parquet")
        storage.write_bytes(parquet, parquet_bytes(pa.Table.from_pandas(table, preserve_index=False)))
        pngs = []
        for name, png in heatmap_pngs(table, cfg.bins, cfg.heatmap, cfg.thresholds):
            pngs.append(storage.join(args.output, name))
            storage.write_bytes(pngs[-1], png)
        summary.update(stamps=args.stamps, scores=args.scores, outputs={"parquet": parquet, "heatmaps": pngs},
                       provenance={"code_version": code_version(), "config_hash": chash})
        write_json(storage.join(args.output, "completeness.json"), summary)
        output.commit([parquet])
    parts = ", ".join(f"{o['completeness']:.3f} at >= {o['threshold']:g}" for o in summary["overall"] if o["n"])
    print(f"completeness: {matched['injected_ok']} scored injected stamps, {parts}; "
          f"{matched['injected_ok_without_score']} without a score -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
