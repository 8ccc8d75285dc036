"""Stage 5 end to end on the real samples: selection -> sample sky -> cutouts -> manifest -> stamps."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import inject_stamps
from jobs.spark import dataset_files
from udfs.io import pixel_codec, storage
from udfs.lensing.arcs import nanomaggies
from udfs.config.provenance import REPO_ROOT, code_version
from udfs.schemas import cutouts as cutout_schema
from udfs.schemas import stamps as stamp_schema
from udfs.sources.bank import read_bank
from udfs.stamps.inject import inject_tasks, load_settings
from udfs.survey.psf import convolve

CONF = REPO_ROOT / "conf"


@pytest.fixture(scope="module")
def inputs(pipeline_inputs):
    return pipeline_inputs


def run_job(inputs, out, *extra):
    return inject_stamps.main(["--manifest", inputs["manifest"], "--cutouts", inputs["cutouts"],
                               "--bank", inputs["bank"], "--output", str(out), *extra])


def files_bytes(uri):
    return {f[len(str(uri)):]: storage.read_bytes(f) for f in dataset_files(str(uri))}


@pytest.fixture(scope="module")
def stamps(inputs):
    out = inputs["dir"] / "stamps"
    assert run_job(inputs, out) == 0
    return out


def read_all(uri):
    """Every file of a dataset as one table, ``split`` from the folder; stamp pixel columns
    (byte-stream-split binary) as fixed-size lists of their stored dtype, like the cutouts'."""
    import pyarrow as pa

    tables = []
    for f in dataset_files(str(uri)):
        t = pq.read_table(f)
        for i, field in enumerate(t.schema):
            if pixel_codec.is_encoded(field):
                values, valid = pixel_codec.decode(t.column(i), field)
                items = pa.array(values.ravel(), mask=np.repeat(~valid, values.shape[1]))
                t = t.set_column(i, field.name, pa.FixedSizeListArray.from_arrays(items, values.shape[1]))
        if Path(f).parent.name.startswith("split="):
            t = t.append_column("split", pa.array([Path(f).parent.name[6:]] * len(t)))
        tables.append(t)
    return pa.concat_tables(tables)


def test_schema_is_self_describing_pixel_values_with_documented_metadata(stamps, inputs):
    import pyarrow as pa

    f = dataset_files(str(stamps))[0]
    assert Path(f).parent.name.startswith("split=")
    schema = pq.read_schema(f)
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    nb, n, _ = json.loads(meta["image_shape"])
    assert meta["band_order"] == "grz" and (nb, n) == (3, 64)
    assert float(meta["pixel_scale_arcsec"]) == 0.262
    for col, dtype, unit, size in (("image", "<f4", "nanomaggies", 3 * 64 * 64),
                                   ("invvar", "<f4", "nanomaggies^-2", 3 * 64 * 64),
                                   ("arc", "<f2", "nanomaggies", 3 * 64 * 64), ("maskbits", "<i4", "bit mask", 64 * 64)):
        assert schema.field(col).type == pa.binary(size * int(dtype[-1]))
        assert schema.field(col).metadata == {b"unit": unit.encode(), b"dtype": dtype.encode(),
                                              b"encoding": b"byte_stream_split"}
    md = pq.ParquetFile(f).metadata.row_group(0)
    chunks = {md.column(i).path_in_schema: md.column(i) for i in range(md.num_columns)}
    for col in ("image", "invvar", "arc", "maskbits"):  # one value per row: no dictionary, no min/max
        assert not any("DICTIONARY" in e for e in chunks[col].encodings), chunks[col].encodings
        assert not chunks[col].is_stats_set
    assert chunks["task_id"].is_stats_set
    for col in ("task_id", "is_control", "pair_id", "seed", "theta_e", "src_mag_g", "magnification",
                "arc_snr", "core_flux_frac", "n_images", "ok", "fail_reason", "code_version",
                "config_hash", "injection_config_hash", "psf_fwhm_r", "psfdepth_r"):
        assert col in schema.names, col
    assert schema.equals(stamp_schema.stamp_schema("grz", 64, {}))  # the one definition, field for field
    assert schema.field("theta_e").metadata == {b"unit": b"arcsec"}
    # the module doc's recipe, NumPy alone: a control's bytes are its cutout's float32 pixels
    row = pq.read_table(f, columns=["target_id", "is_control", "image", "invvar"]).filter(
        pc.field("is_control")).slice(0, 1).to_pylist()[0]
    cut = read_all(inputs["cutouts"]).to_pandas().set_index("target_id").loc[row["target_id"]]
    for col in ("image", "invvar"):
        planes = np.frombuffer(row[col], np.uint8).reshape(4, 3 * 64 * 64)
        np.testing.assert_array_equal(np.ascontiguousarray(planes.T).view("<f4").ravel(), cut[col])


