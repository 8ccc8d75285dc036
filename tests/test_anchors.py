"""Real-lens anchors from lenscat, hard negatives, position checks, cutouts and recall end to end."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

from jobs import build_anchors, evaluate_real_lenses, make_cutouts
from udfs.config.provenance import REPO_ROOT
from udfs.io import storage
from udfs.io.datasets import dataset_files
from udfs.schemas.anchors import ANCHOR_SCHEMA
from udfs.survey.bricks import brick_from_name
from udfs.targets.anchors import footprint_check

BOX = [[20.0, 25.0], [-5.0, 5.0]]


def _config(tmp_path, **changes) -> str:
    cfg = yaml.safe_load((REPO_ROOT / "conf" / "anchors.yaml").read_text())
    cfg["footprint"] = {"boxes": [BOX], "bricks": []}
    cfg.update(changes)
    path = tmp_path / "anchors.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _read(uri) -> pd.DataFrame:
    return pd.concat([pq.read_table(storage.open_input(f)).to_pandas() for f in dataset_files(uri)],
                     ignore_index=True).sort_values("target_id").reset_index(drop=True)


def _lenscat_in_box():
    """The expected anchors straight from lenscat's own table (not through udfs.targets.anchors)."""
    import lenscat

    t = lenscat.catalog.to_pandas()
    sel = t[(t["grading"] == "confident") & (t["type"] == "galaxy") & t["RA"].between(*BOX[0]) &
            t["DEC"].between(*BOX[1])]
    return t, sel


@pytest.fixture(scope="module")
def anchor_run(spark, tmp_path_factory):
    """jobs.build_anchors on the lenscat entries in BOX, with 1000 random negatives in BOX plus one
    negative 2" from a known lens (row 1000)."""
    tmp = tmp_path_factory.mktemp("anchors")
    _, expected = _lenscat_in_box()
    rng = np.random.default_rng(3)
    neg = pd.DataFrame({"ra": rng.uniform(*BOX[0], 1000), "dec": rng.uniform(*BOX[1], 1000)})
    lens = expected.iloc[0]
    near = pd.DataFrame({"ra": [lens["RA"] + 2.0 / 3600 / np.cos(np.radians(lens["DEC"]))], "dec": [lens["DEC"]]})
    pd.concat([neg, near]).to_csv(tmp / "neg.csv", index=False)
    out = str(tmp / "anchors")
    rc = build_anchors.main(["--config", _config(tmp), "--output", out, "--negatives", f"field={tmp}/neg.csv"])
    assert rc == 0
    return {"out": out, "expected": expected, "rows": _read(out), "rng": rng,
            "summary": json.loads(storage.read_bytes(f"{out}/_anchors.json"))}


def test_anchors_are_the_selected_lenscat_entries_untouched(anchor_run):
    expected, rows, summary = anchor_run["expected"], anchor_run["rows"], anchor_run["summary"]
    assert 5 <= len(expected) <= 50
    anchors = rows[rows["split"] == "anchor"].set_index("catalog_row").sort_index()
    assert sorted(anchors.index) == sorted(expected.index)
    np.testing.assert_array_equal(anchors["ra"].to_numpy(), expected.sort_index()["RA"].to_numpy())
    np.testing.assert_array_equal(anchors["dec"].to_numpy(), expected.sort_index()["DEC"].to_numpy())
    assert (anchors["name"].to_numpy() == expected.sort_index()["name"].to_numpy()).all()
    assert summary["position_check"]["within_radius"] == len(expected)


def test_anchor_rows_carry_the_stage1_target_columns(anchor_run):
    rows = anchor_run["rows"]
    assert list(rows.columns) == ANCHOR_SCHEMA.names
    assert pq.read_schema(dataset_files(anchor_run["out"])[0]).field("ra").metadata[b"unit"] == b"deg"
    for name, a, d in zip(rows["brickname"], rows["ra"], rows["dec"]):  # the brick whose primary area holds it
        b = brick_from_name(name)
        assert b.ra1 <= a < b.ra2 and b.dec1 <= d < b.dec2
    # lenscat has no PSF: the nominal values, never 0/NaN
    assert set(rows["psf_fwhm_source"]) == {"g=nominal,r=nominal,z=nominal"}
    assert (rows[["psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_z"]].to_numpy() == [1.5, 1.35, 1.25]).all()
    assert rows["target_id"].is_unique and rows["healpix"].notna().all()


