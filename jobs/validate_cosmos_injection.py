"""Stage 6: validate a stamps dataset (QA report, flux accounting, shortcut gates, pictures).

    python -m jobs.validate_cosmos_injection --stamps PATH --output report.json
        [--compare OTHER_PATH] [--real CUTOUTS] [--config conf/validation.yaml] [--strict]

PATH: the stage-5 stamps dataset (local or s3://, ``split=`` folders). Spark reads one task per file with
pyarrow (:func:`udfs.qa.report.read_task`): per-row checks, then a full outer join of injected and control
rows on ``pair_id`` for flux accounting and the shortcut gates (:func:`udfs.qa.report.pairs_task`), assembled
by :mod:`udfs.qa.report_sections`. Writes the JSON report and, beside it, ``<stem>_gallery.png`` (injected |
control | difference, sorted by arc SNR) and ``<stem>_histograms.png``; ``--compare`` adds the second
dataset (``_b``) and a ``comparison`` section. ``--real`` (stage-4 cutouts of real lenses) adds a
``realism`` section (:mod:`udfs.qa.realism`: KS/AD tests and a linear probe, ok injections against the real
lenses), ``<stem>_realism.png`` (each real lens beside its nearest injections) and ``_realism_hist.png``.
Exit 0 (flags are printed), 1 with ``--strict`` when flagged, 2 on bad input (the message names the file).
"""
from __future__ import annotations

import argparse
import functools
import math
import sys

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import functions as F

from jobs.cli import job_main
from jobs.spark import get_spark, write_json
from udfs.config.provenance import REPO_ROOT, code_version, config_hash
from udfs.config.validation import load_config
from udfs.io import storage
from udfs.io.datasets import file_schema, list_dataset
from udfs.io.publish import publishing
from udfs.qa import plots, realism, realism_io
from udfs.qa import report_sections as sections
from udfs.qa.report import ERROR, FINITE_INJECTED, pair_ddl, pairs_task, read_task, row_ddl
from udfs.qa.lens_population import population_section
from udfs.qa.shortcut_gates import run_gates
from udfs.schemas.stamps import WHAT
from udfs.survey.bricks import PIXSCALE_ARCSEC
from udfs.stamps.pixels import StampInputError, annulus_mask, pixel_array, stamp_layout

