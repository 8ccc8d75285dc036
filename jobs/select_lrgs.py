"""Stage 1: select LRG lens hosts from Legacy Survey sweep/Tractor catalogues (DR8, DR9, DR10).

    python -m jobs.select_lrgs --input PATH_OR_GLOB [...] --output PATH [--config conf/lrg_selection.yaml]
        [--photo-z DIR]

``--input``: folders, globs, list files or single files, local or s3:// (see
:func:`udfs.survey.tractor_catalog.expand_inputs`). Spark distributes the file list; each task reads its
files with astropy through :mod:`udfs.io.storage` and applies the cuts vectorised
(:mod:`udfs.targets.funnel`, :mod:`udfs.targets.lrg_targets`). Output: a Parquet dataset of targets
(schema :data:`udfs.schemas.targets.TARGET_SCHEMA`) and ``<output>/_funnel.json`` (rows removed per
cut, realised split fractions, provenance), also printed. The funnel and the split invariants are
checked before anything is written. Each target's lens redshift ``z_l`` comes from its
catalogue's photo-z companion ``<stem>-pz.fits`` in ``--photo-z DIR`` (the DR9/DR10
``sweep/<dr>-photo-z/`` files) when there is one, else from its colours; ``zl_source`` says which
(:mod:`udfs.targets.host_properties`), and the funnel report counts each. A bad file, a missing column or an unknown data release stops
the job with exit code 2 and a message naming the file and column.
"""
from __future__ import annotations

import argparse
import json
import sys

from pyspark import StorageLevel
from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from jobs.cli import job_main
from jobs.spark import get_spark, write_json, write_parquet
from udfs.config.provenance import REPO_ROOT, code_version, config_hash
from udfs.io import storage
from udfs.io.publish import publishing
from udfs.schemas.targets import TARGET_SCHEMA
from udfs.survey.tractor_catalog import CatalogError, expand_inputs
from udfs.targets.funnel import (PER_FILE_DDL, explode_targets, failed_files_error, file_selector, funnel_report,
                                 report_lines)
from udfs.targets.lrg_cuts import load_config

DEFAULT_CONFIG = str(REPO_ROOT / "conf" / "lrg_selection.yaml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="jobs.select_lrgs", description=__doc__.split("\n")[1])
    ap.add_argument("--input", nargs="+", required=True,
                    help="catalogue folder(s), glob(s), list file(s) or file(s); local or s3://")
    ap.add_argument("--output", required=True, help="output dataset folder (local or s3://)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="selection config (default: %(default)s)")
    ap.add_argument("--photo-z", dest="photo_z", default=None,
                    help="folder of the catalogues' photo-z companion files <stem>-pz.fits (local or s3://)")
    ap.add_argument("--partitions", type=int, default=None,
                    help="Spark tasks for the file list (default: one per file, at most 4x cores)")
    return ap.parse_args(argv)


@job_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage.check_writable(args.output, folder=True)  # before any input is read
    cfg = load_config(args.config)
    files = expand_inputs(args.input)
    if args.photo_z and not storage.exists(args.photo_z):
        raise CatalogError(f"--photo-z {args.photo_z}: no such folder")
    chash, version = config_hash(cfg.raw), code_version()
    with publishing(args.output, job="jobs.select_lrgs", config_hash=chash) as output:
        report = _select(args, cfg, files, chash, version)
        output.commit(report["files"])
    print("\n".join(report_lines(report, cfg)))
    print(f"wrote {args.output} and {storage.join(args.output, '_funnel.json')}")
    return 0


def _select(args, cfg, files: list[str], chash: str, version: str) -> dict:
    """Select, deduplicate and write the targets and ``_funnel.json``; return the funnel report."""
    spark = get_spark("lensinj-select-lrgs")
    n_parts = args.partitions or max(1, min(len(files), 4 * spark.sparkContext.defaultParallelism))
    per_file = (spark.createDataFrame([(f,) for f in files], "path string").repartition(n_parts)
                .mapInPandas(file_selector(cfg.raw, chash, version, args.photo_z), PER_FILE_DDL)
                .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        meta = per_file.select("path", "error", "funnel").orderBy("path").collect()
        errors = [r["error"] for r in meta if r["error"]]
        if errors:
            raise failed_files_error(errors, len(files))
        targets = per_file.select("targets").mapInPandas(explode_targets, from_arrow_schema(TARGET_SCHEMA))
        first = Window.partitionBy("target_id").orderBy("source_file")
        unique = (targets.withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n")
                  .persist(StorageLevel.MEMORY_AND_DISK))
        cells = [(r["healpix"], r["split"], r["count"]) for r in unique.groupBy("healpix", "split").count().collect()]
        report = funnel_report([json.loads(r["funnel"]) for r in meta], cells, cfg, n_files=len(files),
                               chash=chash, version=version, output=args.output)
        written = write_parquet(unique, args.output, key=["target_id"], n_buckets=cfg.n_buckets,
                                arrow_schema=TARGET_SCHEMA)
        unique.unpersist()
    finally:
        per_file.unpersist()
    if sum(r["rows"] for r in written) != report["selected"]:
        raise RuntimeError(f"wrote {sum(r['rows'] for r in written)} rows, expected {report['selected']}")
    report["files"] = [r["path"] for r in written]
    write_json(storage.join(args.output, "_funnel.json"), report)
    return report


if __name__ == "__main__":
    sys.exit(main())
