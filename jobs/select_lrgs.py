"""Stage 1: select LRG lens hosts from Legacy Survey sweep/Tractor catalogues (DR8, DR9, DR10).

    python -m jobs.select_lrgs --input PATH_OR_GLOB [...] --output PATH [--config conf/lrg_selection.yaml]

``--input``: folders, globs, list files or single files, local or s3:// (see
:func:`udfs.survey.tractor_catalog.expand_inputs`). Spark distributes the file list; each task reads its
files with astropy through :mod:`udfs.io.storage` and applies the cuts vectorised
(:mod:`udfs.targets.lrg_targets`). Output: a Parquet dataset of targets (schema
:data:`udfs.targets.lrg_targets.TARGET_SCHEMA`) and ``<output>/_funnel.json`` (rows removed per cut,
realised split fractions, provenance), also printed. A bad file, a missing column or an unknown
data release stops the job with exit code 2 and a message naming the file and column.
"""
from __future__ import annotations

import argparse
import json
import sys

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from jobs.spark import get_spark, write_json, write_parquet
from udfs.io import storage
from udfs.targets.lrg_cuts import LRG_CUTS, load_config
from udfs.targets.lrg_targets import PSF_CUT, TARGET_SCHEMA, select_targets
from udfs.config.provenance import REPO_ROOT, code_version, config_hash
from udfs.survey.tractor_catalog import CatalogError, expand_inputs, read_catalog
from udfs.config.checker import ConfigError

DEFAULT_CONFIG = str(REPO_ROOT / "conf" / "lrg_selection.yaml")
DUPLICATE_CUT = "duplicate_target_id"


def _process_files(raw_config: dict, chash: str, version: str):
    """mapInPandas body: one output row per file (funnel JSON and the targets as Arrow IPC)."""
    def run(batches):
        import pandas as pd

        from udfs.targets.lrg_cuts import parse_config

        cfg = parse_config(raw_config)
        for batch in batches:
            for path in batch["path"]:
                try:
                    targets, steps, stats = select_targets(read_catalog(path), cfg, config_hash=chash,
                                                           code_version=version)
                except CatalogError as exc:
                    yield pd.DataFrame({"path": [path], "error": [str(exc)], "funnel": [None],
                                        "targets": [None]})
                    continue
                table = pa.Table.from_pandas(targets, schema=TARGET_SCHEMA, preserve_index=False)
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, TARGET_SCHEMA) as writer:
                    writer.write_table(table)
                yield pd.DataFrame({"path": [path], "error": [None],
                                    "funnel": [json.dumps({"steps": steps, **stats})],
                                    "targets": [sink.getvalue().to_pybytes()]})
    return run


def _explode(batches):
    for batch in batches:
        for blob in batch["targets"]:
            if blob is not None:
                yield pa.ipc.open_stream(pa.py_buffer(blob)).read_all().to_pandas()


