"""Stage 4: per-target image/invvar/maskbits stamps from Legacy Survey coadd bricks.

    python -m jobs.make_cutouts --targets TARGETS --coadd-base BASE --output OUT
        [--stamp-size 64] [--bands grz] [--min-good-frac 0.5] [--layout nested|flat]
        [--allow-missing-maskbits] [--n-buckets 8] [--retries 4] [--max-remote-requests 8] [--skip-existing]
        [--psf-model survey|moffat|gaussian] [--ccds TABLE] [--calib-base DIR] [--images-base DIR]
        [--moffat-beta 3.1] [--psf-flux-fraction 0.995]

TARGETS: the stage-1 Parquet dataset (columns target_id, ra, dec, brickname, split,
psf_fwhm_<band> for every requested band). BASE: local folder, s3:// or http(s):// holding
``coadd/<bri>/<brick>/legacysurvey-<brick>-*.fits.fz``. Targets are grouped by brick; each group
reads only the compressed tiles its stamps need (:mod:`udfs.survey.coadd_cutouts`).

PSF per target and band (:mod:`udfs.survey.target_psf`): by default the inverse-variance stack of
the covering CCDs' PSFEx models, from ``--ccds`` (a survey-ccds table; default the brick's
``legacysurvey-<brick>-ccds.fits`` beside its coadd files) and ``--calib-base`` (holding
``psfex/``; default ``<BASE>/calib``); where those are missing or do not cover the target, a
Moffat of the target's PSFSIZE, recorded in ``psf_source``. The stamp's noise texture per band is
measured from its source-free pixels (:mod:`udfs.survey.noise_texture`).

Output: a Parquet dataset with one row per target, bucketed by ``brickname`` (the targets alone
cross Spark's shuffle; each writing task cuts its bucket's bricks and writes the file, in the
buckets stage 3 gives the manifest, so stage 5 merges the two bucket by bucket): ``ok``, ``fail_reason``,
``image``/``invvar`` (float32) and ``maskbits`` (int32) as Arrow fixed-size lists, band-major
(n_bands, H, W) flattened row-major (maskbits: one (H, W) plane), shapes and band order in the
schema metadata; ``dx_pix, dy_pix`` (target offset from the stamp centre (N-1)/2), PSF FWHM per band,
``bytes_read`` / ``file_bytes``, ``code_version``, ``config_hash``. With it ``<OUT>/_summary.json``:
counts by fail_reason, bytes read per stamp against the whole files' size, PSF and noise-texture
sources per band, and per brick the PSF files read and their bytes. Failed rows keep
their pixel columns as lists of null items (never zeros); see :mod:`udfs.survey.coadd_cutouts` for reasons.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys


from jobs.cli import InputError, job_main
from udfs.config.provenance import code_version, config_hash
from udfs.io import storage
from udfs.io.datasets import open_dataset, read_columns
from udfs.io.publish import publishing
from udfs.schemas import cutouts as schema
from udfs.survey.bands import COADD_BANDS, SURVEY_BANDS
from udfs.survey.coadd_cutouts import CutoutConfig, cut_bucket, summarise
from udfs.survey.target_psf import DEFAULT_MOFFAT_BETA, PSF_MODELS, PSFConfig


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.make_cutouts", description=__doc__.split("\n")[1])
    p.add_argument("--targets", required=True, help="stage-1 targets Parquet dataset (local or s3://)")
    p.add_argument("--coadd-base", "--coadds", dest="coadd_base", required=True,
                   help="folder, s3:// or http(s):// base holding coadd/<bri>/<brick>/...")
    p.add_argument("--output", required=True, help="output Parquet dataset (local or s3://)")
    p.add_argument("--stamp-size", type=int, default=64, help="stamp side in pixels (default 64)")
    p.add_argument("--bands", default=SURVEY_BANDS, help=f"bands in output order, letters of {COADD_BANDS} "
                   f"(default {SURVEY_BANDS})")
    p.add_argument("--min-good-frac", type=float, default=0.5,
                   help="per band, least fraction of pixels with finite image and invvar > 0 (default 0.5)")
    p.add_argument("--layout", choices=["nested", "flat"], default="nested",
                   help="nested: coadd/<bri>/<brick>/ (survey layout); flat: files directly under the base")
    p.add_argument("--allow-missing-maskbits", action="store_true",
                   help="keep rows of bricks without a maskbits file (maskbits null) instead of failing them")
    p.add_argument("--n-buckets", type=int, default=8, help="output files (hash buckets of target_id)")
    p.add_argument("--retries", type=int, default=4,
                   help="retries per failed remote read (jittered backoff doubling from 0.25 s; Retry-After honoured)")
    p.add_argument("--max-remote-requests", type=int, default=8,
                   help="coadd requests (HTTP range GETs, S3 reads) in flight per machine, all workers together "
                        "(default 8)")
    p.add_argument("--skip-existing", action="store_true", help="resume: keep output files that exist")
    p.add_argument("--psf-model", choices=PSF_MODELS, default="survey",
                   help="survey: CCD PSFEx stack, Moffat fallback (default); moffat; gaussian (explicit only)")
    p.add_argument("--ccds", help="survey-ccds table (default: legacysurvey-<brick>-ccds.fits beside the coadds)")
    p.add_argument("--calib-base", help="folder (or s3://, https://) holding psfex/ (default: <coadd base>/calib)")
    p.add_argument("--images-base", help="CCD images for their header WCS (default: <calib>/../images if present)")
    p.add_argument("--moffat-beta", type=float, default=DEFAULT_MOFFAT_BETA,
                   help=f"Moffat beta where the CCD table has none (default {DEFAULT_MOFFAT_BETA})")
    p.add_argument("--psf-flux-fraction", type=float, default=0.995,
                   help="PSF kernels hold this fraction of the flux (default 0.995)")
    return p.parse_args(argv)


def _config(args) -> CutoutConfig:
    """The cutout settings from the flags; bad values raise naming the flag."""
    psf = PSFConfig(model=args.psf_model, ccds=args.ccds, calib_base=args.calib_base,
                    images_base=args.images_base, moffat_beta=args.moffat_beta,
                    flux_fraction=args.psf_flux_fraction)
    cfg = CutoutConfig(stamp_size=args.stamp_size, bands=args.bands, min_good_frac=args.min_good_frac,
                       layout=args.layout, require_maskbits=not args.allow_missing_maskbits,
                       retries=args.retries, max_remote_requests=args.max_remote_requests, psf=psf).validate()
    for flag, uri in (("--ccds", args.ccds), ("--calib-base", args.calib_base), ("--images-base", args.images_base)):
        if uri and not storage.exists(uri):
            raise InputError(f"{flag} {uri}: not found")
    if args.n_buckets < 1:
        raise InputError(f"--n-buckets: {args.n_buckets} must be >= 1")
    if not (storage.is_s3(args.coadd_base) or args.coadd_base.startswith(("http://", "https://"))) \
            and not storage.exists(args.coadd_base):
        raise InputError(f"{args.coadd_base}: coadd base folder not found")
    return cfg


def _check_rows(targets, uri: str) -> None:
    """The targets must be non-empty, with non-null ids and positions and unique target_id."""
    from pyspark.sql import functions as F

    ident = ("target_id", "ra", "dec", "brickname")
    stats = targets.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("target_id").alias("n_ids"),
                        *[F.sum(F.col(c).isNull().cast("long")).alias(c) for c in ident]).collect()[0]
    if stats["n"] == 0:
        raise InputError(f"{uri}: the targets dataset has no rows")
    for col in ident:
        if stats[col]:
            raise InputError(f"{uri}: column {col} is null in {stats[col]} row(s)")
    if stats["n_ids"] != stats["n"]:
        raise InputError(f"{uri}: target_id is not unique ({stats['n']} rows, {stats['n_ids']} distinct ids)")


@job_main
def main(argv=None) -> int:
    from pyspark.sql.pandas.types import to_arrow_type

    from jobs.spark import get_spark, read_parquet, write_json, write_parquet

    args = parse_args(argv)
    storage.check_writable(args.output, folder=True)  # before any input is read
    cfg = _config(args)
    open_dataset(args.targets, "the stage-1 targets dataset", schema.target_input_columns(cfg.bands))
    version = code_version()
    chash = config_hash({"cutouts": cfg.as_dict(), "coadd_base": args.coadd_base})
    targets = read_parquet(get_spark("make_cutouts"), args.targets)
    _check_rows(targets, args.targets)

    id_type = targets.schema["target_id"].dataType
    provenance = {"code_version": version, "config_hash": chash}
    base, columns = args.coadd_base, schema.COLUMNS
    keep = [c for c in targets.columns if c in schema.TARGET_INPUT_COLUMNS or c.startswith("psf_fwhm_")]
    arrow_schema = schema.cutout_schema(cfg.bands, cfg.stamp_size, {
        **provenance, "cutout_config": json.dumps(cfg.as_dict(), sort_keys=True)}, to_arrow_type(id_type))
    with publishing(args.output, job="jobs.make_cutouts", config_hash=chash) as output:
        files = write_parquet(targets.select(*keep), args.output, key=list(schema.BUCKET_KEY),
                              order=list(schema.ROW_ORDER), n_buckets=args.n_buckets, arrow_schema=arrow_schema,
                              skip_existing=args.skip_existing,
                              transform=functools.partial(cut_bucket, base=base, cfg=cfg, provenance=provenance,
                                                          columns=columns))
        summary = {"output": args.output, **provenance, "files": files,
                   **summarise(read_columns(args.output, schema.WHAT, schema.SUMMARY_COLUMNS), cfg)}
        write_json(storage.join(args.output, schema.SUMMARY_FILE), summary)
        output.commit([f["path"] for f in files])
    print(f"cutouts: {summary['n_ok']}/{summary['n_targets']} ok, failures {summary['fail_reasons']}, "
          f"{summary['bytes_read_per_stamp_mean']:.0f} bytes read per stamp vs "
          f"{summary['whole_files_bytes_per_stamp_mean']:.0f} in the whole files -> {args.output}")
    print(f"cutouts: PSF sources {summary['psf_source_counts']}, noise texture {summary['noise_source_counts']}, "
          f"PSF reads {summary['psf_bytes_read_per_brick_mean'] or 0:.0f} bytes per brick")
    return 0


if __name__ == "__main__":
    sys.exit(main())
