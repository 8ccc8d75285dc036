"""Stage 6 validation: flux accounting, shortcut gates, config, and the job end to end (local + S3)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from jobs import validate_cosmos_injection as job
from tests.stamp_factory import BANDS, make_rows, schema, write_dataset
from udfs.config.checker import ConfigError, load_yaml
from udfs.config.provenance import REPO_ROOT
from udfs.config.validation import load_config, parse_config
from udfs.io import storage
from udfs.io.datasets import dataset_files
from udfs.io.errors import InputError
from udfs.qa import report_sections
from udfs.qa.report import ERROR, flux_residuals, pair_metrics, read_task
from udfs.qa.shortcut_gates import gate_auc
from udfs.stamps.pixels import StampInputError, StampLayout, stamp_layout

SHAPE = (3, 64, 64)
CONFIG = str(REPO_ROOT / "conf" / "validation.yaml")


def _pairs(rows):
    inj = [r for r in rows if not r["is_control"]]
    ctl = {r["pair_id"]: r for r in rows if r["is_control"]}
    stack = (lambda rs, k: np.array([np.asarray(r[k], np.float64) for r in rs]).reshape((-1,) + SHAPE))
    gains = np.array([[r[f"gain_{b}"] for b in BANDS] for r in inj])
    return stack(inj, "image"), stack([ctl[r["pair_id"]] for r in inj], "image"), stack(inj, "arc"), gains


def test_flux_accounting_detects_wrong_arcs():
    inj, ctl, arc, gains = _pairs(make_rows(24, seed=11))
    good = flux_residuals(inj, ctl, arc, gains, 4.0)
    # correct stamps: residual = the arc's Poisson noise -> chi2/dof ~ 1, summed z ~ N(0, 1)
    assert np.all(np.abs(np.nanmedian(good["chi2_dof"], axis=0) - 1) < 0.1)   # NaN: < 25 bright pixels
    assert np.all(np.abs(good["z_sum"]) < 4.5) and np.all(good["zero_viol"] == 0)
    # an arc stored 10% too bright (renormalised flux) is caught by the summed residual
    bright = flux_residuals(inj, ctl, arc * 1.10, gains, 4.0)
    assert np.median(np.abs(bright["z_sum"][:, 1])) > 5
    # the stored arc already holding the noise gives chi2/dof ~ 0
    noisy = flux_residuals(inj, ctl, inj - ctl, gains, 4.0)
    assert np.all(np.nan_to_num(noisy["chi2_dof"]) < 0.05)
    # a control that is not the same cutout breaks the zero-arc pixels
    shifted = flux_residuals(inj, np.roll(ctl, 1, axis=-1), arc, gains, 4.0)
    assert np.all(shifted["zero_viol"] > 1000)


def test_pair_metrics_flags_and_samples():
    rows = make_rows(6, seed=12)
    layout = StampLayout(3, 64, BANDS, 0.262)
    inj = [r for r in rows if not r["is_control"]]
    ctl = {r["pair_id"]: r for r in rows if r["is_control"]}
    pdf = pd.DataFrame({
        "pair_id": [r["pair_id"] for r in inj], "target_id": [r["target_id"] for r in inj],
        "inj_task_id": [r["task_id"] for r in inj],
        "inj_ok": True, "ctl_task_id": [ctl[r["pair_id"]]["task_id"] for r in inj], "ctl_ok": True,
        "inj_image": [r["image"] for r in inj], "ctl_image": [ctl[r["pair_id"]]["image"] for r in inj],
        "inj_arc": [r["arc"] * (1.3 if i == 0 else 1.0) for i, r in enumerate(inj)],
        **{f"inj_gain_{b}": [r[f"gain_{b}"] for r in inj] for b in BANDS}})
    pdf.loc[5, "ctl_ok"] = False
    out = pair_metrics(pdf, layout, core_radius=4, annulus=(24, 31), rounding_units=4, max_abs_sum_z=5,
                       max_chi2_dof=2, sample_fraction=1.0, seed=1)
    assert out["complete"].tolist() == [True] * 5 + [False]
    assert out["target_id"].tolist() == [r["target_id"] for r in inj]  # carried for the gates' folds
    assert out["flux_fail"].tolist()[:5] == [True, False, False, False, False]
    assert out["flux_fail"].iloc[5] is None
    assert out["sampled"].tolist() == [True] * 5 + [False]
    n_core = int((np.hypot(*np.mgrid[:64, :64] - 31.5) <= 4).sum())
    assert len(out["core_inj"].iloc[0]) == 3 * n_core


def test_gate_auc_separates_only_a_planted_shortcut():
    rng = np.random.default_rng(5)
    base = rng.normal(size=(200, 30)) * rng.uniform(1, 3, size=(200, 1))
    kw = dict(folds=5, c=1.0, n_permutations=5, seed=1, min_backgrounds=10)
    targets = np.arange(200) // 2  # two pairs per background
    same = gate_auc(base, base.copy(), targets, **kw)
    assert same["auc"] == pytest.approx(0.5, abs=0.02) and same["n_backgrounds"] == 100
    noise = gate_auc(base + rng.normal(0, 0.5, base.shape), base + rng.normal(0, 0.5, base.shape), targets, **kw)
    assert abs(noise["auc"] - 0.5) < 0.1 and noise["p_value"] > 1 / 6
    planted = gate_auc(base + 0.8, base, targets, **kw)
    assert planted["auc"] > 0.9 and len(planted["fold_aucs"]) == 5 and planted["p_value"] == pytest.approx(1 / 6)
    assert planted["auc_interval"][0] > 0.85


def test_config_errors_name_the_key(tmp_path):
    data = load_yaml(CONFIG)
    data["gates"]["annulus_pix"] = [3, 31]
    with pytest.raises(ConfigError, match=r"gates.annulus_pix: inner radius 3.0 must exceed core_radius_pix"):
        parse_config(data, "x.yaml")
    data = load_yaml(CONFIG)
    data["recall"]["fprz"] = [0.1]
    with pytest.raises(ConfigError, match=r"x.yaml: recall.fprz: unknown key"):
        parse_config(data, "x.yaml")
    data = load_yaml(CONFIG)
    del data["completeness"]["confidence"]
    with pytest.raises(ConfigError, match=r"completeness.confidence: missing required key"):
        parse_config(data, "x.yaml")
    data = load_yaml(CONFIG)
    del data["gates"]["min_backgrounds"]
    with pytest.raises(ConfigError, match=r"gates.min_backgrounds: missing required key"):
        parse_config(data, "x.yaml")
    data = load_yaml(CONFIG)
    data["gates"]["n_permutations"] = -1
    with pytest.raises(ConfigError, match=r"gates.n_permutations: must be >= 0"):
        parse_config(data, "x.yaml")
    gates = load_config(CONFIG).gates
    assert gates.core_radius_pix == 4 and gates.min_backgrounds == 10 and gates.n_permutations == 20


def test_validation_job_clean_vs_core_shortcut_via_s3(spark, s3_bucket, tmp_path, capsys):
    clean = f"{s3_bucket}/stamps_clean"
    write_dataset(clean, make_rows(60, seed=5, n_failed=1))
    shortcut = str(tmp_path / "stamps_shortcut")
    write_dataset(shortcut, make_rows(60, seed=4, core_shortcut=0.5, src_mode="sersic", nan_rows=1))
    out = f"{s3_bucket}/report/report.json"
    rc = job.main(["--stamps", clean, "--compare", shortcut, "--output", out, "--strict"])
    assert rc == 1  # B is flagged
    rep = json.loads(storage.read_bytes(out))
    a, b = rep["a"], rep["b"]
    # counts, failures by reason and label, by split
    assert a["counts"]["rows"] == 120 and a["counts"]["injected"] == 60 and a["counts"]["control"] == 60
    assert a["counts"]["fail_reasons"] == {"injected": {"psf_kernel_too_large": 1}, "control": {}}
    assert a["counts"]["by_split"]["train"]["failed_injected"] == 1
    assert a["rates"]["failure_rate_injected"] == pytest.approx(1 / 60)
    # gates: no shortcut -> AUC ~0.5, not flagged; planted core flux -> core gate fires, annulus does not
    assert abs(a["gates"]["core"]["auc"] - 0.5) < 0.05 and not a["gates"]["core"]["flagged"]
    assert abs(a["gates"]["annulus"]["auc"] - 0.5) < 0.05 and not a["gates"]["annulus"]["flagged"]
    assert b["gates"]["core"]["auc"] > 0.9 and b["gates"]["core"]["flagged"]
    assert not b["gates"]["annulus"]["flagged"]
    assert a["gates"]["core"]["n_pairs"] == 59 and b["gates"]["core"]["n_pairs"] == 60
    # folds grouped by target (one pair per target in the factory), with an interval and a null
    assert a["gates"]["core"]["n_backgrounds"] == 59 and a["gates"]["missing_target_id"] == 0
    lo, hi = b["gates"]["core"]["auc_interval"]
    assert lo <= b["gates"]["core"]["auc"] <= hi and b["gates"]["core"]["p_value"] == pytest.approx(1 / 21)
    assert a["gates"]["core"]["p_value"] > 0.05 and abs(a["gates"]["core"]["null_aucs"]["q0.5"] - 0.5) < 0.1
    # flux accounting holds in both (the shortcut is in the stored arc, not a bookkeeping error)
    for r in (a, b):
        assert r["flux_accounting"]["fail_rate"] == 0.0
        assert abs(r["flux_accounting"]["residual_quantiles"]["chi2_dof_r"]["q0.5"] - 1) < 0.15
    assert a["flux_accounting"]["complete_pairs"] == 59 and a["flux_accounting"]["injected_without_control"] == 0
    # pixel checks: the planted NaN is found, nothing else
    assert a["pixel_checks"]["nonfinite_image"] == 0 and b["pixel_checks"]["nonfinite_image"] == 1
    assert a["flags"] == [] and any("gate_core" in f for f in b["flags"])
    assert any("nonfinite_image = 1" in f for f in b["flags"])
    # distributions (truth and metrics) and the comparison's highlights
    q = a["distributions"]["injected"]["theta_e"]
    assert 1.8 <= q["q0.01"] <= q["q0.5"] <= q["q0.99"] <= 3.0
    assert a["distributions"]["injected"]["arc_colour_g_r"]["q0.5"] == pytest.approx(-2.5 * np.log10(0.6), abs=0.01)
    assert set(a["distributions"]["morphology"]) == {"src_gini", "src_m20", "src_clumpiness", "src_hlr_arcsec"}
    hl = " ".join(rep["comparison"]["highlights"])
    assert "core_flux_frac" in hl and "src_gini" in hl and "gate core" in hl
    assert "theta_e" not in hl  # same prior in both
    for key in ("gallery", "gallery_b", "histograms"):
        assert storage.read_bytes(rep["outputs"][key])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(a["gallery_pairs"]) == 12
    snrs = [p["arc_snr"] for p in a["gallery_pairs"]]
    assert snrs == sorted(snrs)
    printed = capsys.readouterr().out
    print(printed)
    assert "FLAG B: gate_core" in printed and "  core gate AUC " in printed and "null median" in printed
    assert "59 backgrounds" in printed and "  B: core gate AUC " in printed


def test_validation_bad_input_exits_2(tmp_path, capsys):
    import pyarrow.parquet as pq

    path = str(tmp_path / "s")
    write_dataset(path, make_rows(4, seed=1))
    last = dataset_files(path)[-1]  # the driver reads the first file's schema; this one fails in a task
    t = pq.read_table(last)
    pq.write_table(t.drop_columns(["arc_snr"]).replace_schema_metadata(t.schema.metadata), last)
    assert job.main(["--stamps", path, "--output", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert f"error: {last}: missing column(s) arc_snr" in err and "Traceback" not in err
    assert job.main(["--stamps", str(tmp_path / "nothing"), "--output", str(tmp_path / "r.json")]) == 2
    assert "no Parquet files found" in capsys.readouterr().err


def test_read_task_returns_a_bad_file_as_an_error_row(tmp_path):
    """The Spark task hands a StampInputError back as data (no exception text to parse)."""
    import pyarrow.parquet as pq

    root = str(tmp_path / "s")
    write_dataset(root, make_rows(4, seed=2))
    files = dataset_files(root)
    t = pq.read_table(files[-1])
    pq.write_table(t.drop_columns(["pair_id"]).replace_schema_metadata(t.schema.metadata), files[-1])
    layout = stamp_layout(schema(64), files[0])
    out = list(read_task([pd.DataFrame({"path": files})], root=root, layout=layout, first_file=files[0],
                         open_input=storage.open_input))
    good, bad = out[:-1], out[-1]
    assert all(df[ERROR].isna().all() and len(df) > 0 for df in good)
    assert sum(len(df) for df in good) == len(make_rows(4, seed=2)) - t.num_rows
    assert {df["split"].iloc[0] for df in good} == {"train", "val"}  # from the split= folders
    assert len(bad) == 1 and bad[ERROR].iloc[0] == f"{files[-1]}: missing column(s) pair_id"
    assert bad.drop(columns=[ERROR]).isna().all(axis=None)
    assert issubclass(StampInputError, InputError) and not issubclass(StampInputError, ValueError)


def test_failure_rate_that_depends_on_the_label_is_flagged():
    counts = [{"is_control": False, "ok": True, "fail_reason": None, "count": 900},
              {"is_control": False, "ok": False, "fail_reason": "psf_kernel_too_large", "count": 100},
              {"is_control": True, "ok": True, "fail_reason": None, "count": 995},
              {"is_control": True, "ok": False, "fail_reason": None, "count": 5}]
    by_split = [{**r, "split": "train"} for r in counts]
    section = report_sections.count_section(counts, by_split, distinct_task_ids=2000)
    assert section["fail_reasons"] == {"injected": {"psf_kernel_too_large": 100}, "control": {"<null>": 5}}
    assert section["by_split"]["train"] == {"injected": 1000, "control": 1000, "failed_injected": 100,
                                            "failed_control": 5}
    cfg = load_config(CONFIG)
    flux = report_sections.flux_section(
        {"n": 0, "complete": 0, "injected_without_control": 0, "control_without_injected": 0, "flux_fail": 0,
         **{f"{k}_{b}": None for k in ("zero_viol", "z_mean", "z_n") for b in BANDS}}, {}, [], 0, BANDS)
    checks = {k: 0 for k in report_sections.PIXEL_CHECKS} | {f"nonfinite_{c}": 0 for c in report_sections.FINITE_INJECTED}
    gates = {g: {"auc": None, "flagged": None} for g in ("core", "annulus")}
    rep = report_sections.dataset_report("x", 1, StampLayout(3, 64, BANDS, 0.262), section, checks, {}, flux,
                                         gates, [])
    flags = report_sections.flags(rep, cfg.flux_accounting)
    assert flags[0] == "failures without fail_reason (control): 5"
    assert flags[1].startswith("failure rate depends on the label: injected 100/1000, control 5/1000")
    assert rep["rates"]["failure_rate_label_z"] > 3
    section["failed"]["control"] = 95  # similar rates: no label flag
    rep["counts"] = section
    assert not any("depends on the label" in f for f in report_sections.flags(rep, cfg.flux_accounting))


def test_flux_accounting_with_textured_noise_and_negative_psf_wings():
    """Arc noise given the coadd's texture reaches one pixel beyond the arc and sums to sum(k) times
    the white noise; a measured PSF's negative wings carry no noise. With the stamps'
    noise_kernel_sum the accounting passes; read as white noise the same stamps fail."""
    from udfs.survey.shot_noise import add_poisson_noise

    rng = np.random.default_rng(3)
    n, size = 40, 32
    yy, xx = np.mgrid[0:size, 0:size]
    kernel = np.array([[0.02, 0.15, 0.02], [0.15, 0.95, 0.15], [0.02, 0.15, 0.02]])
    kernel /= np.sqrt((kernel ** 2).sum())
    arc = np.zeros((n, 1, size, size))
    for i in range(n):
        ring = np.exp(-0.5 * ((np.hypot(xx - 15.5, yy - 15.5) - 6 - i % 3) / 1.2) ** 2) * 0.02
        ring[np.hypot(xx - 15.5, yy - 15.5) > 10] = 0.0
        ring[np.hypot(xx - 15.5, yy - 15.5) > 11] = -1e-6 * (i % 2)     # a negative wing far out
        arc[i, 0] = ring
    gains = np.full((n, 1), 500.0)
    ctl = rng.normal(0, 0.01, arc.shape).astype(np.float32).astype(np.float64)
    inj = np.stack([ctl[i] + add_poisson_noise(arc[i, 0].astype(np.float32), 500.0, rng, kernel)[None]
                    for i in range(n)]).astype(np.float32).astype(np.float64)
    arc32 = arc.astype(np.float32).astype(np.float64)
    ksum = np.full((n, 1), kernel.sum())
    res = flux_residuals(inj, ctl, arc32, gains, 4.0, ksum)
    assert np.all(res["zero_viol"] == 0)
    assert np.std(res["z_sum"]) == pytest.approx(1.0, abs=0.3) and np.all(np.abs(res["z_sum"]) < 4.5)
    white = flux_residuals(inj, ctl, arc32, gains, 4.0)
    assert np.all(white["zero_viol"] > 0)           # the texture's reach counted as noise where no arc is
