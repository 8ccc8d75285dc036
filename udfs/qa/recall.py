"""Recall of real lenses at score thresholds and at fixed false-positive rates, with bootstrap CIs.

Conventions. At a fixed threshold t a stamp is called a lens when ``score >= t``. At a fixed FPR f
with n negatives, m = floor(f * n) false positives are allowed; the threshold is the (m+1)-th
highest negative score and a stamp is called a lens when its score is strictly greater, so at most m
negatives pass (fewer with ties). The point is reported only when ``n >= min_negatives_per_fpr / f``
(default 10 / f: at least ten false positives at that rate); otherwise it is marked unsupported with
the count needed. Confidence intervals: percentile bootstrap, positives and negatives resampled
independently with replacement (so the fixed-FPR threshold is re-derived in every replicate),
``numpy.random.default_rng(seed)``.
"""
from __future__ import annotations

import math

import numpy as np


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