def test_negative_near_a_known_lens_is_dropped(anchor_run):
    rows, summary = anchor_run["rows"], anchor_run["summary"]
    negs = rows[rows["split"] == "negative"]
    assert summary["negatives"]["field"]["near_a_known_lens"] >= 1
    assert "neg:field:1000" not in set(negs["target_id"])
    assert len(negs) == summary["n_negatives"] == 1001 - summary["negatives"]["field"]["near_a_known_lens"]


def _shift_anchor(out: str, target_id: str, ddec_arcsec: float) -> None:
    """Move one anchor's dec in its Parquet file (keeping the file's schema)."""
    for f in dataset_files(out):
        t = pq.read_table(f)
        df = t.to_pandas()
        if target_id in set(df["target_id"]):
            df.loc[df.index[df["target_id"] == target_id][0], "dec"] += ddec_arcsec / 3600
            pq.write_table(pa.Table.from_pandas(df, schema=t.schema, preserve_index=False), f)


def test_recall_leaves_out_the_anchor_moved_off_its_lenscat_position(anchor_run, tmp_path, capsys):
    expected, rng = anchor_run["expected"], anchor_run["rng"]
    out = str(tmp_path / "anchors")
    shutil.copytree(anchor_run["out"], out)
    rows = _read(out)
    # scores: anchors high, negatives spread evenly; one anchor moved 1.5" off its lenscat position
    negs = rows[rows["split"] == "negative"].sort_values("target_id")
    neg_scores = (np.arange(len(negs)) / len(negs))[rng.permutation(len(negs))]
    anchor_ids = sorted(rows.loc[rows["split"] == "anchor", "target_id"])
    anchor_scores = np.linspace(0.9, 1.1, len(anchor_ids))
    pq.write_table(pa.table({"target_id": anchor_ids + negs["target_id"].tolist(),
                             "score": np.concatenate([anchor_scores, neg_scores])}), tmp_path / "scores.parquet")
    moved = anchor_ids[0]
    _shift_anchor(out, moved, 1.5)
    ev = str(tmp_path / "eval")
    rc = evaluate_real_lenses.main(["--anchors", out, "--scores", str(tmp_path / "scores.parquet"), "--output", ev,
                                    "--strict"])
    assert rc == 1
    assert f"FLAG anchor {moved}: far_from_lenscat" in capsys.readouterr().out
    rep = json.loads(storage.read_bytes(f"{ev}/recall.json"))
    fail = rep["position_check"]["failures"]
    assert [f["target_id"] for f in fail] == [moved] and fail[0]["sep_arcsec"] == pytest.approx(1.5, abs=1e-3)
    assert rep["position_check"]["passed"] == len(expected) - 1
    _assert_recall(rep, anchor_scores[1:], neg_scores, len(expected) - 1)
    assert storage.read_bytes(f"{ev}/score_distributions.png")[:4] == b"\x89PNG"
    table = pd.read_parquet(f"{ev}/recall_by_group.parquet")
    assert set(table["kind"]) == {"ref", "grading", "theta_e"}


def _assert_recall(rep: dict, pos: np.ndarray, neg_scores: np.ndarray, n_pos: int) -> None:
    """Recall over the anchors that pass the check, against the negatives, overall and by group."""
    n_neg = len(neg_scores)
    thr = np.sort(neg_scores)[::-1][int(np.floor(0.01 * n_neg))]
    r = rep["recall"]
    assert r["n_positives"] == n_pos and r["n_negatives"] == n_neg
    assert r["at_threshold"][1]["recall"] == pytest.approx(np.mean(pos >= 0.9))
    if n_neg >= 1000:
        assert r["at_fpr"][0]["supported"] and r["at_fpr"][0]["recall"] == pytest.approx(np.mean(pos > thr))
    else:
        assert not r["at_fpr"][0]["supported"]
    assert not r["at_fpr"][1]["supported"] and "negatives < 10000" in r["at_fpr"][1]["note"]
    assert set(rep["by_group"]) == {"ref", "grading", "theta_e"}
    assert rep["by_group"]["theta_e"]["unknown"]["n_positives"] == n_pos
    n_ref = sum(g["n_positives"] for g in rep["by_group"]["ref"].values())
    assert n_ref >= n_pos  # an entry with two references counts in both


