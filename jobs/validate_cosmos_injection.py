"""Stage 6: validate a stamps dataset (QA report, flux accounting, shortcut gates, pictures).

    python -m jobs.validate_cosmos_injection --stamps PATH --output report.json
        [--compare OTHER_PATH] [--config conf/validation.yaml] [--strict]

PATH: the stage-5 stamps dataset (local or s3://, ``split=`` folders). Spark reads one task per
file with pyarrow (:mod:`udfs.qa.report`): per-row checks, then a full outer join of injected and
control rows on ``pair_id`` for flux accounting and the shortcut-gate pixels; counts and quantiles
are Spark aggregates. Writes the JSON report and, beside it, ``<stem>_gallery.png`` (injected |
control | difference, Lupton RGB, sorted by arc SNR) and ``<stem>_histograms.png``; with
``--compare`` both datasets side by side (``<stem>_gallery_b.png``) and a ``comparison`` section
with the differences that matter highlighted. Exit code 0 (flags are printed), 1 with ``--strict``
when the dataset is flagged, 2 on bad input (message names the file/column).
"""
from __future__ import annotations

import argparse
import math
import re
import sys

import numpy as np

from jobs.cli import InputError
from udfs.io import storage
from udfs.config.provenance import code_version, config_hash
from udfs.qa.report import (FINITE_INJECTED, ROW_CHECKS, SCALARS, compare_reports, pair_metrics,
                            quantile_block, read_stamp_rows)
from udfs.qa.shortcut_gates import run_gates
from udfs.stamps.pixels import StampInputError, pixel_array, stamp_layout
from udfs.config.validation import ConfigError, load_config

STRING_COLS = {"task_id", "target_id", "pair_id", "config_hash", "code_version", "brickname", "src_mode",
               "fail_reason", "split"}
BOOL_COLS = {"is_control", "ok", "failed_with_values", "control_arc_nonzero"}
LONG_COLS = {"replicate", "seed", "src_index", "n_images", "nonfinite_image", "nonfinite_invvar",
             "nonfinite_arc", "negative_invvar"}
CHECK_COLS = ROW_CHECKS
INJECTED_DISTRIBUTIONS = ["theta_e", "arc_snr", "arc_snr_g", "arc_snr_r", "arc_snr_z", "magnification",
                          "arc_colour_g_r", "arc_colour_r_z", "arc_r50_arcsec", "core_flux_frac", "n_images",
                          "src_mag_r", "src_z"]
MORPHOLOGY = ["src_gini", "src_m20", "src_clumpiness", "src_hlr_arcsec"]
PSF_DEPTH = ["psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_z", "psfdepth_g", "psfdepth_r", "psfdepth_z"]
HISTOGRAMS = ["theta_e", "arc_snr", "magnification", "arc_colour_g_r", "arc_colour_r_z", "arc_r50_arcsec",
              "core_flux_frac", "src_gini", "src_m20", "src_clumpiness", "src_hlr_arcsec", "psf_fwhm_r"]
HIST_SAMPLE = 200_000   # rows drawn (hash of task_id) for the histogram picture
GALLERY_POOL = 5_000    # complete pairs drawn (hash of pair_id) to pick the gallery's arc-SNR ranks


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.validate_cosmos_injection", description=__doc__.split("\n")[0])
    p.add_argument("--stamps", required=True, help="stage-5 stamps dataset (local or s3://)")
    p.add_argument("--output", required=True, help="report JSON path (local or s3://); PNGs are written beside it")
    p.add_argument("--compare", help="a second stamps dataset reported side by side (e.g. Sersic vs COSMOS)")
    p.add_argument("--config", default="conf/validation.yaml", help="validation config (default conf/validation.yaml)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any flag is raised")
    return p.parse_args(argv)


def _spark_type(col: str) -> str:
    if col in STRING_COLS:
        return "string"
    if col in BOOL_COLS:
        return "boolean"
    if col in LONG_COLS:
        return "long"
    return "double"


def _row_ddl() -> str:
    cols = list(dict.fromkeys(SCALARS + ["split"] + CHECK_COLS))
    return ", ".join(f"{c} {_spark_type(c)}" for c in cols) + ", image array<float>, arc array<float>"


