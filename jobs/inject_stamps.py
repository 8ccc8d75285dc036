"""Stage 5: inject lensed COSMOS (or Sersic) arcs into LRG cutouts -> Parquet training stamps.

    python -m jobs.inject_stamps --manifest MANIFEST --cutouts CUTOUTS --bank BANK.h5 \\
        --output STAMPS [--config conf/injection.yaml] [--skip-existing]

MANIFEST: the stage-3 manifest folder, or a root holding exactly one (its ``_manifest.json`` gives
the location; :func:`udfs.stamps.manifest.resolve_manifest`). The manifest and the cutouts (stage 4)
are bucketed alike by brick; one Spark task per bucket merges the two files on ``target_id`` and
writes that bucket's stamp files itself (:mod:`udfs.stamps.inject_bucket`): no shuffle. Each Python
worker loads the bank once. Output (:mod:`udfs.schemas.stamps`): a Parquet dataset partitioned by
``split=``, one file per bucket, pixel columns one byte-stream-split binary value per row
(:mod:`udfs.io.pixel_codec`) with shapes and band order in the schema metadata.
``<STAMPS>/_summary.json``: :mod:`udfs.stamps.summary`.

``--skip-existing`` resumes a killed run: buckets whose every split file exists are not recomputed,
and files are published whole, so the dataset ends identical to an uninterrupted run.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys

from jobs.cli import job_main
from jobs.spark import get_spark, write_json
from udfs.config.provenance import code_version, config_hash
from udfs.io import parquet_files, storage
from udfs.io.datasets import DatasetError, dataset_files, file_rows, file_schema, open_dataset, schema_metadata
from udfs.io.publish import publishing
from udfs.schemas import cutouts
from udfs.schemas import stamps as schema
from udfs.sources.bank import read_bank_info
from udfs.stamps.inject import BANK_COLUMNS, DEFAULT_CONFIG, SED_COLUMN, inject_buckets, load_settings
from udfs.stamps.inject_bucket import colocated_buckets
from udfs.stamps.manifest import moves_sources, resolve_manifest
from udfs.stamps.summary import dataset_summary



def parse_args(argv):
    ap = argparse.ArgumentParser(prog="jobs.inject_stamps", description=__doc__.split("\n")[1])
    ap.add_argument("--manifest", required=True,
                    help="stage-3 manifest: the <hash>/ folder, or a root holding exactly one")
    ap.add_argument("--cutouts", required=True, help="stage-4 cutouts dataset")
    ap.add_argument("--bank", required=True, help="source bank HDF5 (local or s3://)")
    ap.add_argument("--output", required=True, help="stamps dataset (local or s3://)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="injection settings (default conf/injection.yaml)")
    ap.add_argument("--skip-existing", action="store_true", help="resume: keep buckets whose files exist")
    return ap.parse_args(argv)


def _stamp_geometry(cutouts_uri: str) -> tuple[str, int]:
    """``(band order, stamp size N)`` of the stage-4 cutouts dataset."""
    files, file_schema = open_dataset(cutouts_uri, cutouts.WHAT, cutouts.READER_COLUMNS)
    return cutouts.stamp_geometry(files[0], schema_metadata(file_schema))


@job_main
def main(argv=None) -> int:
    args = parse_args(argv)
    storage.check_writable(args.output, folder=True)  # before any input is read
    settings = load_settings(args.config)
    bank = read_bank_info(args.bank)
    bands, n = _stamp_geometry(args.cutouts)
    if bands != settings.bands:
        raise DatasetError(f"{args.cutouts}: band order {bands!r} differs from {args.config} bands {settings.bands!r}")
    bank.check_meta(BANK_COLUMNS)
    manifest = resolve_manifest(args.manifest)
    if moves_sources(manifest):  # re-coloured through their SEDs: refuse an old bank here, not in a task
        bank.check_meta([SED_COLUMN])
    summary = run(args, manifest, settings, n, bank)
    print(json.dumps(summary, indent=1, sort_keys=True))
    print(f"stamps: {args.output}")
    return 0


def run(args, manifest: str, settings, n: int, bank) -> dict:
    cosmology = json.loads(bank.attrs.get("config", "{}")).get("cosmology", "Planck18")
    inj_hash = config_hash({"settings": settings.as_dict(), "bank": bank.attrs.get("config"),
                            "bank_code": bank.attrs.get("code_version"), "cosmology": cosmology})
    with publishing(args.output, job="jobs.inject_stamps", config_hash=inj_hash) as output:
        summary, files = _inject(args, manifest, settings, n, bank, cosmology, inj_hash)
        output.commit(files)
    return summary


def _inject(args, manifest: str, settings, n: int, bank, cosmology: str, inj_hash: str) -> tuple[dict, list[str]]:
    """Write the stamps of every co-located bucket, then ``_summary.json``; return the summary and
    the files."""
    version = code_version()
    buckets = colocated_buckets(manifest, args.cutouts)
    n_buckets = parquet_files.bucketing(file_schema(buckets[min(buckets)][0]))[1]
    arrow_schema = schema.stamp_schema(settings.bands, n, {
        "pixel_scale_arcsec": str(settings.pixel_scale), "code_version": version,
        "injection_config_hash": inj_hash, "injection_config": json.dumps(settings.as_dict(), sort_keys=True),
        "bank_catalog": str(bank.attrs.get("catalog_name", "")), "cosmology": cosmology})
    arrow_schema = parquet_files.with_bucketing(arrow_schema, list(cutouts.BUCKET_KEY), n_buckets)
    cutouts_schema = file_schema(dataset_files(args.cutouts)[0])
    # one Spark partition per bucket, largest first: tasks start in partition order, so the cores
    # finish together (longest-processing-time-first). Partition i holds only the number i
    # (spark.range: no Python feeds the tasks); its bucket's files travel in the task's closure.
    rows = sorted(((b, m, c) for b, (m, c) in buckets.items()), key=lambda r: (-file_rows(r[1]), r[0]))
    body = functools.partial(inject_buckets, buckets=rows, bank_uri=args.bank, settings=settings, stamp_size=n,
                             cosmology=cosmology, provenance={"code_version": version, "injection_config_hash": inj_hash},
                             output=args.output, schema_ipc=arrow_schema.serialize().to_pybytes(),
                             cutouts_ipc=cutouts_schema.serialize().to_pybytes(), skip_existing=args.skip_existing)
    work = get_spark("inject_stamps").range(0, len(rows), 1, len(rows))
    written = work.mapInPandas(body, "path string, rows long, status string").collect()
    summary = dataset_summary(args.output, settings.bands)
    summary.update(files_written=sum(r["status"] == "written" for r in written),
                   files_kept=sum(r["status"] == "skipped" for r in written),
                   code_version=version, injection_config_hash=inj_hash)
    write_json(storage.join(args.output, "_summary.json"), summary)
    return summary, [r["path"] for r in written]


if __name__ == "__main__":
    sys.exit(main())
