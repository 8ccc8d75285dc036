"""A grouped linear probe: can a linear classifier tell label 1 from label 0 on rows it never
trained on, when rows come in groups that must not be split between training and testing?

Method (:func:`grouped_auc`). Features are standardised (``StandardScaler``, fitted inside each
training fold) and fed to an L2 logistic regression with inverse strength ``c``. With more features
than training rows the fit runs on the coordinates of the rows in their own span (the right
eigenvectors of the standardised training rows' Gram matrix): an L2-penalised linear model's weights lie
in that span, so the solution and every decision value are the same, at the cost of an n x n
problem instead of n x p (the annulus gate: 3660 pixels, a few hundred pairs). ``GroupKFold``
with ``folds`` splits over ``groups`` keeps every group wholly in training or wholly in test, so a
group's shared content (for the shortcut gates: a control background, i.e. a target, repeated in
several pairs) cannot be memorised in training and recognised in test. The AUC is that of the
pooled out-of-fold decision values (one score per row, each from the model that did not see its
group); ``fold_aucs`` are the per-fold AUCs (None for a fold holding one label only).

Uncertainty. ``auc_interval`` is a percentile bootstrap over GROUPS: resample the groups with
replacement (each row weighted by how often its group was drawn) and recompute the AUC of the same
pooled out-of-fold scores; the models are not refitted, so it is the spread of the AUC given the
fitted scores; with a handful of groups it is coarse and lopsided (one more reason to refuse
below ``min_groups``). ``auc_se`` is Hanley & McNeil's (1982) standard error, which treats rows as
independent and so understates the spread when groups hold repeated content; prefer the interval.

Null. ``n_permutations`` refits (the whole cross-validation each time, same folds) with the labels
permuted WITHIN each group: in a paired design this swaps which member of a pair (or of a target's
pairs) is "label 1" and keeps every group's label balance, so a classifier that only recognises
groups scores ~0.5 under the null. A group whose labels are all equal is left as is.
``p_value = (1 + #{null AUC >= auc}) / (1 + n_permutations)`` (its minimum is ``1 / (1 + n)``).
``null="between"`` instead shuffles whole groups' labels among the groups, for designs where each
group holds one label (injections vs real lenses: each target is one or the other), where the
within-group shuffle would change nothing.

Refusal. Fewer distinct groups than ``max(min_groups, folds)``: no fit, a dict with ``auc: None``,
``refused: True`` and a ``note`` naming the count (:func:`refusal`). Non-finite features are set
to 0 (masked or missing pixels carry no information). Everything is deterministic for a ``seed``.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler


def refusal(n_groups: int, min_groups: int, folds: int, *, n_rows: int, n_features: int,
            group_label: str = "groups") -> dict | None:
    """The refused result when ``n_groups < max(min_groups, folds)``, else None."""
    need = max(int(min_groups), int(folds))
    if n_groups >= need:
        return None
    return {"auc": None, "refused": True, "n_groups": int(n_groups), "n_rows": int(n_rows),
            "n_features": int(n_features),
            "note": f"not measurable: {n_groups} distinct {group_label} < {need} required"}


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982, Radiology 143, 29) standard error of an AUC for independent rows
    (~0.07 for 36 pairs at AUC 0.5)."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return float(max(var, 0.0) ** 0.5)


def grouped_splits(group_index: np.ndarray, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``(train, test)`` row indices of ``GroupKFold(folds)`` over ``group_index`` (a group is
    wholly on one side of every split); the folds :func:`grouped_auc` uses."""
    group_index = np.asarray(group_index)
    return list(GroupKFold(n_splits=folds).split(np.zeros((len(group_index), 1)), groups=group_index))


def fold_features(x: np.ndarray, splits) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per split ``(train, test, train features, test features)``: standardised on the training rows
    and, with more features than training rows, expressed in the training rows' span (module doc;
    from the eigenvectors of the training Gram matrix). Labels play no part, so the permutation
    refits reuse them."""
    out = []
    for train, test in splits:
        scaler = StandardScaler().fit(x[train])
        xt, xs = scaler.transform(x[train]), scaler.transform(x[test])
        if xt.shape[1] > xt.shape[0]:
            evals, vecs = np.linalg.eigh(xt @ xt.T)
            keep = evals > evals.max() * 1e-10
            scale = np.sqrt(evals[keep])
            xs = (xs @ xt.T) @ vecs[:, keep] / scale
            xt = vecs[:, keep] * scale
        out.append((train, test, xt, xs))
    return out


def _oof_scores(features, y: np.ndarray, c: float) -> np.ndarray:
    scores = np.empty(len(y), dtype=np.float64)
    for train, test, xt, xs in features:
        scores[test] = LogisticRegression(C=c, max_iter=5000).fit(xt, y[train]).decision_function(xs)
    return scores


def _auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else None


def permute_within_groups(y: np.ndarray, group_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``y`` with its values shuffled among the rows of each group (``group_index``: 0..G-1)."""
    out = y.copy()
    order = np.argsort(group_index, kind="stable")
    bounds = np.flatnonzero(np.diff(group_index[order])) + 1
    for rows in np.split(order, bounds):
        if len(rows) > 1:
            out[rows] = y[rows][rng.permutation(len(rows))]
    return out