def test_rows_pixels_truth_and_flux_accounting(stamps, inputs):
    tab = read_all(stamps).to_pandas()
    n_tasks = sum(pq.read_metadata(f).num_rows for f in dataset_files(inputs["manifest"]))
    assert len(tab) == n_tasks and tab["task_id"].is_unique
    assert tab["ok"].all(), tab.loc[~tab["ok"], "fail_reason"].tolist()
    cut = read_all(inputs["cutouts"]).to_pandas().set_index("target_id")
    inj = tab[~tab["is_control"]]
    ctrl = tab[tab["is_control"]].set_index("pair_id")
    assert set(ctrl.index) == set(inj["task_id"])  # controls pair one-to-one
    for _, row in inj.iterrows():
        image = np.asarray(row["image"]).reshape(3, 64, 64)
        arc = np.asarray(row["arc"], dtype=np.float64).reshape(3, 64, 64)  # stored as float16
        cutout = np.asarray(cut.loc[row["target_id"], "image"]).reshape(3, 64, 64)
        control = np.asarray(ctrl.loc[row["task_id"], "image"]).reshape(3, 64, 64)
        np.testing.assert_array_equal(control, cutout)          # the control is the cutout
        assert np.isfinite(image).all()
        added = (image - cutout).sum(axis=(1, 2))
        noise = np.sqrt(np.clip(arc, 0, None).sum(axis=(1, 2)) / np.array([row[f"gain_{b}"] for b in "grz"]))
        assert np.all(np.abs(added - arc.sum(axis=(1, 2))) < 5 * noise + 1e-3)  # arc + its own noise
        # the arc keeps the magnification: r flux = source flux x magnification (PSF on the stamp)
        assert arc[1].sum() == pytest.approx(nanomaggies(row["src_mag_r"]) * row["magnification"], rel=0.03)
        assert row["arc_flux_r"] == pytest.approx(float(arc[1].sum()), rel=1e-4)
        assert row["src_mag_g"] - row["src_mag_r"] == pytest.approx(
            read_bank(inputs["bank"]).meta["g_r"][int(row["src_index"])])
    assert np.all(np.asarray(ctrl["arc"].tolist()) == 0)
    assert ctrl["magnification"].isna().all() and ctrl["theta_e"].isna().all()
    assert set(inj["src_mode"]) == {"cosmos", "sersic"}