def _merge_funnels(funnels: list[dict], cut_order: list[str]) -> tuple[list[tuple[str, int]], dict]:
    removed: dict[str, int] = {}
    totals: dict[str, dict[str, int]] = {"data_releases": {}, "photsys_applied": {}, "psf_fwhm_sources": {}}
    for fn in funnels:
        for name, n in fn["steps"]:
            removed[name] = removed.get(name, 0) + n
        for key in totals:
            for k, v in fn[key].items():
                totals[key][k] = totals[key].get(k, 0) + v
    order = [c for c in cut_order if c in removed] + sorted(c for c in removed if c not in cut_order)
    return [(c, removed[c]) for c in order], totals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jobs.select_lrgs", description=__doc__.split("\n")[1])
    ap.add_argument("--input", nargs="+", required=True,
                    help="catalogue folder(s), glob(s), list file(s) or file(s); local or s3://")
    ap.add_argument("--output", required=True, help="output dataset folder (local or s3://)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="selection config (default: %(default)s)")
    ap.add_argument("--partitions", type=int, default=None,
                    help="Spark tasks for the file list (default: one per file, at most 4x cores)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        files = expand_inputs(args.input)
    except (ConfigError, CatalogError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    chash, version = config_hash(cfg.raw), code_version()
    spark = get_spark("lensinj-select-lrgs")
    n_parts = args.partitions or max(1, min(len(files), 4 * spark.sparkContext.defaultParallelism))
    per_file = (spark.createDataFrame([(f,) for f in files], "path string").repartition(n_parts)
                .mapInPandas(_process_files(cfg.raw, chash, version),
                             "path string, error string, funnel string, targets binary")
                .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        meta = per_file.select("path", "error", "funnel").orderBy("path").collect()
        errors = [r["error"] for r in meta if r["error"]]
        if errors:
            for e in errors:
                print(f"error: {e}", file=sys.stderr)
            print(f"error: {len(errors)} of {len(files)} input files failed; nothing written",
                  file=sys.stderr)
            return 2

        targets = per_file.select("targets").mapInPandas(_explode, from_arrow_schema(TARGET_SCHEMA))
        first = Window.partitionBy("target_id").orderBy("source_file")
        unique = (targets.withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n")
                  .persist(StorageLevel.MEMORY_AND_DISK))
        written = write_parquet(unique, args.output, key=["target_id"], n_buckets=cfg.n_buckets,
                                arrow_schema=TARGET_SCHEMA)
        n_out = sum(r["rows"] for r in written)
        cells = unique.groupBy("healpix", "split").count().collect()  # one row per (cell, split)
        unique.unpersist()
    finally:
        per_file.unpersist()

    split_counts: dict[str, int] = {}
    labels_per_cell: dict[int, int] = {}
    for r in cells:
        split_counts[r["split"]] = split_counts.get(r["split"], 0) + r["count"]
        labels_per_cell[r["healpix"]] = labels_per_cell.get(r["healpix"], 0) + 1
    mixed_cells = sum(1 for v in labels_per_cell.values() if v > 1)
    n_cells = len(labels_per_cell)
    funnels = [json.loads(r["funnel"]) for r in meta]
    n_in = sum(f["input_rows"] for f in funnels)
    cut_order = list(LRG_CUTS) + ["q_brick_primary", "q_type", "q_maskbits", "q_nobs"] + \
        [f"q_mag_{b}" for b in sorted(cfg.mag_limits)] + [PSF_CUT]
    steps, totals = _merge_funnels(funnels, cut_order)
    n_selected = n_in - sum(n for _, n in steps)
    steps.append((DUPLICATE_CUT, n_selected - n_out))
    if n_in - sum(n for _, n in steps) != n_out:
        raise RuntimeError(f"funnel does not add up: {n_in} in, {steps}, {n_out} written")
    remaining, cuts = n_in, []
    for name, n in steps:
        remaining -= n
        cuts.append({"cut": name, "removed": n, "remaining": remaining})
    names = list(cfg.split_fractions)
    report = {
        "input_files": len(files), "input_rows": n_in, "selected": n_out, "cuts": cuts,
        **totals,
        "healpix": {"nside": cfg.healpix_nside, "order": "nested", "occupied_cells": n_cells,
                    "cells_in_more_than_one_split": mixed_cells},
        "splits": {"seed": cfg.split_seed, "requested": cfg.split_fractions,
                   "realised": {k: (split_counts.get(k, 0) / n_out if n_out else 0.0) for k in names},
                   "counts": {k: split_counts.get(k, 0) for k in names}},
        "cut_version": cfg.cut_version, "config_hash": chash, "code_version": version,
        "config": cfg.raw, "output": args.output, "files": [r["path"] for r in written],
    }
    if mixed_cells:
        raise RuntimeError(f"{mixed_cells} HEALPix cells carry more than one split label")
    write_json(storage.join(args.output, "_funnel.json"), report)

    print(f"LRG selection ({cfg.cut_version}, config {chash}): {len(files)} files, {n_in} rows")
    for c in cuts:
        print(f"  {c['cut']:<24s} removed {c['removed']:>10d}   remaining {c['remaining']:>10d}")
    realised = ", ".join(f"{k} {v:.4f} (asked {cfg.split_fractions[k]:.4f})"
                         for k, v in report["splits"]["realised"].items())
    print(f"selected {n_out} targets in {n_cells} HEALPix cells (nside {cfg.healpix_nside}); splits: {realised}")
    print(f"wrote {args.output} and {storage.join(args.output, '_funnel.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
