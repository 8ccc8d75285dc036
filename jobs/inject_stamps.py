"""Stage 5: inject lensed COSMOS (or Sersic) arcs into LRG cutouts -> Parquet training stamps.

    python -m jobs.inject_stamps --manifest MANIFEST --cutouts CUTOUTS --bank BANK.h5 \\
        --output STAMPS [--config conf/injection.yaml] [--skip-existing]

Tasks (stage 3) are joined with their cutouts (stage 4) on ``target_id``; each Python worker loads
the bank once (``udfs.sources.bank.load_bank``) and ``udfs.stamps.inject.inject_tasks`` renders
batches. Output: a Parquet dataset partitioned by ``split=``, one file per hash bucket of
``task_id``; pixel columns (``image``, ``invvar``, ``arc``: float32 ``(band, y, x)``;
``maskbits``: int32 ``(y, x)``) are Arrow fixed-size lists, shapes and band order in the schema
metadata, readable with pyarrow alone. ``<STAMPS>/_summary.json``: counts, failure rates by reason
and label, PSF and depth quantiles by label.

``--skip-existing`` resumes a killed run: tasks whose bucket file exists are not recomputed, and
files are written atomically, so the dataset ends identical to an uninterrupted run.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import functions as F

from jobs.spark import bucket_of, dataset_files, get_spark, read_parquet, write_json, write_parquet
from udfs.io import storage
from udfs.config.provenance import code_version, config_hash
from udfs.sources.bank import read_bank
from udfs.stamps.inject import InjectionSettings, load_settings
from udfs.config.checker import ConfigError

DEFAULT_CONFIG = "conf/injection.yaml"
CUTOUT_COLUMNS = ["target_id", "ok", "fail_reason", "dx_pix", "dy_pix", "image", "invvar", "maskbits"]


def output_columns(bands: str) -> list[tuple[str, str]]:
    """(name, Spark type) of every stamp column, in order."""
    d, s, i, L = "double", "string", "int", "bigint"
    cols = [("task_id", s), ("target_id", s), ("pair_id", s), ("is_control", "boolean"),
            ("replicate", i), ("seed", L), ("config_hash", s), ("config_name", s), ("split", s),
            ("ra", d), ("dec", d), ("brickname", s), ("dx_pix", d), ("dy_pix", d),
            ("theta_e", d), ("lens_e1", d), ("lens_e2", d), ("shear_g1", d), ("shear_g2", d),
            ("src_x", d), ("src_y", d), ("src_phi", d), ("src_mode", s), ("src_index", i),
            ("src_z", d), ("src_zphot", d), ("src_size_scale", d)]
    cols += [(f"src_mag_{b}", d) for b in bands]
    cols += [(c, d) for c in ("sersic_n", "sersic_re_arcsec", "sersic_q", "sersic_phi", "src_gini",
                              "src_m20", "src_clumpiness", "src_hlr_arcsec")]
    cols += [(f"psf_fwhm_{b}", d) for b in bands] + [(f"psfdepth_{b}", d) for b in bands]
    cols += [("magnification", d), ("n_images", i), ("core_flux_frac", d), ("arc_snr", d)]
    cols += [(f"{m}_{b}", d) for m in ("arc_flux", "arc_snr", "gain") for b in bands]
    cols += [("ok", "boolean"), ("fail_reason", s), ("image", "array<float>"),
             ("invvar", "array<float>"), ("arc", "array<float>"), ("maskbits", "array<int>"),
             ("code_version", s), ("injection_config_hash", s)]
    return cols


def arrow_schema(bands: str, n: int, meta: dict) -> pa.Schema:
    """The stamps' Arrow schema: fixed-size pixel lists, documented metadata."""
    from pyspark.sql.pandas.types import to_arrow_type
    from pyspark.sql.types import _parse_datatype_string

    nb = len(bands)
    fields = []
    for name, typ in output_columns(bands):
        if name in ("image", "invvar", "arc"):
            fields.append(pa.field(name, pa.list_(pa.float32(), nb * n * n)))
        elif name == "maskbits":
            fields.append(pa.field(name, pa.list_(pa.int32(), n * n)))
        elif name != "split":
            fields.append(pa.field(name, to_arrow_type(_parse_datatype_string(typ))))
    metadata = {
        "image_shape": json.dumps([nb, n, n]), "arc_shape": json.dumps([nb, n, n]),
        "maskbits_shape": json.dumps([n, n]), "band_order": bands,
        "pixel_layout": "image/invvar/arc: (band, y, x) row-major flattened; maskbits: (y, x)",
        "units": "image, arc: nanomaggies; invvar: 1/nanomaggies^2; angles rad; sizes arcsec",
        "frame": "x along columns, y along rows, arcsec; lens at the target, stamp pixel "
                 "((N-1)/2 + dx_pix, (N-1)/2 + dy_pix)",
        **meta,
    }
    return pa.schema(fields, metadata=metadata)