def _layout(uri: str):
    from jobs.spark import dataset_files

    import pyarrow.parquet as pq

    try:
        files = dataset_files(uri)
    except OSError as exc:
        raise InputError(f"{uri}: cannot list the stamps dataset ({exc})") from exc
    if not files:
        raise InputError(f"{uri}: no Parquet files found (expected the stage-5 stamps dataset)")
    schema = pq.read_schema(storage.open_input(files[0]))
    layout = stamp_layout(schema, files[0])
    return files, layout


def _task_error(exc: Exception) -> str | None:
    """The one-line StampInputError message inside a Spark task failure, if that is what it was."""
    m = re.search(r"StampInputError: (.+)", str(exc))
    return m.group(1).strip() if m else None


def _quantiles(df, cols, probs) -> dict:
    from pyspark.sql import functions as F

    if not cols:
        return {}
    exprs = [F.percentile_approx(F.col(c), list(probs), 10000).alias(c) for c in cols]
    row = df.agg(*exprs).collect()[0]
    return quantile_block({c: row[c] for c in cols}, probs)


def _with_colours(df):
    from pyspark.sql import functions as F

    def colour(a, b):
        return F.when((F.col(a) > 0) & (F.col(b) > 0), -2.5 * F.log10(F.col(a) / F.col(b)))

    return (df.withColumn("arc_colour_g_r", colour("arc_flux_g", "arc_flux_r"))
              .withColumn("arc_colour_r_z", colour("arc_flux_r", "arc_flux_z")))


