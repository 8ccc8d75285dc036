"""The stage-6 report assembled from aggregates: counts, pixel checks, flux accounting, flags, comparison.

Pure Python over plain values (no Spark): ``jobs.validate_cosmos_injection`` computes the Spark
aggregates (counts per label/reason/split, sums of the row checks, quantiles, pair statistics) as
lists of dicts and hands them here. Labels: ``injected`` (``is_control`` false) and ``control``.
Quantiles are keyed ``q<p>`` (e.g. ``q0.5``); rates are fractions in [0, 1].
"""
from __future__ import annotations

import math

import numpy as np

from udfs.qa.report import FINITE_INJECTED

LABEL = {False: "injected", True: "control"}
PIXEL_CHECKS = ("nonfinite_image", "nonfinite_invvar", "nonfinite_arc", "negative_invvar",
                "failed_with_values", "control_arc_nonzero", "controls_with_truth")
INJECTED_DISTRIBUTIONS = ["theta_e", "arc_snr", "arc_snr_g", "arc_snr_r", "arc_snr_z", "magnification",
                          "arc_colour_g_r", "arc_colour_r_z", "arc_r50_arcsec", "core_flux_frac", "n_images",
                          "src_mag_r", "src_z"]
MORPHOLOGY = ["src_gini", "src_m20", "src_clumpiness", "src_hlr_arcsec"]
PSF_DEPTH = ["psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_z", "psfdepth_g", "psfdepth_r", "psfdepth_z"]
HISTOGRAMS = ["theta_e", "arc_snr", "magnification", "arc_colour_g_r", "arc_colour_r_z", "arc_r50_arcsec",
              "core_flux_frac", "src_gini", "src_m20", "src_clumpiness", "src_hlr_arcsec", "psf_fwhm_r"]
FLUX_NOTE = ("chi2_dof ~ 1 when the injected - control residual is the arc's Poisson noise; "
             "~0 means the stored arc already contains the noise")


def with_sigma_quantiles(probs) -> tuple[float, ...]:
    """``probs`` plus 0.16, 0.5 and 0.84 (the comparison's median and 1-sigma width need them)."""
    if 0.16 not in probs or 0.5 not in probs or 0.84 not in probs:
        return tuple(sorted(set(probs) | {0.16, 0.5, 0.84}))
    return tuple(probs)


def quantile_block(values: dict[str, list], probs) -> dict:
    """``{column: {"q0.5": v, ...}}`` from per-column lists aligned with ``probs`` (None stays None)."""
    return {col: (None if vals is None else {f"q{p:g}": (None if v is None else float(v))
                                             for p, v in zip(probs, vals)})
            for col, vals in values.items()}


def count_section(counts: list[dict], by_split: list[dict], distinct_task_ids: int) -> dict:
    """Row counts by label, failures by label and reason, and by split.

    ``counts``: ``{is_control, ok, fail_reason, count}`` rows; ``by_split``: ``{split, is_control,
    ok, count}`` rows. A failure without a reason is counted under ``<null>``.
    """
    n_label = {lab: sum(r["count"] for r in counts if r["is_control"] is (lab == "control"))
               for lab in LABEL.values()}
    n_failed = {lab: sum(r["count"] for r in counts if r["is_control"] is (lab == "control") and not r["ok"])
                for lab in LABEL.values()}
    reasons: dict = {"injected": {}, "control": {}}
    for r in counts:
        if not r["ok"]:
            key = r["fail_reason"] if r["fail_reason"] is not None else "<null>"
            reasons[LABEL[r["is_control"]]][key] = reasons[LABEL[r["is_control"]]].get(key, 0) + r["count"]
    splits: dict = {}
    for r in by_split:
        s = splits.setdefault(str(r["split"]), {"injected": 0, "control": 0, "failed_injected": 0, "failed_control": 0})
        s[LABEL[r["is_control"]]] += r["count"]
        if not r["ok"]:
            s["failed_" + LABEL[r["is_control"]]] += r["count"]
    return {"rows": sum(r["count"] for r in counts), "distinct_task_ids": int(distinct_task_ids), **n_label,
            "failed": n_failed, "fail_reasons": reasons, "by_split": splits}