def _bootstrap_interval(y, scores, group_index, n_groups, n_bootstrap, confidence, rng):
    # weighted Mann-Whitney AUC on fixed scores: ties count one half, weights = draws of the row's group
    _, level = np.unique(scores, return_inverse=True)
    pos, neg = y == 1, y == 0
    aucs = []
    for _ in range(n_bootstrap):
        w = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[group_index].astype(np.float64)
        wp = np.bincount(level, weights=w * pos)
        wn = np.bincount(level, weights=w * neg)
        if wp.sum() > 0 and wn.sum() > 0:
            aucs.append(float(np.sum(wp * (np.cumsum(wn) - 0.5 * wn)) / (wp.sum() * wn.sum())))
    if not aucs:
        return [None, None]
    alpha = (1 - confidence) / 2
    return [float(np.quantile(aucs, alpha)), float(np.quantile(aucs, 1 - alpha))]


def permute_between_groups(y: np.ndarray, group_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``y`` with whole groups' labels shuffled among the groups (each group must hold one label)."""
    labels = np.zeros(int(group_index.max()) + 1, dtype=y.dtype)
    labels[group_index] = y
    if np.any(labels[group_index] != y):
        raise ValueError("a between-group null needs groups that hold one label each")
    return labels[rng.permutation(len(labels))][group_index]


def grouped_auc(x, y, groups, *, folds: int = 5, c: float = 1.0, n_permutations: int = 20, seed: int = 0,
                confidence: float = 0.95, min_groups: int = 0, n_bootstrap: int = 1000,
                group_label: str = "groups", null: str = "within") -> dict:
    """Cross-validated AUC of label 1 vs 0 with folds grouped by ``groups`` (module doc).

    ``x``: (n_rows, n_features); ``y``: 0/1 labels; ``groups``: one hashable id per row.
    Returns ``auc``, ``auc_interval`` [lo, hi] at ``confidence``, ``auc_se``, ``fold_aucs``,
    ``null_aucs`` ({"q0.5", "q0.95"}), ``null_mean``, ``p_value``, ``n_permutations``,
    ``n_groups``, ``n_rows``, ``n_features``, ``refused`` (False); or the :func:`refusal` dict.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    if x.ndim != 2 or len(y) != len(x) or len(groups) != len(x):
        raise ValueError(f"expected x (n_rows, n_features) and y, groups of n_rows, got {x.shape}, "
                         f"{y.shape}, {groups.shape}")
    if not set(np.unique(y)) <= {0, 1} or len(np.unique(y)) < 2:
        raise ValueError("y must hold both labels 0 and 1 (and nothing else)")
    _, group_index = np.unique(groups, return_inverse=True)
    n_groups = int(group_index.max()) + 1
    refused = refusal(n_groups, min_groups, folds, n_rows=len(x), n_features=x.shape[1], group_label=group_label)
    if refused is not None:
        return refused
    x = np.where(np.isfinite(x), x, 0.0)
    splits = grouped_splits(group_index, folds)
    features = fold_features(x, splits)
    scores = _oof_scores(features, y, c)
    auc = _auc(y, scores)
    boot_rng, perm_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    permute = {"within": permute_within_groups, "between": permute_between_groups}[null]
    null_aucs = np.array([_auc(yp, _oof_scores(features, yp, c))
                          for yp in (permute(y, group_index, perm_rng) for _ in range(n_permutations))],
                         dtype=np.float64)
    n_pos = int(y.sum())
    return {
        "auc": auc, "auc_interval": _bootstrap_interval(y, scores, group_index, n_groups, n_bootstrap,
                                                        confidence, boot_rng),
        "confidence": confidence, "auc_se": auc_standard_error(auc, n_pos, len(y) - n_pos),
        "fold_aucs": [_auc(y[test], scores[test]) for _, test in splits],
        "null_aucs": ({"q0.5": float(np.median(null_aucs)), "q0.95": float(np.quantile(null_aucs, 0.95))}
                      if n_permutations else None),
        "null_mean": float(null_aucs.mean()) if n_permutations else None,
        "p_value": float((1 + np.sum(null_aucs >= auc - 1e-12)) / (1 + n_permutations)) if n_permutations else None,
        "n_permutations": int(n_permutations), "null": null, "n_groups": n_groups, "n_rows": int(len(x)),
        "n_features": int(x.shape[1]), "refused": False,
    }