HIST_SAMPLE = 200_000   # rows drawn (hash of task_id) for the histogram picture
GALLERY_POOL = 5_000    # complete pairs drawn (hash of pair_id) to pick the gallery's arc-SNR ranks
DEFAULT_CONFIG = str(REPO_ROOT / "conf" / "validation.yaml")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.validate_cosmos_injection", description=__doc__.split("\n")[0])
    p.add_argument("--stamps", required=True, help="stage-5 stamps dataset (local or s3://)")
    p.add_argument("--output", required=True, help="report JSON path (local or s3://); PNGs are written beside it")
    p.add_argument("--compare", help="a second stamps dataset reported side by side (e.g. Sersic vs COSMOS)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="validation config (default conf/validation.yaml)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any flag is raised")
    p.add_argument("--real", help="stage-4 cutouts dataset of real lenses (local or s3://): the realism section")
    return p.parse_args(argv)


def open_stamps(uri: str):
    """``(files, layout)`` of a stamps dataset; the layout from its first file's schema metadata."""
    files = list_dataset(uri, WHAT)
    return files, stamp_layout(file_schema(files[0]), files[0])


def read_rows(spark, uri: str, files: list[str], layout):
    """The rows of every file (persisted on disk, with the read task's ``error`` column, null on
    every row); a file that breaks the layout raises its :class:`StampInputError` here."""
    task = functools.partial(read_task, root=uri, layout=layout, first_file=files[0], open_input=storage.open_input)
    rows = (spark.createDataFrame([(f,) for f in files], "path string").repartition(len(files))
            .mapInPandas(task, row_ddl()).persist(StorageLevel.DISK_ONLY))
    bad = rows.filter(F.col(ERROR).isNotNull()).select(ERROR).orderBy(ERROR).limit(1).collect()
    if bad:
        rows.unpersist()
        raise StampInputError(bad[0][ERROR])
    return rows


def _quantiles(df, cols, probs) -> dict:
    if not cols:
        return {}
    exprs = [F.percentile_approx(F.col(c), list(probs), 10000).alias(c) for c in cols]
    row = df.agg(*exprs).collect()[0]
    return sections.quantile_block({c: row[c] for c in cols}, probs)


def _with_colours(df):
    def colour(a, b):
        return F.when((F.col(a) > 0) & (F.col(b) > 0), -2.5 * F.log10(F.col(a) / F.col(b)))

    return (df.withColumn("arc_colour_g_r", colour("arc_flux_g", "arc_flux_r"))
              .withColumn("arc_colour_r_z", colour("arc_flux_r", "arc_flux_z")))


def row_aggregates(scalars) -> tuple[dict, dict]:
    """``(count section, summed row checks)`` of the scalar rows."""
    counts = [r.asDict() for r in scalars.groupBy("is_control", "ok", "fail_reason").count().collect()]
    by_split = [r.asDict() for r in scalars.groupBy("split", "is_control", "ok").count().collect()]
    sums = [F.sum(F.when(F.col("ok"), F.col(c)).otherwise(0)).alias(c) for c in
            ("nonfinite_image", "nonfinite_invvar", "nonfinite_arc", "negative_invvar")]
    sums += [F.sum(F.col(c).cast("long")).alias(c) for c in ("failed_with_values", "control_arc_nonzero")]
    sums += [F.sum((F.col("ok") & F.col("is_control") & F.col("theta_e").isNotNull()).cast("long"))
             .alias("controls_with_truth")]
    sums += [F.sum((F.col("ok") & ~F.col("is_control") &
                    (F.col(c).isNull() | F.isnan(F.col(c)) | (F.abs(F.col(c)) == math.inf))).cast("long"))
             .alias(f"nonfinite_{c}") for c in FINITE_INJECTED]
    sums += [F.countDistinct("task_id").alias("distinct_task_ids")]
    checks = scalars.agg(*sums).collect()[0].asDict()
    return sections.count_section(counts, by_split, checks["distinct_task_ids"]), checks


def distributions(scalars, probs) -> dict:
    """Quantiles of the truth, metrics, morphology and conditions; source modes of ok injected rows."""
    injected = scalars.filter(~F.col("is_control"))
    inj_ok = injected.filter(F.col("ok"))
    return {
        "injected": _quantiles(inj_ok, sections.INJECTED_DISTRIBUTIONS, probs),
        "morphology": _quantiles(inj_ok, sections.MORPHOLOGY, probs),
        "psf_depth_injected": _quantiles(injected, sections.PSF_DEPTH, probs),
        "psf_depth_control": _quantiles(scalars.filter(F.col("is_control")), sections.PSF_DEPTH, probs),
        "src_mode": {str(r["src_mode"]): r["count"] for r in inj_ok.groupBy("src_mode").count().collect()},
    }


def pair_rows(rows, layout, cfg, fraction: float):
    """One row per ``pair_id`` (flux accounting, gate pixels of the sampled pairs), persisted."""
    g, fa = cfg.gates, cfg.flux_accounting
    inj_side = rows.filter(~F.col("is_control")).select(
        "pair_id", F.col("task_id").alias("inj_task_id"), F.col("target_id").alias("inj_target_id"),
        F.col("ok").alias("inj_ok"), F.col("image").alias("inj_image"), F.col("arc").alias("inj_arc"),
        *[F.col(f"gain_{b}").alias(f"inj_gain_{b}") for b in layout.bands],
        *[F.col(f"noise_kernel_sum_{b}").alias(f"inj_noise_kernel_sum_{b}") for b in layout.bands])
    ctl_side = rows.filter(F.col("is_control")).select(
        "pair_id", F.col("task_id").alias("ctl_task_id"), F.col("target_id").alias("ctl_target_id"),
        F.col("ok").alias("ctl_ok"),
        F.col("image").alias("ctl_image"))
    task = functools.partial(pairs_task, layout=layout, core_radius=g.core_radius_pix, annulus=g.annulus_pix,
                             rounding_units=fa.zero_pixel_rounding_units, max_abs_sum_z=fa.max_abs_sum_z,
                             max_chi2_dof=fa.max_chi2_dof, sample_fraction=fraction, seed=g.seed)
    joined = (inj_side.join(ctl_side, "pair_id", "full_outer")
              .withColumn("target_id", F.coalesce("inj_target_id", "ctl_target_id")))
    return joined.mapInPandas(task, pair_ddl(layout.bands)).persist(StorageLevel.DISK_ONLY)


def flux_accounting(pairs, scalars, bands: str, probs) -> dict:
    """Pair statistics, residual quantiles, the worst failing pairs (:func:`sections.flux_section`)."""
    pstats = pairs.agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.col("complete").cast("long")).alias("complete"),
        F.sum((F.col("has_injected") & ~F.col("has_control")).cast("long")).alias("injected_without_control"),
        F.sum((~F.col("has_injected") & F.col("has_control")).cast("long")).alias("control_without_injected"),
        F.sum(F.col("flux_fail").cast("long")).alias("flux_fail"),
        *[F.sum(F.col(f"zero_viol_{b}")).alias(f"zero_viol_{b}") for b in bands],
        *[F.mean(F.when(F.col("complete"), F.col(f"z_sum_{b}"))).alias(f"z_mean_{b}") for b in bands],
        *[F.count(F.when(F.col("complete"), F.col(f"z_sum_{b}"))).alias(f"z_n_{b}") for b in bands],
    ).collect()[0].asDict()
    complete = pairs.filter(F.col("complete"))
    flux_q = _quantiles(complete, [f"{k}_{b}" for k in ("z_sum", "chi2_dof") for b in bands], probs)
    worst_expr = F.greatest(*[F.abs(F.col(f"z_sum_{b}")) for b in bands])
    worst = [r.asDict() for r in complete.filter(F.col("flux_fail")).withColumn("max_abs_z", worst_expr)
             .orderBy(F.desc("max_abs_z"), "pair_id")
             .select("pair_id", "max_abs_z", *[f"chi2_dof_{b}" for b in bands],
                     *[f"zero_viol_{b}" for b in bands]).limit(10).collect()]
    duplicates = scalars.groupBy("pair_id", "is_control").count().filter("count > 1").count()
    return sections.flux_section(pstats, flux_q, worst, duplicates, bands)