def _stamp_geometry(cutouts_uri: str) -> tuple[str, int]:
    files = dataset_files(cutouts_uri)
    if not files:
        raise ValueError(f"{cutouts_uri}: no Parquet files (expected the stage-4 cutouts dataset)")
    schema = pq.read_schema(storage.open_input(files[0]))
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    missing = [c for c in CUTOUT_COLUMNS if c not in schema.names]
    if missing or "image_shape" not in meta or "band_order" not in meta:
        raise ValueError(f"{files[0]}: not a cutouts dataset (missing {missing or 'image_shape/band_order metadata'})")
    nb, n, _ = json.loads(meta["image_shape"])
    return meta["band_order"], int(n)


def _existing_buckets(uri: str) -> set[tuple[str, int]]:
    done = set()
    for f in dataset_files(uri):
        parts = f.replace("\\", "/").split("/")
        if parts[-2].startswith("split=") and parts[-1].startswith("part-"):
            done.add((parts[-2][len("split="):], int(parts[-1][5:10])))
    return done


def summarise(uri: str) -> dict:
    """Counts and failure rates by label and reason; PSF and depth quantiles by label."""
    cols = ["is_control", "ok", "fail_reason", "psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_z",
            "psfdepth_g", "psfdepth_r", "psfdepth_z", "split"]
    tables = []
    for f in dataset_files(uri):
        t = pq.read_table(storage.open_input(f), columns=[c for c in cols if c != "split"])
        split = f.replace("\\", "/").split("/")[-2].split("=", 1)[-1]
        tables.append(t.append_column("split", pa.array([split] * len(t))))
    df = pa.concat_tables(tables).to_pandas()
    out = {"n_stamps": int(len(df)), "n_ok": int(df["ok"].sum()), "by_label": {}}
    for label, part in df.groupby(df["is_control"].map({True: "control", False: "injected"})):
        reasons = part.loc[~part["ok"], "fail_reason"].value_counts().sort_index()
        q = {c: [float(x) for x in np.nanquantile(part[c].astype(float), [0.05, 0.5, 0.95])]
             for c in cols[3:9] if part[c].notna().any()}
        out["by_label"][label] = {
            "n": int(len(part)), "n_ok": int(part["ok"].sum()),
            "failure_rate": float(1 - part["ok"].mean()),
            "fail_reasons": {str(k): int(v) for k, v in reasons.items()},
            "quantiles_5_50_95": q,
            "by_split": {str(k): int(v) for k, v in part["split"].value_counts().sort_index().items()},
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="jobs.inject_stamps", description=__doc__.split("\n")[1])
    ap.add_argument("--manifest", required=True, help="stage-3 manifest dataset (the <hash>/ folder)")
    ap.add_argument("--cutouts", required=True, help="stage-4 cutouts dataset")
    ap.add_argument("--bank", required=True, help="source bank HDF5 (local or s3://)")
    ap.add_argument("--output", required=True, help="stamps dataset (local or s3://)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help=f"injection settings (default {DEFAULT_CONFIG})")
    ap.add_argument("--skip-existing", action="store_true", help="resume: keep bucket files that exist")
    args = ap.parse_args(argv)
    try:
        settings = load_settings(args.config)
        bank = read_bank(args.bank)
        bands, n = _stamp_geometry(args.cutouts)
        if bands != settings.bands:
            raise ValueError(f"{args.cutouts}: band order {bands!r} differs from {args.config} bands {settings.bands!r}")
        for col in ("g_r", "r_z", "zphot", "sersic_n", "sersic_hlr_arcsec", "sersic_q", "sersic_phi_rad",
                    "gini", "m20", "clumpiness", "hlr_arcsec"):
            if col not in bank.meta:
                raise ValueError(f"{args.bank}: bank meta lacks column {col!r}")
        summary = run(args, settings, n, bank)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, sort_keys=True))
    print(f"stamps: {args.output}")
    return 0