def flux_section(pstats: dict, flux_q: dict, worst: list[dict], duplicates: int, bands: str) -> dict:
    """Flux accounting over the pairs. ``pstats``: ``n``, ``complete``, ``injected_without_control``,
    ``control_without_injected``, ``flux_fail`` and per band ``zero_viol_<b>``, ``z_mean_<b>``
    (mean summed z of complete pairs), ``z_n_<b>``; ``flux_q``: residual quantiles; ``worst``: the
    failing pairs with the largest |z|."""
    n_complete = int(pstats["complete"] or 0)
    return {
        "pairs": int(pstats["n"]), "complete_pairs": n_complete,
        "injected_without_control": int(pstats["injected_without_control"] or 0),
        "control_without_injected": int(pstats["control_without_injected"] or 0),
        "duplicate_pair_rows": int(duplicates),
        "failing_pairs": int(pstats["flux_fail"] or 0),
        "fail_rate": (pstats["flux_fail"] or 0) / n_complete if n_complete else None,
        "zero_pixel_violations": {b: int(pstats[f"zero_viol_{b}"] or 0) for b in bands},
        "residual_quantiles": flux_q, "worst_pairs": worst,
        # mean z_sum x sqrt(n): a systematic flux error shared by the pairs (e.g. a 2% mis-scaled arc)
        "bias_z": {b: (pstats[f"z_mean_{b}"] * math.sqrt(pstats[f"z_n_{b}"])
                       if pstats[f"z_mean_{b}"] is not None else None) for b in bands},
        "note": FLUX_NOTE,
    }


def gallery_picks(pool: list[dict], k: int) -> list[dict]:
    """``k`` entries of ``pool`` (sorted by arc SNR) at evenly spaced ranks, duplicates dropped."""
    k = min(k, len(pool))
    if not k:
        return []
    return [pool[int(i)] for i in np.unique(np.round(np.linspace(0, len(pool) - 1, k)).astype(int))]


def dataset_report(uri: str, n_files: int, layout, counts: dict, checks: dict, distributions: dict,
                   flux: dict, gates: dict, picks: list[dict]) -> dict:
    """One dataset's report (without flags; see :func:`flags`). ``checks``: the summed row checks
    (:data:`PIXEL_CHECKS`) and ``nonfinite_<col>`` of the ok injected rows."""
    rates = {
        "failure_rate_injected": counts["failed"]["injected"] / counts["injected"] if counts["injected"] else None,
        "failure_rate_control": counts["failed"]["control"] / counts["control"] if counts["control"] else None,
        "flux_accounting_fail_rate": flux["fail_rate"],
    }
    return {
        "stamps": uri, "files": n_files,
        "layout": {"n_bands": layout.n_bands, "npix": layout.npix, "bands": layout.bands,
                   "pixel_scale_arcsec": layout.pixel_scale},
        "counts": counts, "rates": rates,
        "pixel_checks": {k: int(checks[k] or 0) for k in PIXEL_CHECKS},
        "scalar_nonfinite_injected_ok": {c: int(checks[f"nonfinite_{c}"] or 0) for c in FINITE_INJECTED},
        "distributions": distributions, "flux_accounting": flux, "gates": gates,
        "gallery_pairs": [{"pair_id": p["pair_id"], "arc_snr": p["arc_snr"]} for p in picks],
    }


def _label_z(rep: dict) -> str | None:
    """Two-proportion z-test of the failure rates of the two labels (sets ``rates.failure_rate_label_z``)."""
    n_i, n_c = rep["counts"]["injected"], rep["counts"]["control"]
    k_i, k_c = rep["counts"]["failed"]["injected"], rep["counts"]["failed"]["control"]
    if not (n_i and n_c and (k_i + k_c)):
        return None
    p = (k_i + k_c) / (n_i + n_c)
    z = (k_i / n_i - k_c / n_c) / math.sqrt(p * (1 - p) * (1 / n_i + 1 / n_c)) if 0 < p < 1 else 0.0
    rep["rates"]["failure_rate_label_z"] = z
    if abs(z) > 3:
        return f"failure rate depends on the label: injected {k_i}/{n_i}, control {k_c}/{n_c} (z={z:.1f})"
    return None


