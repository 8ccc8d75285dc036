"""Real lens deflectors from published lens lists as stage-1 targets, plus their Tractor-format catalogue.

    python -m jobs.build_lens_hosts --output DIR --catalog FILE.fits [--config conf/lens_hosts.yaml]
        [--with-targets TARGETS]

Selects ``n_hosts`` deflectors of the configured lists (real positions, types, grz photometry and
redshifts; documented sizes and shapes: :mod:`udfs.targets.lens_hosts`) and writes them as a targets
dataset (:data:`udfs.schemas.targets.TARGET_SCHEMA`) to ``DIR``, together with the rows of
``--with-targets`` (e.g. stage 1's LRGs: one dataset holding both, for stages 3 and 4), and their
catalogue ``FILE.fits`` for ``jobs.make_sample_sky --catalogs``. ``DIR/_hosts.json`` records counts
and provenance. A target id in both sets stops the job (exit 2).
"""
from __future__ import annotations

import argparse
import sys

from jobs.cli import job_main
from udfs.config.provenance import REPO_ROOT, code_version, config_hash
from udfs.io import storage
from udfs.schemas.targets import TARGET_SCHEMA
from udfs.targets.lens_hosts import LensHostError, catalog_fits, host_tables, load_config, select_hosts

DEFAULT_CONFIG = str(REPO_ROOT / "conf" / "lens_hosts.yaml")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.build_lens_hosts", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="targets dataset folder to write (local or s3://)")
    p.add_argument("--catalog", required=True, help="Tractor-format FITS catalogue of the hosts to write")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="hosts config (default: %(default)s)")
    p.add_argument("--with-targets", help="a targets dataset whose rows are written with the hosts")
    return p.parse_args(argv)


@job_main
def main(argv=None) -> int:
    import pandas as pd
    from pyspark.sql.pandas.types import from_arrow_schema

    from jobs.spark import get_spark, read_parquet, write_json, write_parquet
    from udfs.io.datasets import open_dataset
    from udfs.io.publish import publishing

    args = parse_args(argv)
    storage.check_writable(args.output, folder=True)  # before any input is read
    cfg = load_config(args.config)
    chash, version = config_hash(cfg.raw), code_version()
    if args.with_targets:
        open_dataset(args.with_targets, "the targets dataset (--with-targets)", list(TARGET_SCHEMA.names))
    rows, counts = select_hosts(cfg)
    hosts, catalog = host_tables(rows, cfg, chash=chash, version=version)
    spark = get_spark("build_lens_hosts")
    df = spark.createDataFrame(hosts, schema=from_arrow_schema(TARGET_SCHEMA))
    n_with = 0
    if args.with_targets:
        other = read_parquet(spark, args.with_targets).select(*TARGET_SCHEMA.names)
        clash = other.join(df.select("target_id"), "target_id").limit(1).collect()
        if clash:
            raise LensHostError(f"--with-targets {args.with_targets}: target_id {clash[0]['target_id']!r} "
                                "is also a lens host")
        n_with = other.count()
        df = df.unionByName(other)
    storage.write_bytes(args.catalog, catalog_fits(catalog))
    with publishing(args.output, job="jobs.build_lens_hosts", config_hash=chash) as output:
        files = write_parquet(df, args.output, key=["target_id"], n_buckets=4, arrow_schema=TARGET_SCHEMA)
        summary = {"hosts": len(hosts), "with_targets": args.with_targets, "with_targets_rows": n_with,
                   "lists": counts, "catalog": args.catalog, "bricks": int(pd.Series(hosts["brickname"]).nunique()),
                   "zl_sources": {str(k): int(v) for k, v in hosts["zl_source"].value_counts().sort_index().items()},
                   "files": files, "config": args.config, "config_hash": chash, "code_version": version}
        write_json(storage.join(args.output, "_hosts.json"), summary)
        output.commit([f["path"] for f in files])
    print(f"lens hosts: {len(hosts)} deflectors on {summary['bricks']} bricks from "
          f"{', '.join(counts)}" + (f", with {n_with} targets of {args.with_targets}" if args.with_targets else "")
          + f" -> {args.output}; catalogue {args.catalog}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