def gates(pairs, g, fraction: float) -> dict:
    """Both shortcut gates on the sampled pairs' core and annulus pixels, folds grouped by each
    pair's ``target_id`` (a pair without one is its own background, counted in ``missing_target_id``)."""
    sampled = pairs.filter(F.col("sampled")).orderBy("pair_id").select(
        "pair_id", "target_id", "core_inj", "core_ctl", "ann_inj", "ann_ctl").collect()
    stack = (lambda k: np.array([r[k] for r in sampled], dtype=np.float64).reshape(len(sampled), -1))
    targets = [r["target_id"] if r["target_id"] is not None else f"pair:{r['pair_id']}" for r in sampled]
    out = run_gates(stack("core_inj"), stack("core_ctl"), stack("ann_inj"), stack("ann_ctl"), targets,
                    folds=g.cv_folds, c=g.regularization_c, core_auc_max=g.core_auc_max,
                    annulus_auc_max=g.annulus_auc_max, min_pairs=g.min_pairs,
                    min_backgrounds=g.min_backgrounds, n_permutations=g.n_permutations, seed=g.seed)
    out["sample_fraction"] = fraction
    out["missing_target_id"] = sum(r["target_id"] is None for r in sampled)
    return out


def _hash_sample(df, col: str, fraction: float):
    return df.filter(F.pmod(F.xxhash64(col), F.lit(1_000_000)) < int(fraction * 1_000_000) + 1)


def gallery(rows, pairs, inj_ok, layout, n_complete: int, k: int) -> tuple[list[dict], list[dict]]:
    """``(picks, gallery entries)``: complete pairs at evenly spaced arc-SNR ranks, with pixels."""
    pool = (_hash_sample(pairs.filter(F.col("complete")).select("pair_id"), "pair_id",
                         min(1.0, GALLERY_POOL / max(n_complete, 1)))
            .join(inj_ok.select("pair_id", "arc_snr", "theta_e"), "pair_id").orderBy("arc_snr", "pair_id").collect())
    picks = sections.gallery_picks(pool, k)
    shape = (layout.n_bands, layout.npix, layout.npix)
    pix = rows.filter(F.col("pair_id").isin([p["pair_id"] for p in picks])).select(
        "pair_id", "is_control", "image").collect()
    by_key = {(r["pair_id"], r["is_control"]): pixel_array([r["image"]], shape)[0] for r in pix}
    return picks, [{"injected": by_key[(p["pair_id"], False)], "control": by_key[(p["pair_id"], True)],
                    "label": f"SNR {p['arc_snr']:.1f}\ntheta_E {p['theta_e']:.2f}\""} for p in picks]


POPULATION_SAMPLE = 200_000   # injected pairs drawn (hash of pair_id) for the lens-population section