def _auc_text(gate: dict) -> str:
    lo, hi = gate.get("auc_interval") or (None, None)
    return f"{gate['auc']:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None else "")


def gate_text(name: str, gate: dict) -> str:
    """One gate in words: ``core gate AUC 0.56 [0.48, 0.63], null median 0.50 (95% 0.58), p 0.21,
    53 backgrounds`` (interval over backgrounds, within-background permutation null), or its refusal."""
    if gate.get("auc") is None:
        return f"{name} gate {gate.get('note') or 'not measured'}"
    text = f"{name} gate AUC {_auc_text(gate)}"
    null = gate.get("null_aucs")
    if null:
        text += f", null median {null['q0.5']:.2f} (95% {null['q0.95']:.2f}), p {gate['p_value']:.2g}"
    if gate.get("n_backgrounds") is not None:
        text += f", {gate['n_backgrounds']} backgrounds"
    return text


def flags(rep: dict, flux_cfg) -> list[str]:
    """What is wrong with a dataset, one line each (``flux_cfg``: ``max_fail_frac``, ``max_abs_sum_z``)."""
    out = []
    for name in ("core", "annulus"):
        gate = rep["gates"][name]
        if gate.get("flagged"):
            out.append(f"gate_{name}: {gate_text(name, gate)} > limit {gate['limit']}")
    f = rep["flux_accounting"]
    if f["fail_rate"] is not None and f["fail_rate"] > flux_cfg.max_fail_frac:
        out.append(f"flux_accounting: {f['failing_pairs']}/{f['complete_pairs']} pairs fail "
                   f"(> {flux_cfg.max_fail_frac})")
    for b, z in f["bias_z"].items():
        if z is not None and abs(z) > flux_cfg.max_abs_sum_z:
            out.append(f"flux_accounting: band {b} residuals are biased (mean z x sqrt(n) = {z:.1f})")
    for k in ("injected_without_control", "control_without_injected", "duplicate_pair_rows"):
        if f[k]:
            out.append(f"pairing: {f[k]} {k.replace('_', ' ')}")
    out += [f"pixels: {k} = {v}" for k, v in rep["pixel_checks"].items() if v]
    bad = {k: v for k, v in rep["scalar_nonfinite_injected_ok"].items() if v}
    if bad:
        out.append(f"scalars: null/non-finite values in ok injected rows {bad}")
    if rep["counts"]["distinct_task_ids"] != rep["counts"]["rows"]:
        out.append(f"task_id not unique: {rep['counts']['rows']} rows, {rep['counts']['distinct_task_ids']} ids")
    for lab, reasons in rep["counts"]["fail_reasons"].items():
        if "<null>" in reasons:
            out.append(f"failures without fail_reason ({lab}): {reasons['<null>']}")
    label = _label_z(rep)
    return out + ([label] if label else [])


def combined_report(rep_a: dict, rep_b: dict | None, provenance: dict, report_cfg) -> dict:
    """The JSON report: one dataset's, or A (``--stamps``) and B (``--compare``) with their comparison."""
    if rep_b is None:
        return {**rep_a, "provenance": provenance}
    comparison = compare_reports(rep_a, rep_b, median_shift=report_cfg.compare_median_shift,
                                 rate_diff=report_cfg.compare_rate_diff)
    return {"a": rep_a, "b": rep_b, "comparison": comparison, "provenance": provenance,
            "flags": [f"A: {f}" for f in rep_a["flags"]] + [f"B: {f}" for f in rep_b["flags"]]}


def population_text(pop: dict) -> str:
    """One line of :mod:`udfs.qa.lens_population`'s section."""
    frac, rho = pop["arc_brighter_than_host_frac"], pop["theta_e_luminosity_spearman"]
    text = (f"lens population: arc brighter than host (r, {pop['radius_arcsec']:g}\") in "
            + ("n/a" if frac is None else f"{100 * frac:.0f}%") + f" of {pop['n_pairs']} pairs "
            f"(goal <= {100 * pop['arc_brighter_than_host_max']:.0f}%)")
    if rho is not None:
        text += f"; Spearman(theta_E, host luminosity) {rho:.2f} over {pop['n_with_deflector']}"
    return text + f"; images per source {pop['n_images']}"