def test_anchor_table_goes_through_make_cutouts_and_footprint_check(spark, tmp_path, data_root):
    """Targets written by build_anchors are cut like any target and the footprint check reads the result:
    one position where the real brick has g data (on its stamp), one where it has none (flagged)."""
    brick_dir = data_root / "legacysurvey" / "dr6_coadd_0959p805"
    wcs = WCS(fits.getheader(brick_dir / "legacysurvey-0959p805-image-g.fits.fz", 1))
    ra, dec = wcs.all_pix2world([400.3, 1800.3], [480.8, 1750.8], 0)
    pd.DataFrame({"ra": ra, "dec": dec}).to_csv(tmp_path / "neg.csv", index=False)
    cfg = _config(tmp_path, footprint={"boxes": [], "bricks": ["0959p805"]})
    out = str(tmp_path / "targets")
    assert build_anchors.main(["--config", cfg, "--output", out, "--negatives", f"sky={tmp_path}/neg.csv"]) == 0
    targets = _read(out)
    assert targets["brickname"].tolist() == ["0959p805", "0959p805"]
    cut = str(tmp_path / "cutouts")
    assert make_cutouts.main(["--targets", out, "--coadd-base", str(brick_dir), "--layout", "flat", "--output", cut,
                              "--bands", "g", "--allow-missing-maskbits", "--n-buckets", "1"]) == 0
    cutouts = _read(cut)
    check = footprint_check(targets, cutouts, 1.0).set_index("target_id")
    assert bool(check.loc["neg:sky:0", "on_stamp"]) and check.loc["neg:sky:0", "problem"] == ""
    assert check.loc["neg:sky:0", "cutout_sep_arcsec"] < 1e-6
    # stamp centre (N-1)/2 = brick pixel 400.5, 480.5 -> offsets -0.2, +0.3 px
    assert abs(check.loc["neg:sky:0", "dx_pix"] + 0.2) < 0.01 and abs(check.loc["neg:sky:0", "dy_pix"] - 0.3) < 0.01
    assert not check.loc["neg:sky:1", "on_stamp"]
    assert check.loc["neg:sky:1", "problem"].startswith("cutout_failed:") and \
        check.loc["neg:sky:1", "problem"].endswith(":g")


def test_footprint_check_flags_each_problem():
    anchors = pd.DataFrame({"target_id": ["a", "b", "c", "d", "e"], "ra": [10.0] * 5, "dec": [0.0] * 5})
    cutouts = pd.DataFrame({"target_id": ["a", "b", "c", "e"], "ok": [True, True, False, True],
                            "fail_reason": [None, None, "off_image", None], "dx_pix": [0.2, 0.7, np.nan, 0.0],
                            "dy_pix": [-0.4, 0.0, np.nan, 0.0], "ra": [10.0, 10.0, 10.0, 10.0 + 2 / 3600],
                            "dec": [0.0] * 4})
    res = footprint_check(anchors, cutouts, 1.0).set_index("target_id")
    assert res["on_stamp"].tolist() == [True, False, False, False, False]
    assert res["problem"].tolist() == ["", "off_centre", "cutout_failed:off_image", "no_cutout_row",
                                       "cutout_position_differs"]


def test_anchor_config_errors(tmp_path, capsys):
    bad = _config(tmp_path, footprint={"boxes": [], "bricks": []})
    assert build_anchors.main(["--config", bad, "--output", str(tmp_path / "o")]) == 2
    assert "footprint: needs at least one box or brick" in capsys.readouterr().err
    bad = _config(tmp_path, psf_fwhm_nominal_arcsec={"g": 0, "r": 1.3, "z": 1.2})
    assert build_anchors.main(["--config", bad, "--output", str(tmp_path / "o")]) == 2
    assert "psf_fwhm_nominal_arcsec.g: must be > 0" in capsys.readouterr().err
    (tmp_path / "n.csv").write_text("ra,dec\n10,1\n400,2\n")
    good = _config(tmp_path)
    assert build_anchors.main(["--config", good, "--output", str(tmp_path / "o"), "--negatives",
                               f"x={tmp_path}/n.csv"]) == 2
    assert f"{tmp_path}/n.csv: row 1: ra=400, dec=2 is not a valid sky position" in capsys.readouterr().err