def test_arcs_take_the_psf_and_noise_texture_stage4_stored(stamps, inputs):
    """Default config: each stamp names the PSF its cutout stored and the texture it measured, and
    the arc is exactly the unconvolved arc convolved with that stored PSF (pure transform)."""
    cut = read_all(inputs["cutouts"]).to_pandas().set_index("target_id")
    tab = read_all(stamps).to_pandas()
    for b_i, b in enumerate("grz"):
        want = cut.loc[tab["target_id"]]
        assert (tab[f"psf_source_{b}"].to_numpy() == [s[b_i] for s in want["psf_source"]]).all()
        np.testing.assert_array_equal(tab[f"noise_corr_{b}"].to_numpy(float), want[f"noise_corr_{b}"].to_numpy(float))
    assert all(s.startswith("psfex_stack") for b in "grz" for s in tab[f"psf_source_{b}"])
    assert (tab[[f"noise_corr_{b}" for b in "grz"]].to_numpy(float) > 0.05).all()  # the sky's resampling

    settings = load_settings(str(CONF / "injection.yaml"))
    assert settings.psf_model == "cutout" and settings.arc_noise_texture
    tasks = read_all(inputs["manifest"]).to_pandas()
    tasks = tasks[~tasks["is_control"]].sort_values("task_id").head(6)
    cols = cut.reset_index()[cutout_schema.READER_COLUMNS].rename(columns={"ok": "cutout_ok", "fail_reason": "cutout_fail_reason"})
    pdf = tasks.drop(columns=[c for c in ("split",) if c in tasks]).merge(cols, on="target_id", how="left")
    bank = read_bank(inputs["bank"])
    stored = inject_tasks(pdf, bank, settings, 64)
    delta = pdf.copy()
    delta["psf_size"] = 1
    delta["psf"] = [np.ones(3, np.float32)] * len(delta)
    bare = inject_tasks(delta, bank, settings, 64)
    assert stored["ok"].all() and bare["ok"].all()
    for s in range(len(pdf)):
        k = int(pdf["psf_size"].iloc[s])
        psf = np.asarray(pdf["psf"].iloc[s], float).reshape(3, k, k)
        want = np.stack([convolve(np.asarray(bare["arc"].iloc[s], float).reshape(3, 64, 64)[b], psf[b]) for b in range(3)])
        got = np.asarray(stored["arc"].iloc[s], float).reshape(3, 64, 64)
        assert np.abs(got - want).max() < 1e-3 * got.max()   # both stored as float16 (2^-11 relative)
        assert np.abs(got - want).max() < 1e-2 * np.abs(got - np.asarray(bare["arc"].iloc[s]).reshape(3, 64, 64)).max()


def test_sersic_twin_ablation_changes_only_the_source(stamps, inputs):
    """sersic_twin stamps repeat their cosmos twin task exactly, with the bank row's Sersic twin."""
    tab = read_all(stamps).to_pandas()
    inj = tab[~tab["is_control"]]
    cos = inj[inj["config_name"] == "cosmos"].set_index(["target_id", "replicate"]).sort_index()
    twin = inj[inj["config_name"] == "sersic_twin"].set_index(["target_id", "replicate"]).loc[cos.index]
    assert len(twin) == len(cos) > 0
    for col in ("theta_e", "lens_e1", "shear_g2", "src_x", "src_y", "src_index", "src_mag_r", "src_mag_g",
                "src_mag_z", "src_size_scale", "src_z"):
        np.testing.assert_array_equal(twin[col].to_numpy(float), cos[col].to_numpy(float), err_msg=col)
    meta = read_bank(inputs["bank"]).meta
    idx = twin["src_index"].astype(int).to_numpy()
    np.testing.assert_allclose(twin["sersic_n"].to_numpy(float), meta["sersic_n"][idx])
    np.testing.assert_allclose(twin["sersic_re_arcsec"].to_numpy(float),
                               meta["sersic_hlr_arcsec"][idx] * twin["src_size_scale"].to_numpy(float))
    # same unlensed brightness: the arcs' fluxes agree to the magnification difference of the shapes
    ratio = twin["arc_flux_r"].to_numpy(float) / twin["magnification"].to_numpy(float)
    np.testing.assert_allclose(ratio, cos["arc_flux_r"].to_numpy(float) / cos["magnification"].to_numpy(float), rtol=0.03)


def test_rerun_is_byte_identical_and_labels_pair_up(stamps, inputs, tmp_path):
    again = tmp_path / "again"
    assert run_job(inputs, again) == 0
    assert files_bytes(again) == files_bytes(stamps)
    labels = json.loads((stamps / "_summary.json").read_text())["by_label"]
    assert labels["injected"]["n"] == labels["control"]["n"]
    assert labels["injected"]["quantiles_5_50_95"]["psf_fwhm_r"] == labels["control"]["quantiles_5_50_95"]["psf_fwhm_r"]