def summary_lines(report: dict, output: str) -> list[str]:
    """What the job prints: one summary line of A, the comparison's highlights, every flag."""
    single = report if "a" not in report else report["a"]
    lines = [f"validation: {single['counts']['rows']} rows, flux-accounting fail rate "
             f"{single['flux_accounting']['fail_rate']} -> {output}"]
    for label, rep in (("", single), ("B: ", report.get("b"))):
        if rep is not None:
            lines += [f"  {label}{gate_text(g, rep['gates'][g])}" for g in ("core", "annulus")]
            if rep.get("lens_population"):
                lines.append(f"  {label}{population_text(rep['lens_population'])}")
    lines += [f"  differs: {h}" for h in report.get("comparison", {}).get("highlights", [])]
    return lines + [f"  FLAG {f}" for f in report["flags"]]


def compare_reports(a: dict, b: dict, *, median_shift: float, rate_diff: float) -> dict:
    """Differences that matter between two reports (A = --stamps, B = --compare).

    Highlighted: a distribution whose median moved by more than ``median_shift`` x the mean of the
    two inter-quantile ranges q0.16..q0.84 (about 1 sigma either side), failure and flux-accounting
    rates that differ by more than ``rate_diff``, gates whose AUC or flag differ.
    """
    highlights, rows = [], []
    for section in ("injected", "morphology", "psf_depth_injected", "psf_depth_control"):
        da, db = a.get("distributions", {}).get(section, {}), b.get("distributions", {}).get(section, {})
        for col in sorted(set(da) & set(db)):
            qa, qb = da[col], db[col]
            if not qa or not qb or qa.get("q0.5") is None or qb.get("q0.5") is None:
                continue
            spread = [q.get("q0.84") - q.get("q0.16") for q in (qa, qb)
                      if q.get("q0.84") is not None and q.get("q0.16") is not None]
            width = float(np.mean(spread)) if spread else 0.0
            shift = qb["q0.5"] - qa["q0.5"]
            rel = shift / width if width > 0 else (0.0 if shift == 0 else float("inf"))
            row = {"section": section, "column": col, "median_a": qa["q0.5"], "median_b": qb["q0.5"],
                   "shift": shift, "shift_over_width": rel, "highlight": abs(rel) > median_shift}
            rows.append(row)
            if row["highlight"]:
                highlights.append(f"{section}.{col}: median {qa['q0.5']:.4g} -> {qb['q0.5']:.4g} "
                                  f"({rel:+.2f} x the 16-84% width)")
    rates = []
    for key in ("failure_rate_injected", "failure_rate_control", "flux_accounting_fail_rate"):
        ra, rb = a.get("rates", {}).get(key), b.get("rates", {}).get(key)
        if ra is None or rb is None:
            continue
        hl = abs(rb - ra) > rate_diff
        rates.append({"rate": key, "a": ra, "b": rb, "diff": rb - ra, "highlight": hl})
        if hl:
            highlights.append(f"{key}: {ra:.4g} -> {rb:.4g}")
    gates = []
    for g in ("core", "annulus"):
        ga, gb = a.get("gates", {}).get(g, {}), b.get("gates", {}).get(g, {})
        if ga.get("auc") is None or gb.get("auc") is None:
            if ga or gb:
                gates.append({"gate": g, "a": gate_text(g, ga), "b": gate_text(g, gb), "highlight": False})
            continue
        hl = bool(ga.get("flagged")) != bool(gb.get("flagged")) or abs(gb["auc"] - ga["auc"]) > 0.05
        gates.append({"gate": g, "auc_a": ga["auc"], "auc_b": gb["auc"], "interval_a": ga.get("auc_interval"),
                      "interval_b": gb.get("auc_interval"), "p_value_a": ga.get("p_value"),
                      "p_value_b": gb.get("p_value"), "flagged_a": ga.get("flagged"),
                      "flagged_b": gb.get("flagged"), "a": gate_text(g, ga), "b": gate_text(g, gb), "highlight": hl})
        if hl:
            highlights.append(f"gate {g}: AUC {_auc_text(ga)} -> {_auc_text(gb)}"
                              f" (flagged {ga.get('flagged')} -> {gb.get('flagged')})")
    return {"distributions": rows, "rates": rates, "gates": gates, "highlights": highlights}
