"""Recall of real lenses at score thresholds and at fixed false-positive rates, with bootstrap CIs.

Conventions. At a fixed threshold t a stamp is called a lens when ``score >= t``. At a fixed FPR f
with n negatives, m = floor(f * n) false positives are allowed; the threshold is the (m+1)-th
highest negative score and a stamp is called a lens when its score is strictly greater, so at most m
negatives pass (fewer with ties). The point is reported only when ``n >= min_negatives_per_fpr / f``
(default 10 / f: at least ten false positives at that rate); otherwise it is marked unsupported with
the count needed. Confidence intervals: percentile bootstrap, positives and negatives resampled
independently with replacement (so the fixed-FPR threshold is re-derived in every replicate),
``numpy.random.default_rng(seed)``.

The report of ``jobs.evaluate_real_lenses`` is built here too (:func:`real_lens_report`): anchors
failing a position check (:func:`anchor_checks`) are left out of the recall; recall is given overall
and per reference, grading and theta_E group.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from udfs.io.errors import InputError
from udfs.targets.anchors import crossmatch_to_lenscat, footprint_check


def fpr_supported(n_negatives: int, fpr: float, min_per_fpr: float) -> bool:
    return n_negatives >= math.ceil(min_per_fpr / fpr - 1e-9)


def threshold_at_fpr(negatives: np.ndarray, fpr: float) -> float:
    """The (m+1)-th highest negative score, m = floor(fpr * n) (see module doc)."""
    neg = np.asarray(negatives, dtype=np.float64)
    m = int(math.floor(fpr * neg.size + 1e-9))
    if m >= neg.size:
        return -np.inf
    return float(-np.partition(-neg, m)[m])


def recall_at(positives: np.ndarray, threshold: float, strict: bool) -> float:
    pos = np.asarray(positives, dtype=np.float64)
    if pos.size == 0:
        return float("nan")
    return float(np.mean(pos > threshold) if strict else np.mean(pos >= threshold))


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    a = (1 - confidence) / 2
    return float(np.quantile(v, a)), float(np.quantile(v, 1 - a))


def evaluate(positives: np.ndarray, negatives: np.ndarray, *, thresholds, fprs, min_per_fpr: float,
             n_boot: int, seed: int, confidence: float) -> dict:
    """Recall (and FPR) at each threshold and at each supported fixed FPR, with bootstrap intervals."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    rng = np.random.default_rng(seed)
    supported = [f for f in fprs if fpr_supported(neg.size, f, min_per_fpr)]
    boot_rec_t = np.full((n_boot, len(thresholds)), np.nan)
    boot_fpr_t = np.full((n_boot, len(thresholds)), np.nan)
    boot_rec_f = np.full((n_boot, len(supported)), np.nan)
    for b in range(n_boot):
        p = pos[rng.integers(pos.size, size=pos.size)] if pos.size else pos
        q = neg[rng.integers(neg.size, size=neg.size)] if neg.size else neg
        for j, t in enumerate(thresholds):
            boot_rec_t[b, j] = recall_at(p, t, strict=False)
            boot_fpr_t[b, j] = float(np.mean(q >= t)) if q.size else np.nan
        for j, f in enumerate(supported):
            boot_rec_f[b, j] = recall_at(p, threshold_at_fpr(q, f), strict=True)
    out = {"n_positives": int(pos.size), "n_negatives": int(neg.size), "at_threshold": [], "at_fpr": []}
    for j, t in enumerate(thresholds):
        r_lo, r_hi = _interval(boot_rec_t[:, j], confidence)
        f_lo, f_hi = _interval(boot_fpr_t[:, j], confidence)
        out["at_threshold"].append({
            "threshold": float(t), "recall": recall_at(pos, t, strict=False), "recall_ci": [r_lo, r_hi],
            "n_recovered": int((pos >= t).sum()),
            "fpr": float(np.mean(neg >= t)) if neg.size else None, "fpr_ci": [f_lo, f_hi],
            "n_false_positives": int((neg >= t).sum())})
    for f in fprs:
        need = math.ceil(min_per_fpr / f - 1e-9)
        if f not in supported:
            out["at_fpr"].append({"fpr": f, "supported": False, "negatives_needed": need,
                                  "note": f"unsupported: {neg.size} negatives < {need} "
                                          f"(= {min_per_fpr:g} / FPR)"})
            continue
        j = supported.index(f)
        t = threshold_at_fpr(neg, f)
        lo, hi = _interval(boot_rec_f[:, j], confidence)
        out["at_fpr"].append({"fpr": f, "supported": True, "negatives_needed": need, "threshold": t,
                              "achieved_fpr": float(np.mean(neg > t)), "recall": recall_at(pos, t, strict=True),
                              "recall_ci": [lo, hi], "n_recovered": int((pos > t).sum())})
    return out