def build_report(spark, uri: str, cfg) -> tuple[dict, dict, dict]:
    """Return ``(report, gallery pairs, histogram samples)`` for one stamps dataset."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    files, layout = _layout(uri)
    g, fa = cfg.gates, cfg.flux_accounting
    cols = list(dict.fromkeys(SCALARS + ["split"] + CHECK_COLS)) + ["image", "arc"]

    def read(batches):
        import pyarrow.parquet as pq

        for batch in batches:
            for path in batch["path"]:
                with storage.open_input(path) as f:
                    file_layout = stamp_layout(pq.read_schema(f), path)
                if file_layout != layout:
                    raise StampInputError(f"{path}: layout {file_layout} differs from {files[0]}: {layout}")
                df = read_stamp_rows(path, layout, storage.open_input)
                for c in ("replicate", "seed", "src_index", "n_images"):
                    df[c] = df[c].astype("Int64")
                yield df[cols]

    rows = (spark.createDataFrame([(f,) for f in files], "path string").repartition(len(files))
            .mapInPandas(read, _row_ddl()).persist(StorageLevel.DISK_ONLY))
    scalars = _with_colours(rows.drop("image", "arc"))
    injected = scalars.filter(~F.col("is_control"))
    inj_ok = injected.filter(F.col("ok"))

    counts = scalars.groupBy("is_control", "ok", "fail_reason").count().collect()
    by_split = scalars.groupBy("split", "is_control", "ok").count().collect()
    n_total = sum(r["count"] for r in counts)
    label = {False: "injected", True: "control"}
    n_label = {lab: sum(r["count"] for r in counts if r["is_control"] is (lab == "control")) for lab in label.values()}
    n_failed = {lab: sum(r["count"] for r in counts if r["is_control"] is (lab == "control") and not r["ok"])
                for lab in label.values()}
    reasons: dict = {"injected": {}, "control": {}}
    for r in counts:
        if not r["ok"]:
            key = r["fail_reason"] if r["fail_reason"] is not None else "<null>"
            reasons[label[r["is_control"]]][key] = reasons[label[r["is_control"]]].get(key, 0) + r["count"]
    splits: dict = {}
    for r in by_split:
        s = splits.setdefault(str(r["split"]), {"injected": 0, "control": 0, "failed_injected": 0, "failed_control": 0})
        s[label[r["is_control"]]] += r["count"]
        if not r["ok"]:
            s["failed_" + label[r["is_control"]]] += r["count"]

    sums = [F.sum(F.when(F.col("ok"), F.col(c)).otherwise(0)).alias(c) for c in
            ("nonfinite_image", "nonfinite_invvar", "nonfinite_arc", "negative_invvar")]
    sums += [F.sum(F.col(c).cast("long")).alias(c) for c in ("failed_with_values", "control_arc_nonzero")]
    sums += [F.sum((F.col("ok") & F.col("is_control") & F.col("theta_e").isNotNull()).cast("long"))
             .alias("controls_with_truth")]
    sums += [F.sum((F.col("ok") & ~F.col("is_control") &
                    (F.col(c).isNull() | F.isnan(F.col(c)) | (F.abs(F.col(c)) == math.inf))).cast("long"))
             .alias(f"nonfinite_{c}") for c in FINITE_INJECTED]
    sums += [F.countDistinct("task_id").alias("distinct_task_ids")]
    chk = scalars.agg(*sums).collect()[0].asDict()
    pixel_checks = {k: int(chk[k] or 0) for k in ("nonfinite_image", "nonfinite_invvar", "nonfinite_arc",
                                                  "negative_invvar", "failed_with_values",
                                                  "control_arc_nonzero", "controls_with_truth")}
    scalar_nonfinite = {c: int(chk[f"nonfinite_{c}"] or 0) for c in FINITE_INJECTED}
    duplicates = scalars.groupBy("pair_id", "is_control").count().filter("count > 1").count()

    probs = cfg.report.quantiles
    if 0.16 not in probs or 0.5 not in probs or 0.84 not in probs:
        probs = tuple(sorted(set(probs) | {0.16, 0.5, 0.84}))
    distributions = {
        "injected": _quantiles(inj_ok, INJECTED_DISTRIBUTIONS, probs),
        "morphology": _quantiles(inj_ok, MORPHOLOGY, probs),
        "psf_depth_injected": _quantiles(injected, PSF_DEPTH, probs),
        "psf_depth_control": _quantiles(scalars.filter(F.col("is_control")), PSF_DEPTH, probs),
        "src_mode": {str(r["src_mode"]): r["count"] for r in inj_ok.groupBy("src_mode").count().collect()},
    }

    # pairs: injected and control rows joined on pair_id
    n_inj = n_label["injected"]
    fraction = min(1.0, g.max_pairs / n_inj) if n_inj else 0.0
    gains = [f"gain_{b}" for b in layout.bands]
    inj_side = rows.filter(~F.col("is_control")).select(
        "pair_id", F.col("task_id").alias("inj_task_id"), F.col("ok").alias("inj_ok"),
        F.col("image").alias("inj_image"), F.col("arc").alias("inj_arc"),
        *[F.col(c).alias(f"inj_{c}") for c in gains])
    ctl_side = rows.filter(F.col("is_control")).select(
        "pair_id", F.col("task_id").alias("ctl_task_id"), F.col("ok").alias("ctl_ok"),
        F.col("image").alias("ctl_image"))
    joined = inj_side.join(ctl_side, "pair_id", "full_outer")
    pair_ddl = ("pair_id string, complete boolean, has_injected boolean, has_control boolean, " +
                ", ".join(f"z_sum_{b} double, chi2_dof_{b} double, zero_viol_{b} long" for b in layout.bands) +
                ", flux_fail boolean, sampled boolean, core_inj array<float>, core_ctl array<float>, "
                "ann_inj array<float>, ann_ctl array<float>")
    pair_cols = [f.split(" ")[0] for f in pair_ddl.split(", ")]
    kw = dict(core_radius=g.core_radius_pix, annulus=g.annulus_pix,
              rounding_units=fa.zero_pixel_rounding_units, max_abs_sum_z=fa.max_abs_sum_z,
              max_chi2_dof=fa.max_chi2_dof, sample_fraction=fraction, seed=g.seed)

    def pairs_fn(batches):
        for pdf in batches:
            out = pair_metrics(pdf.reset_index(drop=True), layout, **kw)
            yield out[pair_cols]

    pairs = joined.mapInPandas(pairs_fn, pair_ddl).persist(StorageLevel.DISK_ONLY)
    pstats = pairs.agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.col("complete").cast("long")).alias("complete"),
        F.sum((F.col("has_injected") & ~F.col("has_control")).cast("long")).alias("injected_without_control"),
        F.sum((~F.col("has_injected") & F.col("has_control")).cast("long")).alias("control_without_injected"),
        F.sum(F.col("flux_fail").cast("long")).alias("flux_fail"),
        *[F.sum(F.col(f"zero_viol_{b}")).alias(f"zero_viol_{b}") for b in layout.bands],
        *[F.mean(F.when(F.col("complete"), F.col(f"z_sum_{b}"))).alias(f"z_mean_{b}") for b in layout.bands],
        *[F.count(F.when(F.col("complete"), F.col(f"z_sum_{b}"))).alias(f"z_n_{b}") for b in layout.bands],
    ).collect()[0].asDict()
    complete = pairs.filter(F.col("complete"))
    flux_q = _quantiles(complete, [f"{k}_{b}" for k in ("z_sum", "chi2_dof") for b in layout.bands], probs)
    worst_expr = F.greatest(*[F.abs(F.col(f"z_sum_{b}")) for b in layout.bands])
    worst = [r.asDict() for r in complete.filter(F.col("flux_fail")).withColumn("max_abs_z", worst_expr)
             .orderBy(F.desc("max_abs_z"), "pair_id").select("pair_id", "max_abs_z",
                                                            *[f"chi2_dof_{b}" for b in layout.bands],
                                                            *[f"zero_viol_{b}" for b in layout.bands]).limit(10).collect()]
    n_complete = int(pstats["complete"] or 0)
    flux_fail_rate = (pstats["flux_fail"] or 0) / n_complete if n_complete else None
    chi2_median = [flux_q.get(f"chi2_dof_{b}", {}).get("q0.5") for b in layout.bands] if flux_q else []
    flux = {
        "pairs": int(pstats["n"]), "complete_pairs": n_complete,
        "injected_without_control": int(pstats["injected_without_control"] or 0),
        "control_without_injected": int(pstats["control_without_injected"] or 0),
        "duplicate_pair_rows": int(duplicates),
        "failing_pairs": int(pstats["flux_fail"] or 0), "fail_rate": flux_fail_rate,
        "zero_pixel_violations": {b: int(pstats[f"zero_viol_{b}"] or 0) for b in layout.bands},
        "residual_quantiles": flux_q, "worst_pairs": worst,
        # mean z_sum x sqrt(n): a systematic flux error shared by the pairs (e.g. a 2% mis-scaled arc)
        "bias_z": {b: (pstats[f"z_mean_{b}"] * math.sqrt(pstats[f"z_n_{b}"])
                       if pstats[f"z_mean_{b}"] is not None else None) for b in layout.bands},
        "note": ("chi2_dof ~ 1 when the injected - control residual is the arc's Poisson noise; "
                 "~0 means the stored arc already contains the noise"),
    }

    sampled = pairs.filter(F.col("sampled")).orderBy("pair_id").select(
        "core_inj", "core_ctl", "ann_inj", "ann_ctl").collect()
    stack = (lambda k: np.array([r[k] for r in sampled], dtype=np.float64).reshape(len(sampled), -1))
    gates = run_gates(stack("core_inj"), stack("core_ctl"), stack("ann_inj"), stack("ann_ctl"),
                      folds=g.cv_folds, c=g.regularization_c, core_auc_max=g.core_auc_max,
                      annulus_auc_max=g.annulus_auc_max, min_pairs=g.min_pairs)
    gates["sample_fraction"] = fraction

    # gallery: complete pairs at evenly spaced arc-SNR ranks
    pool_frac = min(1.0, GALLERY_POOL / max(n_complete, 1))
    pool = (complete.select("pair_id")
            .filter(F.pmod(F.xxhash64("pair_id"), F.lit(1_000_000)) < int(pool_frac * 1_000_000) + 1)
            .join(inj_ok.select("pair_id", "arc_snr", "theta_e"), "pair_id").orderBy("arc_snr", "pair_id").collect())
    k = min(cfg.report.gallery_pairs, len(pool))
    picks = [pool[int(i)] for i in np.unique(np.round(np.linspace(0, len(pool) - 1, k)).astype(int))] if k else []
    pick_ids = [p["pair_id"] for p in picks]
    shape = (layout.n_bands, layout.npix, layout.npix)
    pix = rows.filter(F.col("pair_id").isin(pick_ids)).select("pair_id", "is_control", "image").collect()
    by_key = {(r["pair_id"], r["is_control"]): pixel_array([r["image"]], shape)[0] for r in pix}
    gallery = [{"injected": by_key[(p["pair_id"], False)], "control": by_key[(p["pair_id"], True)],
                "label": f"SNR {p['arc_snr']:.1f}\ntheta_E {p['theta_e']:.2f}\""} for p in picks]

    hist_frac = min(1.0, HIST_SAMPLE / max(n_inj, 1))
    hist_pdf = (inj_ok.filter(F.pmod(F.xxhash64("task_id"), F.lit(1_000_000)) < int(hist_frac * 1_000_000) + 1)
                .select(*HISTOGRAMS).toPandas())
    hist = {c: hist_pdf[c].to_numpy(dtype=float) for c in HISTOGRAMS}

    rates = {
        "failure_rate_injected": n_failed["injected"] / n_label["injected"] if n_label["injected"] else None,
        "failure_rate_control": n_failed["control"] / n_label["control"] if n_label["control"] else None,
        "flux_accounting_fail_rate": flux_fail_rate,
    }
    report = {
        "stamps": uri, "files": len(files),
        "layout": {"n_bands": layout.n_bands, "npix": layout.npix, "bands": layout.bands,
                   "pixel_scale_arcsec": layout.pixel_scale},
        "counts": {"rows": n_total, "distinct_task_ids": int(chk["distinct_task_ids"]), **n_label,
                   "failed": n_failed, "fail_reasons": reasons, "by_split": splits},
        "rates": rates, "pixel_checks": pixel_checks, "scalar_nonfinite_injected_ok": scalar_nonfinite,
        "distributions": distributions, "flux_accounting": flux, "gates": gates,
        "gallery_pairs": [{"pair_id": p["pair_id"], "arc_snr": p["arc_snr"]} for p in picks],
    }
    report["flags"] = _flags(report, cfg)
    rows.unpersist()
    pairs.unpersist()
    return report, gallery, hist


def _flags(rep: dict, cfg) -> list[str]:
    flags = []
    for name in ("core", "annulus"):
        gate = rep["gates"][name]
        if gate.get("flagged"):
            flags.append(f"gate_{name}: cross-validated AUC {gate['auc']:.3f} > limit {gate['limit']}")
    f = rep["flux_accounting"]
    if f["fail_rate"] is not None and f["fail_rate"] > cfg.flux_accounting.max_fail_frac:
        flags.append(f"flux_accounting: {f['failing_pairs']}/{f['complete_pairs']} pairs fail "
                     f"(> {cfg.flux_accounting.max_fail_frac})")
    for b, z in f["bias_z"].items():
        if z is not None and abs(z) > cfg.flux_accounting.max_abs_sum_z:
            flags.append(f"flux_accounting: band {b} residuals are biased (mean z x sqrt(n) = {z:.1f})")
    for k in ("injected_without_control", "control_without_injected", "duplicate_pair_rows"):
        if f[k]:
            flags.append(f"pairing: {f[k]} {k.replace('_', ' ')}")
    for k, v in rep["pixel_checks"].items():
        if v:
            flags.append(f"pixels: {k} = {v}")
    bad = {k: v for k, v in rep["scalar_nonfinite_injected_ok"].items() if v}
    if bad:
        flags.append(f"scalars: null/non-finite values in ok injected rows {bad}")
    if rep["counts"]["distinct_task_ids"] != rep["counts"]["rows"]:
        flags.append(f"task_id not unique: {rep['counts']['rows']} rows, {rep['counts']['distinct_task_ids']} ids")
    for lab, reasons in rep["counts"]["fail_reasons"].items():
        if "<null>" in reasons:
            flags.append(f"failures without fail_reason ({lab}): {reasons['<null>']}")
    # failure rates must be equal across labels: two-proportion z-test
    n_i, n_c = rep["counts"]["injected"], rep["counts"]["control"]
    k_i, k_c = rep["counts"]["failed"]["injected"], rep["counts"]["failed"]["control"]
    if n_i and n_c and (k_i + k_c):
        p = (k_i + k_c) / (n_i + n_c)
        z = (k_i / n_i - k_c / n_c) / math.sqrt(p * (1 - p) * (1 / n_i + 1 / n_c)) if 0 < p < 1 else 0.0
        rep["rates"]["failure_rate_label_z"] = z
        if abs(z) > 3:
            flags.append(f"failure rate depends on the label: injected {k_i}/{n_i}, control {k_c}/{n_c} (z={z:.1f})")
    return flags


def _sibling(output: str, suffix: str) -> str:
    base = output[:-5] if output.endswith(".json") else output
    return f"{base}_{suffix}"


def run(args) -> dict:
    from jobs.spark import get_spark, write_json
    from udfs.qa import plots

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise InputError(str(exc)) from exc
    for uri in [args.stamps] + ([args.compare] if args.compare else []):
        _layout(uri)  # fail fast on an empty/wrong dataset before starting Spark
    spark = get_spark("validate_cosmos_injection")
    try:
        rep_a, gal_a, hist_a = build_report(spark, args.stamps, cfg)
        rep_b = gal_b = hist_b = None
        if args.compare:
            rep_b, gal_b, hist_b = build_report(spark, args.compare, cfg)
    except Exception as exc:  # Spark wraps task errors; surface a layout problem as one line
        msg = _task_error(exc)
        if msg:
            raise InputError(msg) from exc
        raise
    provenance = {"code_version": code_version(), "config_hash": config_hash(cfg.as_dict()),
                  "config": args.config}
    outputs = {"gallery": _sibling(args.output, "gallery.png"), "histograms": _sibling(args.output, "histograms.png")}
    bands = rep_a["layout"]["bands"]
    if gal_a:
        storage.write_bytes(outputs["gallery"], plots.gallery(gal_a, bands, f"{args.stamps}: injected | control"))
    if rep_b is None:
        report = {**rep_a, "provenance": provenance}
        samples = {c: {"injected": v} for c, v in hist_a.items()}
    else:
        if gal_b:
            outputs["gallery_b"] = _sibling(args.output, "gallery_b.png")
            storage.write_bytes(outputs["gallery_b"], plots.gallery(gal_b, rep_b["layout"]["bands"],
                                                                       f"{args.compare}: injected | control"))
        comparison = compare_reports(rep_a, rep_b, median_shift=cfg.report.compare_median_shift,
                                     rate_diff=cfg.report.compare_rate_diff)
        report = {"a": rep_a, "b": rep_b, "comparison": comparison, "provenance": provenance,
                  "flags": [f"A: {f}" for f in rep_a["flags"]] + [f"B: {f}" for f in rep_b["flags"]]}
        samples = {c: {"A": hist_a[c], "B": hist_b[c]} for c in hist_a}
    storage.write_bytes(outputs["histograms"], plots.histograms(samples, cfg.report.histogram_bins,
                                                                   "injected stamps (ok)"))
    report["outputs"] = outputs
    write_json(args.output, report)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except (InputError, StampInputError, FileNotFoundError) as exc:
        print(f"jobs.validate_cosmos_injection: error: {exc}", file=sys.stderr)
        return 2
    single = report if "a" not in report else report["a"]
    g = single["gates"]
    print(f"validation: {single['counts']['rows']} rows, core AUC {g['core'].get('auc')}, annulus AUC "
          f"{g['annulus'].get('auc')}, flux-accounting fail rate {single['flux_accounting']['fail_rate']} "
          f"-> {args.output}")
    if "comparison" in report:
        for h in report["comparison"]["highlights"]:
            print(f"  differs: {h}")
    for f in report["flags"]:
        print(f"  FLAG {f}")
    return 1 if (args.strict and report["flags"]) else 0


if __name__ == "__main__":
    sys.exit(main())
