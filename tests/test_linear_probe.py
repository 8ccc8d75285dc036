"""The grouped linear probe (udfs.qa.linear_probe) and the shortcut gates built on it, on generated
sets whose answer is known. Each test prints its figures (pytest -s)."""
from __future__ import annotations

import numpy as np
import pytest

from udfs.qa.linear_probe import grouped_auc, grouped_splits, permute_within_groups
from udfs.qa.shortcut_gates import gate_auc, run_gates

N_PERM = 20


def _paired(n_pairs: int, n_features: int, seed: int, shift: float = 0.0):
    """``n_pairs`` pairs of independent N(0, 1) rows; label 1 rows get ``shift`` (sigma) in feature 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n_pairs, n_features))
    y = np.r_[np.ones(n_pairs, int), np.zeros(n_pairs, int)]
    x[:n_pairs, 0] += shift
    return x, y, np.r_[np.arange(n_pairs), np.arange(n_pairs)]


def _backgrounds(n_backgrounds=5, repeats=20, n_features=30, faint=0.01, noise=0.02, seed=0):
    """The demo's trap: every pair of a target shares its control cutout exactly (the background,
    N(0, 1) per feature); the injected stamp adds a faint positive "arc" (``faint`` x U(0, 1), 1% of
    the spread between backgrounds) and its own noise (``noise``). Rows: injected then control."""
    rng = np.random.default_rng(seed)
    bg = rng.normal(size=(n_backgrounds, n_features))
    target = np.repeat(np.arange(n_backgrounds), repeats)
    n = len(target)
    inj = bg[target] + faint * rng.uniform(size=(n, n_features)) + noise * rng.normal(size=(n, n_features))
    x = np.concatenate([inj, bg[target]])
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    return x, y, np.r_[target, target], np.r_[np.arange(n), np.arange(n)]


def test_identical_distributions_read_chance():
    x, y, pairs = _paired(100, 10, seed=21)
    res = grouped_auc(x, y, pairs, folds=5, c=1.0, n_permutations=N_PERM, seed=3)
    print(f"\nsame distributions: AUC {res['auc']:.3f} {res['auc_interval']}, null {res['null_aucs']}, "
          f"p {res['p_value']:.3f}")
    assert res["n_rows"] == 200 and res["n_groups"] == 100 and res["n_features"] == 10
    assert abs(res["auc"] - 0.5) < 0.1
    assert res["auc_interval"][0] < 0.5 < res["auc_interval"][1]
    assert abs(res["null_aucs"]["q0.5"] - 0.5) < 0.1
    assert res["p_value"] > 0.1


def test_planted_three_sigma_shift_is_found_with_the_smallest_p_value():
    x, y, pairs = _paired(100, 10, seed=22, shift=3.0)
    res = grouped_auc(x, y, pairs, folds=5, c=1.0, n_permutations=N_PERM, seed=3)
    print(f"\n3-sigma shift: AUC {res['auc']:.3f} {res['auc_interval']}, folds {np.round(res['fold_aucs'], 3)}, "
          f"null {res['null_aucs']}, p {res['p_value']:.4f}")
    assert res["auc"] > 0.95 and res["auc_interval"][0] > 0.9
    assert len(res["fold_aucs"]) == 5 and min(res["fold_aucs"]) > 0.9
    assert res["null_aucs"]["q0.95"] < 0.7
    assert res["p_value"] == pytest.approx(1 / (1 + N_PERM))


def test_repeated_backgrounds_fool_pair_folds_but_not_target_folds():
    """The fix: with 5 backgrounds x 20 pairs and a faint arc, folds grouped by pair (the old gate)
    recognise the control cutouts seen in training and read a high AUC; folds grouped by target
    meet each background fresh and read near 0.5 (what remains is the faint arc itself, seen
    within one background per fold: the pooled AUC is 0.5 + (fold AUC - 0.5) / 5)."""
    x, y, target, pair = _backgrounds()
    by_target = grouped_auc(x, y, target, folds=5, c=1.0, n_permutations=N_PERM, seed=4)
    by_pair = grouped_auc(x, y, pair, folds=5, c=1.0, n_permutations=N_PERM, seed=4)
    print(f"\nbackgrounds trap: by target AUC {by_target['auc']:.3f} {by_target['auc_interval']} folds "
          f"{np.round(by_target['fold_aucs'], 2)}; by pair AUC {by_pair['auc']:.3f} {by_pair['auc_interval']}")
    assert by_target["n_groups"] == 5 and by_pair["n_groups"] == 100
    assert abs(by_target["auc"] - 0.5) < 0.1
    assert by_pair["auc"] > 0.75 and by_pair["auc"] - by_target["auc"] > 0.2
    # the gate on the same pairs groups by target: the same answer as the probe grouped by target
    n = len(x) // 2
    gate = gate_auc(x[:n], x[n:], target[:n], folds=5, c=1.0, n_permutations=N_PERM, seed=4, min_backgrounds=5)
    assert gate["auc"] == by_target["auc"] and gate["n_backgrounds"] == 5 and gate["n_pairs"] == 100


def test_gate_refuses_below_min_backgrounds_and_names_the_count():
    x, y, target, _ = _backgrounds(n_backgrounds=3, repeats=18)
    n = len(x) // 2
    res = gate_auc(x[:n], x[n:], target[:n], folds=5, c=1.0, n_permutations=N_PERM, seed=1, min_backgrounds=10)
    print(f"\nrefusal: {res['note']}")
    assert res["auc"] is None and res["refused"] is True
    assert res["note"] == "not measurable: 3 distinct backgrounds (targets) < 10 required"
    out = run_gates(x[:n], x[n:], x[:n], x[n:], target[:n], folds=5, c=1.0, core_auc_max=0.6,
                    annulus_auc_max=0.6, min_pairs=20, min_backgrounds=10, n_permutations=N_PERM, seed=1)
    assert out["core"]["flagged"] is None and out["core"]["note"] == res["note"] and out["core"]["limit"] == 0.6
    # fewer groups than folds refuses too, whatever min_groups says
    x, y, pairs = _paired(4, 3, seed=1)
    assert grouped_auc(x, y, pairs, folds=5, c=1.0, n_permutations=0, seed=0)["note"] == \
        "not measurable: 4 distinct groups < 5 required"


def test_same_seed_gives_the_same_dict():
    x, y, pairs = _paired(60, 8, seed=23, shift=0.5)
    x[3, 2] = np.nan  # non-finite features count as 0, deterministically
    a = grouped_auc(x, y, pairs, folds=4, c=0.5, n_permutations=10, seed=9)
    b = grouped_auc(x, y, pairs, folds=4, c=0.5, n_permutations=10, seed=9)
    c = grouped_auc(x, y, pairs, folds=4, c=0.5, n_permutations=10, seed=10)
    assert a == b
    assert c["auc"] == a["auc"] and (c["null_mean"], c["auc_interval"]) != (a["null_mean"], a["auc_interval"])


def test_groups_never_straddle_train_and_test():
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 37, size=500)
    splits = grouped_splits(np.unique(groups, return_inverse=True)[1], 5)
    assert len(splits) == 5
    tested = np.concatenate([test for _, test in splits])
    assert np.array_equal(np.sort(tested), np.arange(500))  # every row tested exactly once
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == 500


def test_permutation_stays_within_groups():
    rng = np.random.default_rng(3)
    group_index = np.r_[np.repeat(np.arange(10), 6), np.full(5, 10)]
    y = np.r_[np.tile([1, 0, 1, 0, 1, 0], 10), np.ones(5, int)]
    seen = set()
    for _ in range(20):
        yp = permute_within_groups(y, group_index, rng)
        for g in range(11):  # each group keeps its labels (a single-label group is untouched)
            assert sorted(yp[group_index == g]) == sorted(y[group_index == g])
        seen.add(tuple(yp))
    assert len(seen) > 1


def test_wide_features_fit_in_the_rows_span_with_the_same_scores():
    """More pixels than pairs (the annulus gate): the fit on the training rows' span gives the decision
    values of the plain standardised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from udfs.qa.linear_probe import fold_features, grouped_splits

    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 900))
    y = np.r_[np.ones(60, int), np.zeros(60, int)]
    x[y == 1, :40] += 0.4
    splits = grouped_splits(np.arange(120) % 30, 5)
    for (train, test, xt, xs) in fold_features(x, splits):
        assert xt.shape[1] < len(train)                       # n x n, not n x p
        ours = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(xt, y[train]).decision_function(xs)
        plain = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000, tol=1e-10))
        ref = plain.fit(x[train], y[train]).decision_function(x[test])
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_between_group_null_for_one_label_per_group():
    """Injections vs real lenses: every target holds one label. The within-target shuffle then
    changes nothing (null = observed AUC); the between-target shuffle gives a real null."""
    rng = np.random.default_rng(8)
    groups = np.repeat(np.arange(40), 4)
    y = (groups % 2).astype(int)
    same = rng.normal(size=(160, 30))
    within = grouped_auc(same, y, groups, folds=5, n_permutations=10, seed=1)
    assert within["null_aucs"]["q0.5"] == pytest.approx(within["auc"])        # uninformative
    between = grouped_auc(same, y, groups, folds=5, n_permutations=20, seed=1, null="between")
    assert between["null"] == "between" and abs(between["null_aucs"]["q0.5"] - 0.5) < 0.1
    assert between["p_value"] > 0.05
    planted = same.copy()
    planted[y == 1, :5] += 1.5
    found = grouped_auc(planted, y, groups, folds=5, n_permutations=20, seed=1, null="between")
    assert found["auc"] > 0.9 and found["p_value"] == pytest.approx(1 / 21)
    with pytest.raises(ValueError, match="one label each"):
        grouped_auc(same, rng.integers(0, 2, 160), groups, folds=5, n_permutations=2, null="between")
