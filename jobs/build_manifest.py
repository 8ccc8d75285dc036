"""Stage 3: build the injection manifest (targets x configs x replicates, plus paired controls).

    python -m jobs.build_manifest --targets PATH --config conf/injection_priors.yaml --output PATH [--bank BANK.h5]

The manifest is written to ``<output>/<manifest_hash>/`` where the hash covers the whole priors
config and the bank size: a changed config lands in a new folder, never over an old manifest.
Rerunning with the same targets and config rewrites byte-identical files; pointing the same
config at different targets into the same folder is refused. ``<output>/<hash>/_manifest.json``
records the ``location``, counts, per-config hashes and provenance (stage 5 reads the location
from it). Row semantics: :mod:`udfs.stamps.manifest`; columns: :mod:`udfs.schemas.manifest`.
"""
from __future__ import annotations

import argparse
import functools
import sys

from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from jobs.cli import job_main
from jobs.spark import get_spark, read_parquet, write_json, write_parquet
from udfs.config.provenance import code_version, config_hash
from udfs.io import storage
from udfs.io.datasets import DatasetError, open_dataset
from udfs.io.publish import publishing
from udfs.schemas.cutouts import BUCKET_KEY
from udfs.schemas.manifest import MANIFEST_SCHEMA, ROW_ORDER, SUMMARY_FILE
from udfs.schemas.targets import DEFLECTOR_INPUT_COLUMNS, MANIFEST_INPUT_COLUMNS
from udfs.stamps.manifest import (bank_sources_of, build_partition, check_location_free, check_targets,
                                  config_hashes, count_line, manifest_hash, manifest_report,
                                  needs_deflector_columns)
from udfs.stamps.priors import load_config

TARGETS = "the output of jobs.select_lrgs"


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="jobs.build_manifest", description=__doc__.split("\n")[1])
    ap.add_argument("--targets", required=True, help="targets dataset from jobs.select_lrgs (local or s3://)")
    ap.add_argument("--config", required=True, help="priors config, e.g. conf/injection_priors.yaml")
    ap.add_argument("--output", required=True, help="manifest root; the dataset goes to <output>/<hash>/")
    ap.add_argument("--bank", default=None, help="source bank HDF5: its size overrides bank_size; its galaxies' "
                    "photo-z and brightness are needed by lens_mode deflector and src_redshift/src_brightness own")
    return ap.parse_args(argv)


def read_targets(spark, uri: str, columns: list[str]):
    """The manifest's target columns, checked (unique ids, no nulls); ``(DataFrame, n_targets)``."""
    targets = read_parquet(spark, uri).select(*columns).persist()
    stats = targets.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("target_id").alias("ids"),
                        *[F.sum(F.col(c).isNull().cast("int")).alias(c) for c in columns]).first()
    duplicate = None
    if stats["ids"] != stats["n"]:
        dup = targets.groupBy("target_id").count().filter("count > 1").orderBy("target_id").first()
        duplicate = (dup["target_id"], dup["count"])
    try:
        check_targets(uri, stats["n"], duplicate, {c: stats[c] for c in columns})
    except DatasetError:
        targets.unpersist()
        raise
    return targets, stats["n"]


@job_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage.check_writable(args.output, folder=True)  # before any input is read
    plan = load_config(args.config)
    bank, bank_source = bank_sources_of(plan, args.bank, args.config)
    columns = list(MANIFEST_INPUT_COLUMNS) + (list(DEFLECTOR_INPUT_COLUMNS) if needs_deflector_columns(plan) else [])
    target_files, _ = open_dataset(args.targets, TARGETS, columns)
    chashes = config_hashes(plan, bank)
    mhash = manifest_hash(plan, bank)
    location = storage.join(args.output, mhash)
    fingerprint = config_hash([[f[len(args.targets):], storage.size(f)] for f in target_files])
    check_location_free(location, fingerprint)

    spark = get_spark("lensinj-build-manifest")
    targets, n_targets = read_targets(spark, args.targets, columns)
    version = code_version()
    run = functools.partial(build_partition, plan=plan, bank=bank, chashes=chashes, code_version=version)
    tasks = targets.mapInPandas(run, from_arrow_schema(MANIFEST_SCHEMA))
    with publishing(location, job="jobs.build_manifest", config_hash=mhash) as output:
        written = write_parquet(tasks, location, key=list(BUCKET_KEY), order=list(ROW_ORDER),
                                n_buckets=plan.n_buckets, arrow_schema=MANIFEST_SCHEMA)
        targets.unpersist()
        report = manifest_report(plan, chashes, location=location, mhash=mhash, written=written, n_targets=n_targets,
                                 targets=args.targets, fingerprint=fingerprint, bank_size=bank.size,
                                 bank_source=bank_source, code_version=version)
        write_json(storage.join(location, SUMMARY_FILE), report)
        output.commit([w["path"] for w in written])
    print(f"manifest {mhash}: {report['rows']} rows = {count_line(plan, n_targets)}")
    print(f"wrote {location}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