def run(args, settings: InjectionSettings, n: int, bank) -> dict:
    cosmology = json.loads(bank.attrs.get("config", "{}")).get("cosmology", "Planck18")
    inj_hash = config_hash({"settings": settings.as_dict(), "bank": bank.attrs.get("config"),
                            "bank_code": bank.attrs.get("code_version"), "cosmology": cosmology})
    version = code_version()
    spark = get_spark("inject_stamps")
    tasks = read_parquet(spark, args.manifest)
    done = _existing_buckets(args.output) if args.skip_existing else set()
    if done:  # resume: tasks of finished bucket files are not recomputed
        bucket = bucket_of(["task_id"], settings.n_buckets)
        key = F.concat_ws("|", F.col("split"), bucket.cast("string"))
        tasks = tasks.filter(~key.isin([f"{s}|{b}" for s, b in sorted(done)]))
    cut = read_parquet(spark, args.cutouts).select(*CUTOUT_COLUMNS)
    cut = cut.withColumnRenamed("ok", "cutout_ok").withColumnRenamed("fail_reason", "cutout_fail_reason")
    joined = tasks.join(cut, on="target_id", how="left")
    cols = output_columns(settings.bands)
    ddl = ", ".join(f"`{c}` {t}" for c, t in cols)
    bank_uri, names = args.bank, [c for c, _ in cols]

    def inject(batches):
        from udfs.sources.bank import load_bank
        from udfs.stamps.inject import inject_tasks

        worker_bank = load_bank(bank_uri)
        for pdf in batches:
            pdf["cutout_ok"] = pdf["cutout_ok"].fillna(False).astype(bool)
            pdf.loc[pdf["cutout_fail_reason"].isna() & ~pdf["cutout_ok"], "cutout_fail_reason"] = "missing"
            out = inject_tasks(pdf, worker_bank, settings, n, cosmology)
            out["code_version"] = version
            out["injection_config_hash"] = inj_hash
            yield out[names]

    stamps = joined.mapInPandas(inject, ddl)
    schema = arrow_schema(settings.bands, n, {
        "pixel_scale_arcsec": str(settings.pixel_scale), "code_version": version,
        "injection_config_hash": inj_hash, "injection_config": json.dumps(settings.as_dict(), sort_keys=True),
        "bank_catalog": str(bank.attrs.get("catalog_name", "")), "cosmology": cosmology})
    written = write_parquet(stamps, args.output, key=["task_id"], n_buckets=settings.n_buckets,
                            partition_by=["split"], arrow_schema=schema, skip_existing=args.skip_existing)
    summary = summarise(args.output)
    summary.update(files_written=sum(r["status"] == "written" for r in written),
                   files_kept=len(done) + sum(r["status"] == "skipped" for r in written),
                   code_version=version, injection_config_hash=inj_hash)
    write_json(storage.join(args.output, "_summary.json"), summary)
    return summary


if __name__ == "__main__":
    sys.exit(main())
