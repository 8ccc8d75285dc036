"""Stage 4: per-target image/invvar/maskbits stamps from Legacy Survey coadd bricks.

    python -m jobs.make_cutouts --targets TARGETS --coadd-base BASE --output OUT
        [--stamp-size 64] [--bands grz] [--min-good-frac 0.5] [--layout nested|flat]
        [--allow-missing-maskbits] [--n-buckets 8] [--retries 4] [--skip-existing]

TARGETS: the stage-1 Parquet dataset (columns target_id, ra, dec, brickname, split,
psf_fwhm_<band> for every requested band). BASE: local folder, s3:// or http(s):// holding
``coadd/<bri>/<brick>/legacysurvey-<brick>-*.fits.fz``. Targets are grouped by brick; each group
reads only the compressed tiles its stamps need (:mod:`udfs.survey.coadd_cutouts`).

Output: a Parquet dataset (bucketed by target_id) with one row per target: ``ok``, ``fail_reason``,
``image``/``invvar`` (float32) and ``maskbits`` (int32) as Arrow fixed-size lists, band-major
(n_bands, H, W) flattened row-major (maskbits: one (H, W) plane), shapes and band order in the
schema metadata; ``dx_pix, dy_pix`` (target offset from the stamp centre (N-1)/2), PSF FWHM per band,
``bytes_read`` / ``file_bytes``, ``code_version``, ``config_hash``. With it ``<OUT>/_summary.json``:
counts by fail_reason and bytes read per stamp against the whole files' size. Failed rows keep
their pixel columns as lists of null items (never zeros); see :mod:`udfs.survey.coadd_cutouts` for reasons.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.cli import InputError
from udfs.io import storage
from udfs.survey.coadd_cutouts import CutoutConfig, cut_brick
from udfs.config.provenance import code_version, config_hash

REQUIRED = ("target_id", "ra", "dec", "brickname", "split")
OUT_COLUMNS = [
    ("target_id", None), ("ok", "boolean"), ("fail_reason", "string"), ("dx_pix", "double"),
    ("dy_pix", "double"), ("x_pix", "double"), ("y_pix", "double"), ("stamp_x0", "int"),
    ("stamp_y0", "int"), ("ra", "double"), ("dec", "double"), ("bands", "string"),
    ("image", "array<float>"), ("invvar", "array<float>"), ("maskbits", "array<int>"),
    ("has_maskbits", "boolean"), ("good_frac", "double"), ("psf_fwhm_g", "double"),
    ("psf_fwhm_r", "double"), ("psf_fwhm_z", "double"), ("bytes_read", "long"),
    ("file_bytes", "long"), ("brickname", "string"), ("split", "string"),
    ("code_version", "string"), ("config_hash", "string"),
]
SMALL_COLUMNS = ["target_id", "ok", "fail_reason", "bytes_read", "file_bytes", "brickname"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.make_cutouts", description=__doc__.split("\n")[1])
    p.add_argument("--targets", required=True, help="stage-1 targets Parquet dataset (local or s3://)")
    p.add_argument("--coadd-base", "--coadds", dest="coadd_base", required=True,
                   help="folder, s3:// or http(s):// base holding coadd/<bri>/<brick>/...")
    p.add_argument("--output", required=True, help="output Parquet dataset (local or s3://)")
    p.add_argument("--stamp-size", type=int, default=64, help="stamp side in pixels (default 64)")
    p.add_argument("--bands", default="grz", help="bands in output order (default grz)")
    p.add_argument("--min-good-frac", type=float, default=0.5,
                   help="per band, least fraction of pixels with finite image and invvar > 0 (default 0.5)")
    p.add_argument("--layout", choices=["nested", "flat"], default="nested",
                   help="nested: coadd/<bri>/<brick>/ (survey layout); flat: files directly under the base")
    p.add_argument("--allow-missing-maskbits", action="store_true",
                   help="keep rows of bricks without a maskbits file (maskbits null) instead of failing them")
    p.add_argument("--n-buckets", type=int, default=8, help="output files (hash buckets of target_id)")
    p.add_argument("--retries", type=int, default=4, help="retries per failed remote read (backoff doubles)")
    p.add_argument("--skip-existing", action="store_true", help="resume: keep output files that exist")
    return p.parse_args(argv)


def _arrow_schema(spark_schema, cfg: CutoutConfig, version: str, chash: str) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    base = to_arrow_schema(spark_schema)
    n, nb = cfg.stamp_size, len(cfg.bands)
    fields = []
    for f in base:
        if f.name in ("image", "invvar"):
            f = pa.field(f.name, pa.list_(pa.float32(), nb * n * n))
        elif f.name == "maskbits":
            f = pa.field(f.name, pa.list_(pa.int32(), n * n))
        fields.append(f)
    meta = {
        "image_shape": json.dumps([nb, n, n]), "invvar_shape": json.dumps([nb, n, n]),
        "maskbits_shape": json.dumps([n, n]), "band_order": cfg.bands,
        "pixel_layout": "image/invvar: (band, y, x) row-major flattened, band order = band_order; "
                        "maskbits: (y, x) row-major, one plane for all bands",
        "units": "image: nanomaggies; invvar: 1/nanomaggies^2; maskbits: Legacy Survey MASKBITS; "
                 "psf_fwhm_*: arcsec; dx_pix, dy_pix, x_pix, y_pix: pixels",
        "stamp_geometry": "target at stamp pixel ((N-1)/2 + dx_pix, (N-1)/2 + dy_pix), 0-based, x = column; "
                          "stamp pixel (0, 0) = brick pixel (stamp_x0, stamp_y0)",
        "code_version": version, "config_hash": chash, "cutout_config": json.dumps(cfg.as_dict(), sort_keys=True),
    }
    return pa.schema(fields, metadata=meta)


def _check_targets(uri: str, cfg: CutoutConfig):
    from jobs.spark import dataset_files

    try:
        files = dataset_files(uri)
    except OSError as exc:
        raise InputError(f"{uri}: cannot list the targets dataset ({exc})") from exc
    if not files:
        raise InputError(f"{uri}: no Parquet files found (expected the stage-1 targets dataset)")
    schema = pq.read_schema(storage.open_input(files[0]))
    need = list(REQUIRED) + [f"psf_fwhm_{b}" for b in cfg.bands]
    missing = [c for c in need if c not in schema.names]
    if missing:
        raise InputError(f"{files[0]}: missing column(s) {', '.join(missing)}")


def _summarise(uri: str, cfg: CutoutConfig, version: str, chash: str) -> dict:
    from jobs.spark import dataset_files

    tables = [pq.read_table(storage.open_input(f), columns=SMALL_COLUMNS) for f in dataset_files(uri)]
    df = pa.concat_tables(tables).to_pandas()
    ok = df[df["ok"]]
    reasons = df.loc[~df["ok"], "fail_reason"].value_counts().sort_index()
    total_read = int(df["bytes_read"].sum())
    return {
        "output": uri, "n_targets": int(len(df)), "n_ok": int(len(ok)), "n_failed": int((~df["ok"]).sum()),
        "fail_reasons": {str(k): int(v) for k, v in reasons.items()},
        "n_bricks": int(df["brickname"].nunique()),
        "bytes_read_total": total_read,
        "bytes_read_per_stamp_mean": float(total_read / len(df)) if len(df) else None,
        "bytes_read_per_ok_stamp_median": float(np.median(ok["bytes_read"])) if len(ok) else None,
        "whole_files_bytes_per_stamp_mean": float(df["file_bytes"].mean()) if len(df) else None,
        "read_fraction_of_whole_files": (float(total_read / df["file_bytes"].sum())
                                         if df["file_bytes"].sum() else None),
        "stamp_size": cfg.stamp_size, "bands": cfg.bands, "code_version": version, "config_hash": chash,
    }


def run(args) -> dict:
    from pyspark.sql import functions as F

    from jobs.spark import get_spark, read_parquet, write_json, write_parquet

    cfg = CutoutConfig(stamp_size=args.stamp_size, bands=args.bands, min_good_frac=args.min_good_frac,
                       layout=args.layout, require_maskbits=not args.allow_missing_maskbits,
                       retries=args.retries).validate()
    if args.n_buckets < 1:
        raise InputError(f"--n-buckets: {args.n_buckets} must be >= 1")
    if not (storage.is_s3(args.coadd_base) or args.coadd_base.startswith(("http://", "https://"))) \
            and not storage.exists(args.coadd_base):
        raise InputError(f"{args.coadd_base}: coadd base folder not found")
    _check_targets(args.targets, cfg)

    version = code_version()
    chash = config_hash({"cutouts": cfg.as_dict(), "coadd_base": args.coadd_base})
    spark = get_spark("make_cutouts")
    targets = read_parquet(spark, args.targets)
    ident = ("target_id", "ra", "dec", "brickname")
    stats = targets.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("target_id").alias("n_ids"),
                        *[F.sum(F.col(c).isNull().cast("long")).alias(c) for c in ident]).collect()[0]
    if stats["n"] == 0:
        raise InputError(f"{args.targets}: the targets dataset has no rows")
    for col in ident:
        if stats[col]:
            raise InputError(f"{args.targets}: column {col} is null in {stats[col]} row(s)")
    if stats["n_ids"] != stats["n"]:
        raise InputError(f"{args.targets}: target_id is not unique ({stats['n']} rows, "
                         f"{stats['n_ids']} distinct ids)")

    id_type = targets.schema["target_id"].dataType.simpleString()
    ddl = ", ".join(f"{name} {id_type if t is None else t}" for name, t in OUT_COLUMNS)
    names = [n for n, _ in OUT_COLUMNS]
    base = args.coadd_base

    def cut(pdf):
        import pandas as pd

        for b in "grz":
            if f"psf_fwhm_{b}" not in pdf:
                pdf[f"psf_fwhm_{b}"] = np.nan
        # fixed row order: the first stamp of a brick pays its headers, so bytes_read depends on it
        pdf = pdf.sort_values("target_id", kind="stable").reset_index(drop=True)
        out = cut_brick(base, str(pdf["brickname"].iloc[0]), pdf, cfg)
        out["code_version"], out["config_hash"] = version, chash
        out["split"] = out["split"].astype(object).where(out["split"].notna(), None)
        return pd.DataFrame({n: out[n] for n in names})

    cols = [c for c in targets.columns if c in REQUIRED or c.startswith("psf_fwhm_")]
    stamps = targets.select(*cols).groupBy("brickname").applyInPandas(cut, ddl)
    files = write_parquet(stamps, args.output, key=["target_id"], n_buckets=args.n_buckets,
                          arrow_schema=_arrow_schema(stamps.schema, cfg, version, chash),
                          skip_existing=args.skip_existing)
    summary = _summarise(args.output, cfg, version, chash)
    summary["files"] = files
    write_json(storage.join(args.output, "_summary.json"), summary)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"jobs.make_cutouts: error: {exc}", file=sys.stderr)
        return 2
    print(f"cutouts: {summary['n_ok']}/{summary['n_targets']} ok, failures {summary['fail_reasons']}, "
          f"{summary['bytes_read_per_stamp_mean']:.0f} bytes read per stamp vs "
          f"{summary['whole_files_bytes_per_stamp_mean']:.0f} in the whole files -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