def lens_population(scalars, n_injected: int) -> dict:
    """Truth-level population checks (:mod:`udfs.qa.lens_population`) on a hash sample of the pairs:
    each ok injected row's true arc r flux against its ok control's host flux within 4"."""
    inj = scalars.filter(~F.col("is_control") & F.col("ok")).select(
        "pair_id", "arc_flux_r", "theta_e", "host_abs_mag_r", "sigma_v", "n_images")
    ctl = scalars.filter(F.col("is_control") & F.col("ok")).select(
        "pair_id", F.col("aperture_flux_r").alias("host_flux_r"))
    pdf = _hash_sample(inj.join(ctl, "pair_id"), "pair_id",
                       min(1.0, POPULATION_SAMPLE / max(n_injected, 1))).orderBy("pair_id").toPandas()
    return population_section(pdf["arc_flux_r"], pdf["host_flux_r"], pdf["theta_e"], pdf["host_abs_mag_r"],
                              pdf["sigma_v"], pdf["n_images"])


def build_report(spark, uri: str, cfg) -> tuple[dict, list[dict], dict]:
    """Return ``(report, gallery pairs, histogram samples)`` for one stamps dataset."""
    files, layout = open_stamps(uri)
    rows = read_rows(spark, uri, files, layout)
    scalars = _with_colours(rows.drop("image", "arc", ERROR))
    inj_ok = scalars.filter(~F.col("is_control") & F.col("ok"))
    counts, checks = row_aggregates(scalars)
    probs = sections.with_sigma_quantiles(cfg.report.quantiles)
    dists = distributions(scalars, probs)
    fraction = min(1.0, cfg.gates.max_pairs / counts["injected"]) if counts["injected"] else 0.0
    pairs = pair_rows(rows, layout, cfg, fraction)
    flux = flux_accounting(pairs, scalars, layout.bands, probs)
    gate = gates(pairs, cfg.gates, fraction)
    picks, pictures = gallery(rows, pairs, inj_ok, layout, flux["complete_pairs"], cfg.report.gallery_pairs)
    hist_pdf = _hash_sample(inj_ok, "task_id", min(1.0, HIST_SAMPLE / max(counts["injected"], 1))) \
        .select(*sections.HISTOGRAMS).toPandas()
    report = sections.dataset_report(uri, len(files), layout, counts, checks, dists, flux, gate, picks)
    report["lens_population"] = lens_population(scalars, counts["injected"])
    report["flags"] = sections.flags(report, cfg.flux_accounting)
    rows.unpersist()
    pairs.unpersist()
    return report, pictures, {c: hist_pdf[c].to_numpy(dtype=float) for c in sections.HISTOGRAMS}


def measure_injected(spark, uri: str, files: list[str], layout, rcfg, fraction: float):
    """The measured sample of ok injected stamps (:func:`realism_io.stamps_task`), persisted."""
    task = functools.partial(realism_io.stamps_task, layout=layout, fraction=fraction, seed=rcfg.seed,
                             params=rcfg.measure_params(), probe_pix=rcfg.probe_pix, open_input=storage.open_input)
    df = (spark.createDataFrame([(f,) for f in files], "path string").repartition(len(files))
          .mapInPandas(task, realism_io.task_ddl()).persist(StorageLevel.DISK_ONLY))
    bad = df.filter(F.col("error").isNotNull()).select("error").orderBy("error").limit(1).collect()
    if bad:
        df.unpersist()
        raise StampInputError(bad[0]["error"])
    return df


def realism_report(spark, uri: str, n_injected_ok: int, real: dict, cfg) -> tuple[dict, dict]:
    """``(realism section, picture inputs)`` of one stamps dataset against the real lenses."""
    rcfg = cfg.realism
    files, layout = open_stamps(uri)
    fraction = min(1.0, rcfg.max_injected / n_injected_ok) if n_injected_ok else 0.0
    df = measure_injected(spark, uri, files, layout, rcfg, fraction)
    cols = ["task_id", "target_id", "arc_pixels", *realism.MEASUREMENTS]
    pdf = df.select(*cols, "probe").orderBy("task_id").toPandas()
    inj = {c: pdf[c].to_numpy(dtype=np.int64 if c == "arc_pixels" else np.float64) for c in cols[2:]}
    real_m = realism.measure_stamps(real["image"], real["invvar"], PIXSCALE_ARCSEC, real["psf_fwhm"],
                                    offsets=real["offsets"], **rcfg.measure_params())
    probe = realism_io.probe(pdf["probe"], pdf["target_id"], real, rcfg)
    section = realism.realism_section(inj, real_m, probe, n_injected_ok=n_injected_ok, sample_fraction=fraction,
                                      params=cfg.as_dict()["realism"])
    section["real"] = real["uri"]
    picks = realism.nearest(inj, real_m, rcfg.nearest)[:rcfg.picture_rows] if len(pdf) else []
    wanted = sorted({pdf["task_id"].iloc[j] for row in picks for j in row})
    images = {r["task_id"]: np.asarray(r["image"], np.float64).reshape(3, layout.npix, layout.npix)
              for r in df.filter(F.col("task_id").isin(wanted)).select("task_id", "image").collect()}
    df.unpersist()
    rows = realism_io.picture_rows(picks, images, list(pdf["task_id"]), inj, real, real_m)
    hists = {m: {"injected": inj[m], "real": real_m[m]} for m in realism.MEASUREMENTS}
    return section, {"rows": rows, "hists": hists, "uri": uri}