def split_refs(ref: str | None) -> list[str]:
    """lenscat's ``ref`` holds one or more references separated by ``|``: each one a group."""
    if ref is None or (isinstance(ref, float) and math.isnan(ref)):
        return ["<none>"]
    parts = [p.strip() for p in str(ref).split("|") if p.strip()]
    return parts or ["<none>"]


class ScoreTableError(InputError):
    """A score table (or the table it scores) is inconsistent: duplicate ids, NaN scores, bad labels."""


def check_scores(scores: pd.DataFrame, key: str, uri: str) -> None:
    """One finite score per ``key`` value, else :class:`ScoreTableError` naming ``uri``."""
    dup = scores[key].duplicated()
    if dup.any():
        raise ScoreTableError(f"{uri}: {key} {scores.loc[dup, key].iloc[0]!r} has more than one score")
    bad = ~np.isfinite(scores["score"].to_numpy(dtype=float))
    if bad.any():
        raise ScoreTableError(f"{uri}: {int(bad.sum())} score(s) are null or not finite")


def anchor_checks(anchors: pd.DataFrame, cat: pd.DataFrame, version: str, radius: float,
                  cutouts: pd.DataFrame | None, uri: str) -> pd.DataFrame:
    """Per anchor (split ``anchor`` rows): the lenscat cross-match and, with ``cutouts``, the footprint
    check; ``problem`` is ``""`` for an anchor that passes, else the ``;``-joined reasons."""
    if len(anchors) and set(anchors["catalog"]) != {version}:
        raise ScoreTableError(f"{uri}: anchors were built from {sorted(set(anchors['catalog']))}, "
                              f"installed is {version}: catalog_row would not match")
    checks = crossmatch_to_lenscat(anchors, cat, radius)
    checks["problem"] = np.where(checks["ok"], "", "far_from_lenscat")
    if cutouts is not None:
        fp = footprint_check(anchors, cutouts, radius)
        checks = checks.merge(fp[["target_id", "on_stamp", "cutout_sep_arcsec", "dx_pix", "dy_pix", "problem"]]
                              .rename(columns={"problem": "cutout_problem"}), on="target_id", how="left")
        checks["problem"] = [";".join(p for p in (a, b) if p) for a, b in zip(checks["problem"], checks["cutout_problem"])]
        checks = checks.drop(columns=["cutout_problem"])
    return checks


def score_groups(pos: pd.DataFrame, bins) -> list[tuple[str, str, np.ndarray]]:
    """(kind, group, mask) for reference, grading and theta_E bins (arcsec, ``[lo, hi)``)."""
    out = []
    refs = [split_refs(r) for r in pos["ref"]]
    for ref in sorted({r for rs in refs for r in rs}):
        out.append(("ref", ref, np.array([ref in rs for rs in refs])))
    for g in sorted(pos["grading"].dropna().unique()):
        out.append(("grading", str(g), (pos["grading"] == g).to_numpy()))
    theta = pd.to_numeric(pos["theta_e"], errors="coerce").to_numpy(dtype=float)
    for lo, hi in zip(bins[:-1], bins[1:]):
        out.append(("theta_e", f"[{lo:g}, {hi:g})", (theta >= lo) & (theta < hi)))
    out.append(("theta_e", "unknown", ~np.isfinite(theta)))
    return out


def recall_by_group(pos: pd.DataFrame, neg_scores: np.ndarray, bins, kw: dict) -> tuple[dict, list[dict]]:
    """:func:`evaluate` per group of :func:`score_groups`: ``({kind: {group: result}}, table rows)``."""
    rows, groups = [], {}
    pos_scores = pos["score"].to_numpy(float)
    for kind, name, mask in score_groups(pos.reset_index(drop=True), bins):
        if not mask.any():
            continue
        res = evaluate(pos_scores[mask], neg_scores, **kw)
        groups.setdefault(kind, {})[name] = res
        base = {"kind": kind, "group": name, "n_positives": res["n_positives"]}
        for r in res["at_threshold"]:
            rows.append({**base, "point": "threshold", "threshold": r["threshold"], "fpr": r["fpr"],
                         "supported": True, "recall": r["recall"], "ci_lo": r["recall_ci"][0],
                         "ci_hi": r["recall_ci"][1]})
        for r in res["at_fpr"]:
            rows.append({**base, "point": "fpr", "threshold": r.get("threshold"), "fpr": r["fpr"],
                         "supported": r["supported"], "recall": r.get("recall"),
                         "ci_lo": (r.get("recall_ci") or [None])[0], "ci_hi": (r.get("recall_ci") or [None, None])[1]})
    return groups, rows


