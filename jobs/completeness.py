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
import pyarrow.parquet as pq

from jobs.cli import InputError
from udfs.io import storage
from udfs.qa.selection_function import COUNT_COLUMNS, completeness_table, count_bins, heatmap_grid, wilson
from udfs.config.provenance import code_version, config_hash
from udfs.config.validation import ConfigError, load_config

STAMP_COLUMNS = ["task_id", "is_control", "ok"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.completeness", description=__doc__.split("\n")[0])
    p.add_argument("--stamps", required=True, help="stage-5 stamps dataset (local or s3://)")
    p.add_argument("--scores", required=True, help="Parquet file or dataset with task_id, score")
    p.add_argument("--output", required=True, help="output folder (local or s3://)")
    p.add_argument("--config", default="conf/validation.yaml", help="validation config (default conf/validation.yaml)")
    return p.parse_args(argv)


def _files(uri: str, what: str) -> list[str]:
    from jobs.spark import dataset_files

    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs_files = [uri]
    else:
        try:
            fs_files = dataset_files(uri)
        except OSError as exc:
            raise InputError(f"{uri}: cannot list the {what} ({exc})") from exc
    if not fs_files:
        raise InputError(f"{uri}: no Parquet files found (expected the {what})")
    return fs_files


def _check_columns(path: str, need: list[str]) -> None:
    names = pq.read_schema(storage.open_input(path)).names
    missing = [c for c in need if c not in names]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")


def read_columns(spark, files: list[str], columns: list[str], ddl: str):
    """A DataFrame of ``columns`` read with pyarrow inside the tasks, one task per file."""
    def read(batches):
        for batch in batches:
            for path in batch["path"]:
                with storage.open_input(path) as f:
                    yield pq.read_table(f, columns=columns).to_pandas()[columns]

    return (spark.createDataFrame([(f,) for f in files], "path string").repartition(len(files))
            .mapInPandas(read, ddl))


def run(args) -> dict:
    from pyspark.sql import functions as F

    from jobs.spark import get_spark, write_json
    from udfs.qa import plots

    try:
        cfg = load_config(args.config).completeness
    except ConfigError as exc:
        raise InputError(str(exc)) from exc
    axes = list(cfg.bins)
    stamp_files = _files(args.stamps, "stage-5 stamps dataset")
    score_files = _files(args.scores, "scores (task_id, score)")
    _check_columns(stamp_files[0], STAMP_COLUMNS + axes)
    _check_columns(score_files[0], ["task_id", "score"])

    spark = get_spark("completeness")
    stamps = read_columns(spark, stamp_files, STAMP_COLUMNS + axes,
                          "task_id string, is_control boolean, ok boolean, " +
                          ", ".join(f"{a} double" for a in axes))
    scores = read_columns(spark, score_files, ["task_id", "score"], "task_id string, score double")
    dup = scores.groupBy("task_id").count().filter("count > 1").limit(1).collect()
    if dup:
        raise InputError(f"{args.scores}: task_id {dup[0]['task_id']!r} has {dup[0]['count']} scores")
    nan_scores = scores.filter(F.col("score").isNull() | F.isnan("score")).count()
    if nan_scores:
        raise InputError(f"{args.scores}: {nan_scores} score(s) are null or NaN")
    joined = stamps.join(scores, "task_id", "left")
    tally = joined.groupBy("is_control", "ok", F.col("score").isNotNull().alias("scored")).count().collect()
    n_scores = scores.count()

    def n_of(ctl, ok, scored):
        return sum(r["count"] for r in tally if r["is_control"] is ctl and r["ok"] is ok and r["scored"] is scored)

    n_matched = sum(r["count"] for r in tally if r["scored"])
    if n_matched == 0:
        raise InputError(f"{args.scores}: no task_id matches a stamp of {args.stamps}")

    inj = joined.filter(~F.col("is_control") & F.col("ok") & F.col("score").isNotNull()).select("score", *axes)
    bins, thresholds, heat = cfg.bins, cfg.thresholds, cfg.heatmap

    def count(batches):
        for pdf in batches:
            yield count_bins(pdf, bins, thresholds, heat)

    counts = (inj.mapInPandas(count, "axis string, axis2 string, bin long, bin2 long, threshold double, "
                                      "n long, k long")
              .groupBy(*COUNT_COLUMNS[:5]).agg(F.sum("n").alias("n"), F.sum("k").alias("k")).toPandas())
    table = completeness_table(counts, bins, cfg.confidence)

    ctl_scores = np.array([r["score"] for r in joined.filter(F.col("is_control") & F.col("ok") &
                                                              F.col("score").isNotNull()).select("score").collect()])
    inj_scores = np.array([r["score"] for r in inj.select("score").collect()])
    overall, fpr = [], []
    for t in thresholds:
        for name, arr, dest in (("completeness", inj_scores, overall), ("control_fpr", ctl_scores, fpr)):
            k, n = int((arr >= t).sum()), int(arr.size)
            lo, hi = wilson(k, n, cfg.confidence)
            dest.append({"threshold": t, "n": n, "k": k, name: (k / n if n else None),
                         "ci_lo": float(lo[0]) if n else None, "ci_hi": float(hi[0]) if n else None})

    storage.write_bytes(storage.join(args.output, "completeness.parquet"),
                        _parquet(table))
    pngs = []
    for t in thresholds:
        comp, cnt = heatmap_grid(table, bins, heat, t)
        path = storage.join(args.output, f"completeness_heatmap_t{t:g}.png")
        storage.write_bytes(path, plots.heatmap(comp, bins[heat[0]], bins[heat[1]], heat[0], heat[1],
                                                   f"completeness at score >= {t:g} (n per cell)", cnt))
        pngs.append(path)
    summary = {
        "stamps": args.stamps, "scores": args.scores, "confidence": cfg.confidence,
        "thresholds": list(thresholds), "bins": {k: list(v) for k, v in bins.items()}, "heatmap": list(heat),
        "matched": {"injected_ok": n_of(False, True, True), "control_ok": n_of(True, True, True),
                    "failed_stamps_with_score": n_of(False, False, True) + n_of(True, False, True),
                    "injected_ok_without_score": n_of(False, True, False),
                    "scores_without_stamp": int(n_scores - n_matched)},
        "overall": overall, "control_false_positive_rate": fpr,
        "table": table.replace({np.nan: None}).to_dict(orient="records"),
        "outputs": {"parquet": storage.join(args.output, "completeness.parquet"), "heatmaps": pngs},
        "provenance": {"code_version": code_version(), "config_hash": config_hash(load_config(args.config).as_dict())},
    }
    write_json(storage.join(args.output, "completeness.json"), summary)
    return summary


def _parquet(df) -> bytes:
    from jobs.spark import parquet_bytes

    return parquet_bytes(pa.Table.from_pandas(df, preserve_index=False))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        s = run(args)
    except (InputError, FileNotFoundError) as exc:
        print(f"jobs.completeness: error: {exc}", file=sys.stderr)
        return 2
    parts = ", ".join(f"{o['completeness']:.3f} at >= {o['threshold']:g}" for o in s["overall"] if o["n"])
    print(f"completeness: {s['matched']['injected_ok']} scored injected stamps, {parts}; "
          f"{s['matched']['injected_ok_without_score']} without a score -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
