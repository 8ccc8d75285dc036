"""Shortcut gates: can a classifier tell injected from paired control stamps from pixels where the
arc should not be the signal?

Two gates, each the grouped linear probe of :mod:`udfs.qa.linear_probe` (standardised pixel values,
all bands, L2 logistic regression, AUC of the pooled out-of-fold decision values, a bootstrap
interval over backgrounds and a within-background permutation null): on the central pixels alone
(``core``: a classifier that keys on the lens-galaxy core; the previous pipeline reached 0.95-0.98)
and on an outer annulus alone (``annulus``: edge or background artefacts).

The folds are grouped by TARGET (``target_id``, the control background: the injected and control
stamps of a pair share it, and a target may carry many pairs), so no background is ever in both
training and test. Grouping by pair let the classifier recognise a background it had seen in
another pair and read AUC 0.84 on the demo with every arc made 1000x fainter. With fewer than
``min_backgrounds`` distinct targets the gate refuses (``auc`` None, ``note`` says why): a handful
of backgrounds cannot tell a shortcut from the backgrounds themselves. AUC ~0.5 means no shortcut;
a measured gate is flagged when its AUC exceeds the configured limit.
"""
from __future__ import annotations

import numpy as np

from udfs.qa.linear_probe import auc_standard_error, grouped_auc

BACKGROUNDS = "backgrounds (targets)"


def gate_auc(x_injected: np.ndarray, x_control: np.ndarray, targets, *, folds: int, c: float,
             n_permutations: int, seed: int, min_backgrounds: int) -> dict:
    """Grouped AUC of injected (label 1) vs control (0); row i of both inputs is one pair and
    ``targets[i]`` its background. Returns :func:`~udfs.qa.linear_probe.grouped_auc`'s dict
    (``n_groups`` = distinct backgrounds, also as ``n_backgrounds``) plus ``n_pairs``."""
    x_injected = np.asarray(x_injected, dtype=np.float64)
    x_control = np.asarray(x_control, dtype=np.float64)
    targets = np.asarray(targets)
    if x_injected.shape != x_control.shape or x_injected.ndim != 2 or targets.shape != (len(x_injected),):
        raise ValueError(f"expected two (n_pairs, n_features) arrays of one shape and n_pairs targets, got "
                         f"{x_injected.shape}, {x_control.shape} and {targets.shape}")
    n = len(x_injected)
    res = grouped_auc(np.concatenate([x_injected, x_control]), np.r_[np.ones(n, int), np.zeros(n, int)],
                      np.concatenate([targets, targets]), folds=folds, c=c, n_permutations=n_permutations,
                      seed=seed, min_groups=min_backgrounds, group_label=BACKGROUNDS)
    return {**res, "n_pairs": int(n), "n_backgrounds": res["n_groups"]}


def run_gates(core_inj, core_ctl, ann_inj, ann_ctl, targets, *, folds: int, c: float, core_auc_max: float,
              annulus_auc_max: float, min_pairs: int, min_backgrounds: int, n_permutations: int,
              seed: int) -> dict:
    """Both gates on matched pair arrays (``targets``: each pair's ``target_id``); fewer than
    ``min_pairs`` pairs or ``min_backgrounds`` distinct targets: not measurable (reported)."""
    out = {}
    n_bg = len(set(np.asarray(targets).tolist()))
    for name, xi, xc, limit in (("core", core_inj, core_ctl, core_auc_max),
                                ("annulus", ann_inj, ann_ctl, annulus_auc_max)):
        n = len(xi)
        if n < max(min_pairs, folds):
            out[name] = {"auc": None, "refused": True, "flagged": None, "limit": limit, "n_pairs": int(n),
                         "n_backgrounds": n_bg,
                         "note": f"not measurable: {n} complete pairs < {max(min_pairs, folds)} required"}
            continue
        res = gate_auc(xi, xc, targets, folds=folds, c=c, n_permutations=n_permutations, seed=seed,
                       min_backgrounds=min_backgrounds)
        res.update(limit=limit, flagged=None if res["auc"] is None else bool(res["auc"] > limit))
        out[name] = res
    return out


__all__ = ["auc_standard_error", "gate_auc", "run_gates"]
