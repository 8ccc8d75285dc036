"""Real-lens anchors (lenscat) and hard negatives (real position lists) as stage-1 target rows.

    python -m jobs.build_anchors --output DIR [--config conf/anchors.yaml] [--negatives NAME=PATH ...]

Selects lenscat entries by grading, type, reference and footprint (:mod:`udfs.targets.anchors`), takes the
hard negatives from the configured lists (plus ``--negatives NAME=PATH``, columns ``ra``/``dec``),
drops negatives near any lenscat entry, and writes a Parquet dataset in the stage-1 targets schema
(split ``anchor`` / ``negative``) that ``jobs.make_cutouts --targets DIR`` reads like any targets,
plus ``DIR/_anchors.json``: counts, the lenscat cross-match of every written anchor (each must lie
within ``check_radius_arcsec`` of its entry, else exit 2 and nothing is reported as good), and the
cross-check against independent lists. ``target_id``: ``lenscat:<row>:<name>`` (row in the pinned
lenscat version's catalogue) or ``neg:<list>:<row>``.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd
import pyarrow as pa

from jobs.cli import InputError
from udfs.io import storage
from udfs.config.anchors import ConfigError, PositionList, load_config
from udfs.targets.anchors import (crossmatch_to_lenscat, exclude_near, lenscat_table, read_positions,
                          select_lenscat, target_rows)
from udfs.targets.lrg_targets import TARGET_SCHEMA
from udfs.config.provenance import code_version, config_hash
from udfs.config.checker import load_yaml

ANCHOR_SCHEMA = pa.schema(list(TARGET_SCHEMA) + [
    ("name", pa.string()), ("zlens", pa.float64()), ("lens_type", pa.string()), ("grading", pa.string()),
    ("ref", pa.string()), ("theta_e", pa.float64()), ("catalog", pa.string()), ("catalog_row", pa.int64())])


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.build_anchors", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="output targets dataset folder (local or s3://)")
    p.add_argument("--config", default="conf/anchors.yaml", help="anchor config (default conf/anchors.yaml)")
    p.add_argument("--negatives", action="append", default=[], metavar="NAME=PATH",
                   help="extra hard-negative list with ra/dec columns (csv/tsv/Parquet file or dataset)")
    return p.parse_args(argv)


def build(cfg, extra_negatives: list[PositionList], chash: str) -> tuple[pd.DataFrame, dict]:
    cat, lenscat_version = lenscat_table()
    sel = select_lenscat(cat, grading=cfg.grading, types=cfg.types, ref_contains=cfg.ref_contains,
                         footprint=cfg.footprint)
    version = code_version()
    common = dict(psf_nominal=cfg.psf_nominal, nside=cfg.healpix_nside, cut_version=cfg.cut_version,
                  chash=chash, version=version)
    anchors = target_rows(
        sel["RA"].to_numpy(), sel["DEC"].to_numpy(),
        ids=[f"lenscat:{r}:{n}" for r, n in zip(sel["catalog_row"], sel["name"])],
        split="anchor", source=lenscat_version,
        extra={"name": sel["name"].tolist(), "zlens": sel["zlens"].tolist(), "lens_type": sel["type"].tolist(),
               "grading": sel["grading"].tolist(), "ref": sel["ref"].tolist(), "theta_e": [None] * len(sel),
               "catalog": [lenscat_version] * len(sel), "catalog_row": sel["catalog_row"].tolist()}, **common)
    frames, neg_counts = [anchors], {}
    for pl in list(cfg.negatives) + extra_negatives:
        df = read_positions(pl.path, pl.ra_column, pl.dec_column)
        inside = cfg.footprint.contains(df["ra"].to_numpy(), df["dec"].to_numpy())
        far = exclude_near(df["ra"].to_numpy(), df["dec"].to_numpy(), cat["RA"].to_numpy(), cat["DEC"].to_numpy(),
                           cfg.exclusion_radius_arcsec)
        keep = df[inside & far]
        neg_counts[pl.name] = {"path": pl.path, "rows": int(len(df)), "outside_footprint": int((~inside).sum()),
                               "near_a_known_lens": int((inside & ~far).sum()), "kept": int(len(keep))}
        frames.append(target_rows(
            keep["ra"].to_numpy(), keep["dec"].to_numpy(), ids=[f"neg:{pl.name}:{r}" for r in keep["row"]],
            split="negative", source=pl.path,
            extra={"name": [f"{pl.name}:{r}" for r in keep["row"]], "catalog": [pl.name] * len(keep)}, **common))
    rows = pd.concat(frames, ignore_index=True)
    if rows["target_id"].duplicated().any():
        raise InputError(f"duplicate target_id {rows.loc[rows['target_id'].duplicated(), 'target_id'].iloc[0]!r}")

    match = crossmatch_to_lenscat(anchors, cat, cfg.check_radius_arcsec)
    crosscheck = {}
    for pl in cfg.crosscheck:
        df = read_positions(pl.path, pl.ra_column, pl.dec_column)
        inside = cfg.footprint.contains(df["ra"].to_numpy(), df["dec"].to_numpy())
        matched = ~exclude_near(anchors["ra"].to_numpy(), anchors["dec"].to_numpy(), df["ra"].to_numpy()[inside],
                                df["dec"].to_numpy()[inside], pl.radius_arcsec)
        crosscheck[pl.name] = {"path": pl.path, "rows_in_footprint": int(inside.sum()),
                               "anchors_with_a_counterpart": int(matched.sum()), "radius_arcsec": pl.radius_arcsec}
    summary = {
        "lenscat": lenscat_version, "lenscat_rows": int(len(cat)), "anchors": int(len(anchors)),
        "anchors_by_grading": anchors["grading"].value_counts().sort_index().to_dict(),
        "negatives": neg_counts, "n_negatives": int(sum(v["kept"] for v in neg_counts.values())),
        "position_check": {"radius_arcsec": cfg.check_radius_arcsec, "checked": int(len(match)),
                           "within_radius": int(match["ok"].sum()),
                           "max_sep_arcsec": float(match["sep_arcsec"].max()) if len(match) else None,
                           "failures": match.loc[~match["ok"]].head(20).to_dict(orient="records")},
        "crosscheck": crosscheck,
        "psf_fwhm_fallback": {"values_arcsec": cfg.psf_nominal,
                              "why": "lenscat has no PSF; nominal typical DECaLS seeing, marked in psf_fwhm_source"},
    }
    return rows, summary


def run(args) -> dict:
    from pyspark.sql.pandas.types import from_arrow_schema

    from jobs.spark import get_spark, write_json, write_parquet

    try:
        cfg = load_config(args.config)
        raw = load_yaml(args.config)
    except ConfigError as exc:
        raise InputError(str(exc)) from exc
    extra = []
    for item in args.negatives:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--negatives {item!r}: expected NAME=PATH")
        extra.append(PositionList(name=name, path=path, ra_column="ra", dec_column="dec"))
    chash = config_hash({"anchors": raw, "extra_negatives": [(p.name, p.path) for p in extra]})
    rows, summary = build(cfg, extra, chash)
    if summary["position_check"]["within_radius"] != summary["position_check"]["checked"]:
        write_json(storage.join(args.output, "_anchors.json"), summary)
        raise InputError(f"{summary['position_check']['checked'] - summary['position_check']['within_radius']} "
                         f"anchor(s) are more than {cfg.check_radius_arcsec}\" from their lenscat entry: "
                         f"{summary['position_check']['failures'][:3]}")
    if rows.empty:
        raise InputError(f"{args.config}: the selection gives no anchor and no negative (check lenscat/footprint)")
    spark = get_spark("build_anchors")
    table = pa.Table.from_pandas(rows[[f.name for f in ANCHOR_SCHEMA]], schema=ANCHOR_SCHEMA, preserve_index=False)
    df = spark.createDataFrame(table.to_pandas(), schema=from_arrow_schema(ANCHOR_SCHEMA))
    files = write_parquet(df, args.output, key=["target_id"], n_buckets=cfg.n_buckets, arrow_schema=ANCHOR_SCHEMA)
    summary.update(output=args.output, files=files, config_hash=chash, code_version=code_version())
    write_json(storage.join(args.output, "_anchors.json"), summary)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        s = run(args)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"jobs.build_anchors: error: {exc}", file=sys.stderr)
        return 2
    pc = s["position_check"]
    print(f"anchors: {s['anchors']} from {s['lenscat']} ({pc['within_radius']}/{pc['checked']} within "
          f"{pc['radius_arcsec']}\" of lenscat), {s['n_negatives']} negatives -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
