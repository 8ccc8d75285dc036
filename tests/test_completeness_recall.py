"""Completeness (Wilson intervals, binning, job) and real-lens recall (thresholds, fixed FPR, bootstrap)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import completeness as comp_job
from udfs.io.datasets import dataset_files
from tests.stamp_factory import make_rows, write_dataset
from udfs.qa.selection_function import bin_index, completeness_table, count_bins, wilson
from udfs.qa.recall import evaluate, split_refs, threshold_at_fpr


def test_wilson_against_known_values():
    # Wilson (1927) score interval; values as tabulated by Newcombe (1998), Stat. Med. 17, 857 (95%)
    lo, hi = wilson([0, 1, 5, 10, 81], [10, 10, 10, 10, 263], 0.95)
    np.testing.assert_allclose(lo, [0.0, 0.0179, 0.2366, 0.7225, 0.2553], atol=5e-4)
    np.testing.assert_allclose(hi, [0.2775, 0.4042, 0.7634, 1.0, 0.3662], atol=5e-4)
    # closed form at 68.27%: z = 1, centre (k + z^2/2) / (n + z^2)
    k, n, z = 7, 20, 1.0
    centre = (k + z * z / 2) / (n + z * z)
    half = z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    lo, hi = wilson(k, n, 0.682689492)
    assert (lo[0], hi[0]) == pytest.approx((centre - half, centre + half), abs=1e-6)
    lo, hi = wilson(0, 0, 0.95)
    assert np.isnan(lo[0]) and np.isnan(hi[0])


def test_binning_and_counts_known_answer():
    edges = (0.0, 1.0, 2.0)
    assert bin_index(np.array([-0.1, 0.0, 0.99, 1.0, 2.0, 2.01, np.nan]), edges).tolist() == [-1, 0, 0, 1, 1, -1, -1]
    pdf = pd.DataFrame({"theta_e": [0.5, 0.5, 1.5, 1.5, 1.5, 3.0], "arc_snr": [5, 15, 5, 15, 15, 5],
                        "score": [0.9, 0.2, 0.95, 0.6, 0.1, 0.99]})
    bins = {"theta_e": edges, "arc_snr": (0.0, 10.0, 20.0)}
    counts = count_bins(pdf, bins, [0.5], ("theta_e", "arc_snr"))
    table = completeness_table(pd.concat([counts, counts]), bins, 0.95)  # two batches: counts add up
    one = table[(table["axis"] == "theta_e") & (table["axis2"] == "")].set_index("bin")
    assert one.loc[0, ["n", "k"]].tolist() == [4, 2] and one.loc[1, ["n", "k"]].tolist() == [6, 4]
    assert one.loc[-1, "n"] == 2 and bool(one.loc[-1, "out_of_range"])  # theta_e = 3.0 is counted, not lost
    assert one.loc[1, "completeness"] == pytest.approx(4 / 6)
    cell = table[(table["axis2"] == "arc_snr") & (table["bin"] == 1) & (table["bin2"] == 1)].iloc[0]
    assert (cell["n"], cell["k"]) == (4, 2) and (cell["lo"], cell["hi"], cell["lo2"], cell["hi2"]) == (1, 2, 10, 20)


def test_threshold_and_recall_at_fixed_fpr_known_answers():
    neg = np.arange(1000) / 1000.0            # 0.000 ... 0.999
    pos = np.array([0.5, 0.9895, 0.9921, 0.995, 0.999, 1.2, 0.2, 0.98])
    assert threshold_at_fpr(neg, 1e-2) == pytest.approx(0.989)  # 11th highest: 10 negatives above
    res = evaluate(pos, neg, thresholds=[0.5, 0.99], fprs=[1e-2, 1e-3, 1e-4], min_per_fpr=10, n_boot=300,
                   seed=7, confidence=0.95)
    t05, t099 = res["at_threshold"]
    assert (t05["recall"], t05["n_recovered"], t05["fpr"]) == (7 / 8, 7, 0.5)
    assert (t099["recall"], t099["fpr"], t099["n_false_positives"]) == (4 / 8, 0.01, 10)
    f2, f3, f4 = res["at_fpr"]
    assert f2["supported"] and f2["achieved_fpr"] == pytest.approx(0.01) and f2["recall"] == 5 / 8
    assert f2["recall_ci"][0] <= f2["recall"] <= f2["recall_ci"][1]
    assert not f3["supported"] and f3["negatives_needed"] == 10000 and "1000 negatives < 10000" in f3["note"]
    assert not f4["supported"] and f4["negatives_needed"] == 100000
    again = evaluate(pos, neg, thresholds=[0.5, 0.99], fprs=[1e-2], min_per_fpr=10, n_boot=300, seed=7,
                     confidence=0.95)
    assert again["at_fpr"][0]["recall_ci"] == f2["recall_ci"]  # seeded bootstrap: reproducible
    assert split_refs("A et al. | B et al.") == ["A et al.", "B et al."] and split_refs(None) == ["<none>"]


def test_completeness_job(spark, tmp_path):
    stamps = str(tmp_path / "stamps")
    rows = make_rows(40, seed=21, n_failed=2)
    write_dataset(stamps, rows)
    # a "model" that finds every arc with theta_E > 2.4" and flags every 4th control
    tids = [r["task_id"] for r in rows]
    score = [(1.0 if r["theta_e"] > 2.4 else 0.0) if not r["is_control"] else float(i % 8 == 1)
             for i, r in enumerate(rows)]
    pq.write_table(pa.table({"task_id": tids + ["not-a-stamp"], "score": score + [0.3]}), tmp_path / "scores.parquet")
    out = str(tmp_path / "out")
    assert comp_job.main(["--stamps", stamps, "--scores", str(tmp_path / "scores.parquet"), "--output", out]) == 0
    s = json.loads((tmp_path / "out" / "completeness.json").read_text())
    inj = [r for r in rows if not r["is_control"] and r["ok"]]
    theta = np.array([r["theta_e"] for r in inj])
    assert s["matched"] == {"injected_ok": 38, "control_ok": 40, "failed_stamps_with_score": 2,
                            "injected_ok_without_score": 0, "scores_without_stamp": 1}
    assert s["overall"][0]["k"] == int((theta > 2.4).sum()) and s["overall"][0]["n"] == 38
    assert s["control_false_positive_rate"][0]["k"] == 10
    table = pd.read_parquet(tmp_path / "out" / "completeness.parquet")
    one = table[(table["axis"] == "theta_e") & (table["axis2"] == "") & (table["threshold"] == 0.5)].set_index("bin")
    edges = np.array(s["bins"]["theta_e"])
    for b, row in one.iterrows():
        sel = (theta >= edges[b]) & (theta < edges[b + 1])
        assert row["n"] == sel.sum() and row["k"] == (theta[sel] > 2.4).sum()
        lo, hi = wilson(row["k"], row["n"], 0.6827)
        assert (row["ci_lo"], row["ci_hi"]) == pytest.approx((lo[0], hi[0]))
    assert one.loc[edges.searchsorted(1.5, "right") - 1, "completeness"] == 0.0  # [1.5, 2.0): none found
    assert one.loc[edges.searchsorted(2.5, "right") - 1, "completeness"] == 1.0  # [2.5, 3.0]: all found
    assert (tmp_path / "out" / "completeness_heatmap_t0.5.png").read_bytes()[:4] == b"\x89PNG"


def test_completeness_bad_scores_exit_2(spark, tmp_path, capsys):
    stamps = str(tmp_path / "stamps")
    write_dataset(stamps, make_rows(3, seed=2))
    pq.write_table(pa.table({"task_id": ["x"], "value": [1.0]}), tmp_path / "s.parquet")
    assert comp_job.main(["--stamps", stamps, "--scores", str(tmp_path / "s.parquet"), "--output",
                          str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 's.parquet'}: missing column score" in capsys.readouterr().err
    assert dataset_files(str(tmp_path / "o")) == []