def real_lens_report(anchors: pd.DataFrame, scores: pd.DataFrame, checks: pd.DataFrame, cfg) -> dict:
    """Recall of the checked anchors against the negatives (``cfg``: the validation config's
    ``recall`` section). Returns ``{"summary": recall.json without inputs and provenance,
    "rows": recall_by_group rows, "pos"/"neg": the score arrays}``."""
    good_ids = set(checks.loc[checks["problem"] == "", "target_id"])
    scored = anchors.merge(scores, on="target_id", how="left")
    is_anchor = scored["split"] == "anchor"
    pos = scored[is_anchor & scored["target_id"].isin(good_ids) & scored["score"].notna()]
    neg = scored[(scored["split"] == "negative") & scored["score"].notna()]
    kw = dict(thresholds=cfg.thresholds, fprs=cfg.fprs, min_per_fpr=cfg.min_negatives_per_fpr,
              n_boot=cfg.bootstrap_count, seed=cfg.bootstrap_seed, confidence=cfg.confidence)
    neg_scores = neg["score"].to_numpy(float)
    overall = evaluate(pos["score"].to_numpy(float), neg_scores, **kw)
    groups, rows = recall_by_group(pos, neg_scores, cfg.theta_e_bins, kw)
    problems = checks[checks["problem"] != ""]
    summary = {
        "counts": {"anchors": int(is_anchor.sum()), "anchors_failing_checks": int(len(problems)),
                   "anchors_scored_and_checked": int(len(pos)),
                   "anchors_without_score": int((is_anchor & scored["score"].isna()).sum()),
                   "negatives": int((anchors["split"] == "negative").sum()), "negatives_scored": int(len(neg)),
                   "scores_without_target": int((~scores["target_id"].isin(anchors["target_id"])).sum())},
        "position_check": {"checked": int(len(checks)), "passed": int(len(checks) - len(problems)),
                           "max_sep_arcsec": float(checks["sep_arcsec"].max()) if len(checks) else None,
                           "failures": problems.head(50).replace({np.nan: None}).to_dict(orient="records")},
        "recall": overall, "by_group": groups,
        "rules": {"fixed_fpr": f"supported when negatives >= {cfg.min_negatives_per_fpr:g} / FPR",
                  "bootstrap": f"{cfg.bootstrap_count} replicates, seed {cfg.bootstrap_seed}, "
                               f"{cfg.confidence:g} percentile interval"},
    }
    return {"summary": summary, "rows": rows, "pos": pos["score"].to_numpy(float), "neg": neg_scores}


def threshold_lines(overall: dict) -> dict[str, float]:
    """The score thresholds drawn on the score histogram: each fixed threshold and supported FPR."""
    lines = {f"t={r['threshold']:g}": r["threshold"] for r in overall["at_threshold"]}
    lines.update({f"FPR {r['fpr']:g}": r["threshold"] for r in overall["at_fpr"] if r["supported"]})
    return lines


def summary_lines(s: dict, output: str) -> list[str]:
    """What jobs.evaluate_real_lenses prints: the recall points, then one FLAG line per failed anchor."""
    r = s["recall"]
    parts = [f"recall {x['recall']:.3f} at score >= {x['threshold']:g}" for x in r["at_threshold"]]
    parts += [f"recall {x['recall']:.3f} at FPR {x['fpr']:g}" if x["supported"] else f"FPR {x['fpr']:g} unsupported"
              for x in r["at_fpr"]]
    pc = s["position_check"]
    lines = [f"real lenses: {r['n_positives']} anchors vs {r['n_negatives']} negatives: {'; '.join(parts)}; "
             f"position check {pc['passed']}/{pc['checked']} -> {output}"]
    lines += [f"  FLAG anchor {f['target_id']}: {f['problem']} (sep {f['sep_arcsec']:.2f}\")" for f in pc["failures"]]
    return lines
