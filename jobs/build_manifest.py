"""Stage 3: build the injection manifest (targets x configs x replicates, plus paired controls).

    python -m jobs.build_manifest --targets PATH --config conf/injection_priors.yaml --output PATH [--bank BANK.h5]

The manifest is written to ``<output>/<manifest_hash>/`` where the hash covers the whole priors
config and the bank size: a changed config lands in a new folder, never over an old manifest.
Rerunning with the same targets and config rewrites byte-identical files; pointing the same
config at different targets into the same folder is refused. ``<output>/<hash>/_manifest.json``
records counts, per-config hashes and provenance. Row semantics: :mod:`udfs.stamps.manifest`.
"""
from __future__ import annotations

import argparse
import json
import sys

from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from jobs.spark import dataset_files, get_spark, read_parquet, write_json, write_parquet
from udfs.io import storage
from udfs.stamps.manifest import (MANIFEST_SCHEMA, TARGET_COLUMNS, build_tasks, config_hashes, load_config,
                           manifest_hash)
from udfs.config.provenance import code_version, config_hash
from udfs.config.checker import ConfigError


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="jobs.build_manifest", description=__doc__.split("\n")[1])
    ap.add_argument("--targets", required=True, help="targets dataset from jobs.select_lrgs (local or s3://)")
    ap.add_argument("--config", required=True, help="priors config, e.g. conf/injection_priors.yaml")
    ap.add_argument("--output", required=True, help="manifest root; the dataset goes to <output>/<hash>/")
    ap.add_argument("--bank", default=None, help="source bank HDF5: its size overrides bank_size")
    args = ap.parse_args(argv)
    try:
        plan = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.bank:
        from udfs.sources.bank import read_bank

        try:
            bank_size = int(read_bank(args.bank).images.shape[0])
        except (ValueError, FileNotFoundError) as exc:
            return _fail(f"--bank {args.bank}: {exc}")
        bank_source = args.bank
    elif plan.bank_size is not None:
        bank_size, bank_source = plan.bank_size, f"{args.config}: bank_size"
    else:
        return _fail(f"{args.config}: bank_size: is null, so --bank PATH must give the source bank")
    if bank_size < 1:
        return _fail(f"--bank {args.bank}: the bank holds no galaxies")

    target_files = dataset_files(args.targets)
    if not target_files:
        return _fail(f"{args.targets}: no Parquet files found (expected the output of jobs.select_lrgs)")
    chashes = config_hashes(plan, bank_size)
    mhash = manifest_hash(plan, bank_size)
    location = storage.join(args.output, mhash)
    fingerprint = config_hash([[f[len(args.targets):], storage.size(f)] for f in target_files])
    summary_uri = storage.join(location, "_manifest.json")
    if storage.exists(summary_uri):
        previous = json.loads(storage.read_bytes(summary_uri))
        if previous.get("targets_fingerprint") != fingerprint:
            return _fail(f"{location} already holds the manifest of this config for other targets "
                         f"({previous.get('targets')}); choose another --output")

    spark = get_spark("lensinj-build-manifest")
    targets = read_parquet(spark, args.targets)
    missing = [c for c in TARGET_COLUMNS if c not in targets.columns]
    if missing:
        return _fail(f"{args.targets}: missing column{'s' if len(missing) > 1 else ''} "
                     f"{', '.join(missing)} (needed by the manifest)")
    targets = targets.select(*TARGET_COLUMNS).persist()
    stats = targets.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("target_id").alias("ids"),
                        *[F.sum(F.col(c).isNull().cast("int")).alias(c) for c in TARGET_COLUMNS]).first()
    n_targets = stats["n"]
    if stats["ids"] != n_targets:
        targets.unpersist()
        dup = targets.groupBy("target_id").count().filter("count > 1").orderBy("target_id").first()
        return _fail(f"{args.targets}: column target_id: {dup['target_id']!r} occurs {dup['count']} "
                     "times (seeds would repeat)")
    bad = [c for c in TARGET_COLUMNS if stats[c]]
    if bad:
        targets.unpersist()
        return _fail(f"{args.targets}: column {bad[0]}: {stats[bad[0]]} null values")

    version = code_version()

    def run(batches):
        for pdf in batches:
            yield build_tasks(pdf, plan, bank_size, chashes, version)

    tasks = targets.mapInPandas(run, from_arrow_schema(MANIFEST_SCHEMA))
    written = write_parquet(tasks, location, key=["task_id"], n_buckets=plan.n_buckets,
                            arrow_schema=MANIFEST_SCHEMA)
    targets.unpersist()
    n_rows = sum(r["rows"] for r in written)
    per_target = len(plan.configs) * plan.replicates
    expected = n_targets * per_target * (2 if plan.paired_controls else 1)
    if n_rows != expected:
        raise RuntimeError(f"manifest has {n_rows} rows, expected {expected} = {n_targets} targets x "
                           f"{len(plan.configs)} configs x {plan.replicates} replicates"
                           + (" x 2 (paired controls)" if plan.paired_controls else ""))
    report = {
        "location": location, "manifest_hash": mhash, "rows": n_rows,
        "injected": n_targets * per_target, "controls": n_rows - n_targets * per_target,
        "targets": args.targets, "n_targets": n_targets, "targets_fingerprint": fingerprint,
        "replicates": plan.replicates, "paired_controls": plan.paired_controls,
        "configs": [{"name": c.name, "config_hash": h, "src_mode": c.src_mode}
                    for c, h in zip(plan.configs, chashes)],
        "bank_size": bank_size, "bank_size_from": bank_source, "version": plan.version,
        "code_version": version, "config": plan.raw, "files": [r["path"] for r in written],
    }
    write_json(summary_uri, report)
    print(f"manifest {mhash}: {n_rows} rows = {n_targets} targets x {len(plan.configs)} configs x "
          f"{plan.replicates} replicates" + (" x 2 (paired controls)" if plan.paired_controls else ""))
    print(f"wrote {location}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