def test_killed_run_resumes_without_duplicates(stamps, inputs, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jobs.inject_stamps", "--manifest", inputs["manifest"], "--cutouts",
           inputs["cutouts"], "--bank", inputs["bank"], "--output", str(out)]
    env = {**os.environ, "LENSINJ_CODE_VERSION": code_version()}  # the same code as the reference run
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(out.rglob("*.parquet")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Python workers orphaned by the killed JVM may still finish the file in hand: wait until the
    # folder is quiet, then take what a crashed run left behind
    partial, quiet_since = None, time.time()
    while time.time() - quiet_since < 3:
        now = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.parquet")}
        if now != partial:
            partial, quiet_since = now, time.time()
        time.sleep(0.2)
    assert not any(k.endswith(".tmp") for k in partial)  # atomic writes: no partial files
    assert run_job(inputs, out, "--skip-existing") == 0
    assert files_bytes(out) == files_bytes(stamps)
    summary = json.loads((out / "_summary.json").read_text())
    # a bucket publishes its split files one after another: a kill between two leaves it part-done,
    # and it is redone whole (so up to 2 of its 3 files are written again)
    assert len(partial) - 2 <= summary["files_kept"] <= len(partial)
    assert summary["files_kept"] + summary["files_written"] == len(files_bytes(stamps))
    assert summary["n_stamps"] == json.loads((stamps / "_summary.json").read_text())["n_stamps"]


def _copy_dataset(src: str, dst: Path, edit) -> None:
    """Copy a dataset file by file, ``edit(table) -> table`` applied to each."""
    for f in dataset_files(src):
        rel = Path(f).relative_to(src)
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(edit(pq.read_table(f)), dst / rel)


def _set(table, col, values):
    import pyarrow as pa

    field = table.schema.field(col)
    return table.set_column(table.schema.get_field_index(col), field, pa.array(values, type=field.type))


def test_failures_hit_both_labels_alike(inputs, tmp_path, spark):
    """Real failures of three kinds (a cutout flagged not ok, a target with no cutout row, a zero
    PSF size in replicate 0 of a third target): each fails the injected and the control rows alike,
    so failure rates and reasons do not depend on the label; failed rows hold no pixel values."""
    targets = sorted({t for f in dataset_files(inputs["manifest"]) for t in pq.read_table(f)["target_id"].to_pylist()})
    assert len(targets) >= 3
    flagged, dropped, bad_psf = targets[:3]
    man, cut = tmp_path / "manifest", tmp_path / "cutouts"

    def edit_manifest(t):
        rows = zip(t["target_id"].to_pylist(), t["replicate"].to_pylist(), t["psf_fwhm_g"].to_pylist())
        return _set(t, "psf_fwhm_g", [0.0 if (tid, rep) == (bad_psf, 0) else v for tid, rep, v in rows])

    def edit_cutouts(t):
        t = t.filter(pc.not_equal(t["target_id"], dropped))
        ids = t["target_id"].to_pylist()
        t = _set(t, "fail_reason", ["off_footprint" if i == flagged else r for i, r in zip(ids, t["fail_reason"].to_pylist())])
        return _set(t, "ok", [False if i == flagged else v for i, v in zip(ids, t["ok"].to_pylist())])

    _copy_dataset(inputs["manifest"], man, edit_manifest)
    _copy_dataset(inputs["cutouts"], cut, edit_cutouts)
    out = tmp_path / "stamps"
    assert inject_stamps.main(["--manifest", str(man), "--cutouts", str(cut), "--bank", inputs["bank"],
                               "--output", str(out)]) == 0
    arrow = read_all(out)
    tab = arrow.to_pandas()
    expected = [{flagged: "cutout:off_footprint", dropped: "cutout:missing"}.get(
        tid, "bad_psf:g" if (tid, rep) == (bad_psf, 0) else None) for tid, rep in zip(tab["target_id"], tab["replicate"])]
    assert tab["fail_reason"].tolist() == expected
    assert (tab["ok"] == [e is None for e in expected]).all() and tab["ok"].any()
    failed = arrow.filter(pc.invert(arrow["ok"]))
    for col in ("image", "invvar", "arc"):  # no value at all, never zero-filled pixels
        items = pc.list_flatten(failed[col])
        assert items.null_count == len(items) == len(failed) * 3 * 64 * 64
    s = json.loads((out / "_summary.json").read_text())["by_label"]
    for label, part in tab.groupby(tab["is_control"].map({True: "control", False: "injected"})):
        reasons = part.loc[~part["ok"], "fail_reason"].value_counts().to_dict()
        assert s[label]["fail_reasons"] == reasons and len(reasons) == 3
    assert s["injected"]["fail_reasons"] == s["control"]["fail_reasons"]
    assert s["injected"]["failure_rate"] == s["control"]["failure_rate"] > 0


def test_manifest_root_with_two_manifests_is_refused(inputs, tmp_path, capsys):
    import shutil

    root = tmp_path / "root"
    for name in ("aaaa", "bbbb"):
        shutil.copytree(inputs["manifest"], root / name)
    assert inject_stamps.main(["--manifest", str(root), "--cutouts", inputs["cutouts"], "--bank", inputs["bank"],
                               "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "root: holds 2 manifests" in err and "aaaa" in err and "bbbb" in err
    assert not (tmp_path / "o").exists()


def test_s3_run_matches_local_bytes(stamps, inputs, s3_bucket):
    for name in ("manifest", "cutouts"):
        for f in dataset_files(inputs[name]):
            storage.write_bytes(f"{s3_bucket}/{name}/{Path(f).relative_to(inputs[name])}", storage.read_bytes(f))
    storage.write_bytes(f"{s3_bucket}/bank.h5", storage.read_bytes(inputs["bank"]))
    out = f"{s3_bucket}/stamps"
    assert inject_stamps.main(["--manifest", f"{s3_bucket}/manifest", "--cutouts", f"{s3_bucket}/cutouts",
                               "--bank", f"{s3_bucket}/bank.h5", "--output", out]) == 0
    assert files_bytes(out) == files_bytes(stamps)


def test_bad_inputs_are_clear_errors(inputs, tmp_path, capsys):
    assert inject_stamps.main(["--manifest", inputs["manifest"], "--cutouts", str(tmp_path / "none"),
                               "--bank", inputs["bank"], "--output", str(tmp_path / "o")]) == 2
    assert "no Parquet files" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONF / "injection.yaml").read_text().replace("psf_model: cutout", "psf_model: airy"))
    assert run_job(inputs, tmp_path / "o2", "--config", str(bad)) == 2
    assert "psf_model: expected one of cutout, gaussian, moffat, psfex, got 'airy'" in capsys.readouterr().err
    missing = tmp_path / "missing.yaml"
    missing.write_text((CONF / "injection.yaml").read_text().replace("psf_model: cutout", "psf_model: psfex")
                       .replace("psfex_files: null", "psfex_files: {g: /no/g.fits, r: /no/r.fits, z: /no/z.fits}"))
    assert run_job(inputs, tmp_path / "o3", "--config", str(missing)) == 2
    assert "psfex_files.g: /no/g.fits: file not found" in capsys.readouterr().err


def test_pixelised_psfex_psf_when_configured(stamps, inputs, tmp_path, data_root):
    """psf_model: psfex injects through real DECam PSFEx models: the arcs change shape, not flux."""
    psfex = data_root / "legacysurvey" / "psfex"
    files = {"g": "c4d_150329_083505_ooi_g_ls9-N11-psfex.fits", "r": "c4d_150329_083320_ooi_r_ls9-N11-psfex.fits",
             "z": "c4d_150412_073257_ooi_z_ls9-N11-psfex.fits"}
    conf = tmp_path / "psfex.yaml"
    conf.write_text((CONF / "injection.yaml").read_text().replace("psf_model: cutout", "psf_model: psfex")
                    .replace("psfex_files: null", "psfex_files: {" + ", ".join(f"{b}: {psfex / f}" for b, f in files.items()) + "}"))
    out = tmp_path / "psfex_stamps"
    assert run_job(inputs, out, "--config", str(conf)) == 0
    new = read_all(out).to_pandas().set_index("task_id")
    ref = read_all(stamps).to_pandas().set_index("task_id").loc[new.index]
    assert new["ok"].all()
    inj = ~new["is_control"]
    assert (new.loc[inj, "injection_config_hash"] != ref.loc[inj, "injection_config_hash"]).all()
    np.testing.assert_allclose(new.loc[inj, "arc_flux_r"].to_numpy(float), ref.loc[inj, "arc_flux_r"].to_numpy(float), rtol=0.02)
    diff = [np.abs(np.asarray(a) - np.asarray(b)).max() / np.asarray(b).max()
            for a, b in zip(new.loc[inj, "arc"], ref.loc[inj, "arc"])]
    assert min(diff) > 1e-3  # a different PSF: a different image
