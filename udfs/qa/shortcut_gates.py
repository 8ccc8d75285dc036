"""Shortcut gates: can a classifier tell injected from paired control stamps from pixels where the
arc should not be the signal?

Two gates, each a logistic regression (scikit-learn, L2, standardised pixel values, all bands) with
cross-validated ROC AUC: on the central pixels alone (``core``: a classifier that keys on the
lens-galaxy core; the previous pipeline reached 0.95-0.98) and on an outer annulus alone
(``annulus``: edge or background artefacts). The folds are grouped by pair, so an injected stamp and
its control are always on the same side. AUC ~0.5 means no shortcut; a gate is flagged above its
configured limit. The AUC is computed on the pooled out-of-fold decision values.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def gate_auc(x_injected: np.ndarray, x_control: np.ndarray, *, folds: int, c: float) -> dict:
    """Cross-validated AUC of injected (label 1) vs control (0); row i of both inputs is one pair.

    Returns ``auc`` (pooled out-of-fold), ``fold_aucs``, ``n_pairs``, ``n_features``.
    """
    x_injected = np.asarray(x_injected, dtype=np.float64)
    x_control = np.asarray(x_control, dtype=np.float64)
    if x_injected.shape != x_control.shape or x_injected.ndim != 2:
        raise ValueError(f"expected two (n_pairs, n_features) arrays of one shape, got "
                         f"{x_injected.shape} and {x_control.shape}")
    n = len(x_injected)
    x = np.concatenate([x_injected, x_control])
    x = np.where(np.isfinite(x), x, 0.0)  # masked / missing pixels carry no information
    y = np.concatenate([np.ones(n, int), np.zeros(n, int)])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    cv = GroupKFold(n_splits=folds)
    scores = cross_val_predict(model, x, y, groups=groups, cv=cv, method="decision_function")
    fold_aucs = [float(roc_auc_score(y[test], scores[test])) for _, test in cv.split(x, y, groups)]
    auc = float(roc_auc_score(y, scores))
    return {"auc": auc, "auc_se": auc_standard_error(auc, n, n), "fold_aucs": fold_aucs, "n_pairs": int(n),
            "n_features": int(x.shape[1])}


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982, Radiology 143, 29) standard error of an AUC: how far from 0.5 a
    small sample can wander without a real shortcut (~0.07 for 36 pairs at AUC 0.5)."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return float(max(var, 0.0) ** 0.5)


def run_gates(core_inj, core_ctl, ann_inj, ann_ctl, *, folds: int, c: float, core_auc_max: float,
              annulus_auc_max: float, min_pairs: int) -> dict:
    """Both gates on matched pair arrays; fewer than ``min_pairs`` pairs: not measurable (reported)."""
    out = {}
    for name, xi, xc, limit in (("core", core_inj, core_ctl, core_auc_max),
                                ("annulus", ann_inj, ann_ctl, annulus_auc_max)):
        n = len(xi)
        if n < max(min_pairs, folds):
            out[name] = {"auc": None, "flagged": None, "limit": limit, "n_pairs": int(n),
                         "note": f"not measurable: {n} complete pairs < {max(min_pairs, folds)}"}
            continue
        res = gate_auc(xi, xc, folds=folds, c=c)
        res.update(limit=limit, flagged=bool(res["auc"] > limit))
        out[name] = res
    return out