def write_realism(args, cfg, pictures: list[dict]) -> dict:
    """Write ``<stem>_realism[_b].png`` and ``<stem>_realism_hist[_b].png``; return their outputs entries."""
    outputs = {}
    for suffix, pic in zip(("", "_b"), pictures):
        key, hist_key = f"realism{suffix}", f"realism_hist{suffix}"
        outputs[key], outputs[hist_key] = _sibling(args.output, f"{key}.png"), _sibling(args.output, f"{hist_key}.png")
        storage.write_bytes(outputs[key], plots.neighbours(
            pic["rows"], "grz", f"{args.real} (left) and the nearest injections of {pic['uri']}"))
        storage.write_bytes(outputs[hist_key], plots.histograms(
            pic["hists"], cfg.report.histogram_bins, f"realism: injections of {pic['uri']} vs real lenses"))
    return outputs


def _sibling(output: str, suffix: str) -> str:
    base = output[:-5] if output.endswith(".json") else output
    return f"{base}_{suffix}"


def write_outputs(args, cfg, results: list[tuple[dict, list, dict]], realism_pictures: list[dict] | None = None) -> dict:
    """Write the pictures and the JSON report; return the report."""
    outputs = {"gallery": _sibling(args.output, "gallery.png"), "histograms": _sibling(args.output, "histograms.png")}
    outputs.update(write_realism(args, cfg, realism_pictures or []))
    names = [("gallery", args.stamps), ("gallery_b", args.compare)]
    for (key, uri), (rep, pictures, _) in zip(names, results):
        if pictures:
            outputs[key] = _sibling(args.output, f"{key}.png")
            storage.write_bytes(outputs[key], plots.gallery(pictures, rep["layout"]["bands"],
                                                            f"{uri}: injected | control"))
    hists = [h for _, _, h in results]
    samples = ({c: {"injected": v} for c, v in hists[0].items()} if len(hists) == 1 else
               {c: {"A": hists[0][c], "B": hists[1][c]} for c in hists[0]})
    storage.write_bytes(outputs["histograms"], plots.histograms(samples, cfg.report.histogram_bins,
                                                                "injected stamps (ok)"))
    provenance = {"code_version": code_version(), "config_hash": config_hash(cfg.as_dict()), "config": args.config}
    report = sections.combined_report(results[0][0], results[1][0] if len(results) > 1 else None,
                                      provenance, cfg.report)
    report["outputs"] = outputs
    write_json(args.output, report)
    return report


@job_main
def main(argv=None) -> int:
    args = parse_args(argv)
    storage.check_writable(args.output, folder=False)  # before any input is read
    cfg, uris = load_config(args.config), [args.stamps] + ([args.compare] if args.compare else [])
    real = realism_io.read_real(args.real) if args.real else None
    for uri in uris:  # fail fast on an empty/wrong dataset or an annulus off the stamp, before Spark
        layout = open_stamps(uri)[1]
        annulus_mask(layout.npix, *cfg.gates.annulus_pix)
        if real is not None:
            realism_io.check_inputs(layout, real, cfg.realism)
    with publishing(args.output, job="jobs.validate_cosmos_injection", config_hash=config_hash(cfg.as_dict()),
                    folder=False) as output:
        spark = get_spark("validate_cosmos_injection")
        results = [build_report(spark, uri, cfg) for uri in uris]
        realism_pictures = []
        for uri, (rep, _, _) in zip(uris if real is not None else [], results):
            rep["realism"], pictures = realism_report(
                spark, uri, rep["counts"]["injected"] - rep["counts"]["failed"]["injected"], real, cfg)
            realism_pictures.append(pictures)
        report = write_outputs(args, cfg, results, realism_pictures)
        output.commit([])
    for line in sections.summary_lines(report, args.output):
        print(line)
    for name, (rep, _, _) in zip(("A", "B"), results if real is not None else []):
        for line in realism.summary_lines(rep["realism"]):
            print(f"{name}: {line}" if len(results) > 1 else line)
    return 1 if (args.strict and report["flags"]) else 0


if __name__ == "__main__":
    sys.exit(main())
