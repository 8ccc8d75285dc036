"""Stage 3 logic: determinism, row count, seeds, prior distributions (KS), paired controls, config,
and how stage 5 finds the manifest (resolve_manifest)."""
import copy
import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from scipy import stats

from udfs.config.checker import ConfigError
from udfs.config.provenance import REPO_ROOT
from udfs.io.datasets import DatasetError
from udfs.config.limits import SERSIC_N_RANGE
from udfs.schemas.manifest import MANIFEST_SCHEMA
from udfs.stamps import manifest, priors
from tests.stage1_helpers import small_bank

CONF = REPO_ROOT / "conf" / "injection_priors.yaml"
BANK = manifest.BankSources(size=57)
P_MIN = 1e-3
UNIFORM = {"lens_mode": "uniform", "src_redshift": "prior", "src_brightness": "prior",
           "theta_e": {"dist": "uniform", "low": 0.8, "high": 2.5},
           "lens_q": {"dist": "uniform", "low": 0.5, "high": 1.0}}


def raw_config():
    """The shipped priors switched to the explicit uniform option (completeness grids): theta_E,
    q, source redshift and brightness from priors, no bank properties needed."""
    raw = yaml.safe_load(CONF.read_text())
    raw["defaults"].update(copy.deepcopy(UNIFORM))
    raw["defaults"].pop("deflector")
    return raw


def targets(n, start=0):
    i = np.arange(start, start + n)
    return pd.DataFrame({"target_id": [f"9010-{100 + k % 7}-{k}" for k in i], "ra": i * 0.01, "dec": -i * 0.01,
                         "brickname": "1054p567", "split": np.where(i % 10 == 0, "test", "train"),
                         "psf_fwhm_g": 1.4, "psf_fwhm_r": 1.2, "psf_fwhm_z": 1.1})


def build(raw, t, bank=BANK):
    plan = priors.parse_config(raw, "test")
    return manifest.build_tasks(t, plan, bank, manifest.config_hashes(plan, bank), "v"), plan


@pytest.fixture(scope="module")
def big():
    tasks, plan = build(raw_config(), targets(4000))
    return tasks, plan


def test_row_count_ids_seeds_and_determinism(big):
    tasks, plan = big
    assert len(plan.configs) == 3 and plan.replicates == 2 and plan.paired_controls
    assert len(tasks) == 4000 * 3 * 2 * 2
    assert tasks["task_id"].is_unique and tasks["seed"].is_unique
    assert tasks["seed"].dtype == np.int64
    again, _ = build(raw_config(), targets(4000))
    pd.testing.assert_frame_equal(tasks, again)
    # any subset regenerates exactly, whatever batch it is built in
    part, _ = build(raw_config(), targets(40, start=1000).iloc[::-1])
    merged = part.merge(tasks, on="task_id", suffixes=("", "_all"))
    assert len(merged) == len(part) == 40 * 12
    for col in ("seed", "theta_e", "src_x", "src_index", "sersic_n"):
        pd.testing.assert_series_equal(merged[col], merged[f"{col}_all"], check_names=False)
    # the seed is BLAKE2b-64 of target id, config hash and replicate
    row = tasks[~tasks["is_control"]].iloc[0]
    key = f"{row['target_id']}|{row['config_hash']}|{row['replicate']}".encode()
    assert row["seed"] == int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big", signed=True)


def test_controls_pair_one_to_one_with_nulls_not_zeros(big):
    tasks, _ = big
    inj, ctl = tasks[~tasks["is_control"]], tasks[tasks["is_control"]]
    assert len(inj) == len(ctl)
    assert (inj["pair_id"] == inj["task_id"]).all()
    assert ctl["pair_id"].is_unique and set(ctl["pair_id"]) == set(inj["task_id"])
    pairs = ctl.merge(inj, left_on="pair_id", right_on="task_id", suffixes=("_c", "_i"))
    for col in ("target_id", "config_hash", "replicate", "split", "psf_fwhm_r", "ra"):
        assert (pairs[f"{col}_c"] == pairs[f"{col}_i"]).all()
    table = pa.Table.from_pandas(tasks, schema=MANIFEST_SCHEMA, preserve_index=False)
    is_ctl = table.column("is_control").to_numpy(zero_copy_only=False)
    for col in manifest.ARC_COLUMNS:
        values = table.column(col)
        assert values.filter(is_ctl).null_count == int(is_ctl.sum()), col
    for col in ("theta_e", "src_x", "src_mode", "src_index", "src_mag_r"):
        assert table.column(col).filter(~is_ctl).null_count == 0
    cosmos = (~is_ctl) & (table.column("config_name").to_numpy(zero_copy_only=False) == "cosmos")
    assert table.column("sersic_n").filter(cosmos).null_count == int(cosmos.sum())


def ks(values, cdf):
    return stats.kstest(np.asarray(values, dtype=float), cdf).pvalue


def test_parameter_distributions_match_the_priors(big):
    tasks, _ = big
    inj = tasks[~tasks["is_control"] & (tasks["config_name"] != "sersic_twin")]  # twins repeat cosmos draws
    d = raw_config()["defaults"]
    uni = lambda spec: stats.uniform(spec["low"], spec["high"] - spec["low"]).cdf  # noqa: E731
    for col in ("theta_e", "lens_q", "shear_gamma", "src_mag_r", "src_z"):
        assert ks(inj[col], uni(d[col])) > P_MIN, col
    assert ks(inj["lens_phi"], stats.uniform(0, np.pi).cdf) > P_MIN
    assert ks(inj["src_phi"], stats.uniform(0, 2 * np.pi).cdf) > P_MIN
    # source offset: uniform in area inside r_max * theta_E -> CDF (x / r_max)^2
    rmax = d["src_position"]["r_max_over_theta_e"]
    frac = np.hypot(inj["src_x"].astype(float), inj["src_y"].astype(float)) / inj["theta_e"].astype(float)
    assert ks(frac, lambda x: np.clip(x / rmax, 0, 1) ** 2) > P_MIN
    assert ks(np.arctan2(inj["src_y"].astype(float), inj["src_x"].astype(float)), stats.uniform(-np.pi, 2 * np.pi).cdf) > P_MIN
    # the test can fail: a shifted prior is rejected
    assert ks(inj["theta_e"], stats.uniform(d["theta_e"]["low"] + 0.1, 1.7).cdf) < 1e-6
    sersic = inj[inj["src_mode"] == "sersic"]
    assert ks(sersic["sersic_n"], uni(d["sersic_n"])) > P_MIN
    assert ks(sersic["sersic_q"], uni(d["sersic_q"])) > P_MIN
    assert ks(sersic["sersic_re_arcsec"], stats.loguniform(d["sersic_re_arcsec"]["low"],
                                                            d["sersic_re_arcsec"]["high"]).cdf) > P_MIN
    counts = np.bincount(inj["src_index"].astype(int), minlength=BANK.size)
    assert len(counts) == BANK.size and stats.chisquare(counts).pvalue > P_MIN


def test_ablation_repeats_the_cosmos_draws_with_twin_sources(big):
    """sersic_twin tasks: every parameter equals the cosmos task of the same target and replicate;
    Sersic parameters null (the bank's twin is used); own, unique seeds."""
    tasks, _ = big
    inj = tasks[~tasks["is_control"]]
    cos = inj[inj["config_name"] == "cosmos"].set_index(["target_id", "replicate"])
    twin = inj[inj["config_name"] == "sersic_twin"].set_index(["target_id", "replicate"]).loc[cos.index]
    for col in ("theta_e", "lens_e1", "lens_e2", "shear_g1", "shear_g2", "src_x", "src_y", "src_index",
                "src_phi", "src_mag_r", "src_z"):
        assert (twin[col].to_numpy() == cos[col].to_numpy()).all(), col
    assert (twin["src_mode"] == "sersic").all()
    for col in ("sersic_n", "sersic_re_arcsec", "sersic_q", "sersic_phi"):
        assert twin[col].isna().all(), col
    assert not set(twin["seed"]) & set(cos["seed"])
    bad = raw_config()
    bad["configs"][2]["ablation_of"] = "nope"
    with pytest.raises(ConfigError, match=r"configs\[2\].ablation_of: no earlier \(non-ablation\) config named 'nope'"):
        priors.parse_config(bad, "test")
    same = raw_config()
    same["configs"][2]["src_mode"] = "cosmos"
    with pytest.raises(ConfigError, match="an ablation must change the source mode"):
        priors.parse_config(same, "test")


def test_lenstronomy_conventions_round_trip(big):
    from lenstronomy.Util import param_util

    inj = big[0][~big[0]["is_control"]].iloc[:500]
    phi, q = param_util.ellipticity2phi_q(inj["lens_e1"].to_numpy(float), inj["lens_e2"].to_numpy(float))
    np.testing.assert_allclose(q, inj["lens_q"].astype(float), rtol=1e-10)
    np.testing.assert_allclose(np.mod(phi, np.pi), inj["lens_phi"].astype(float), atol=1e-9)
    phi_s, gamma = param_util.shear_cartesian2polar(inj["shear_g1"].to_numpy(float), inj["shear_g2"].to_numpy(float))
    np.testing.assert_allclose(gamma, inj["shear_gamma"].astype(float), atol=1e-12)


def test_truncated_normal_and_fixed_priors():
    raw = raw_config()
    raw["defaults"]["theta_e"] = {"dist": "normal", "mean": 1.2, "sigma": 0.4, "low": 0.6, "high": 3.0}
    raw["defaults"]["shear_gamma"] = {"dist": "fixed", "value": 0.03}
    raw["configs"] = [{"name": "only"}]
    tasks, _ = build(raw, targets(3000))
    inj = tasks[~tasks["is_control"]]
    a, b = (0.6 - 1.2) / 0.4, (3.0 - 1.2) / 0.4
    assert ks(inj["theta_e"], stats.truncnorm(a, b, loc=1.2, scale=0.4).cdf) > P_MIN
    assert inj["theta_e"].astype(float).between(0.6, 3.0).all()
    assert (inj["shear_gamma"] == 0.03).all()


def test_config_hashes_and_locations():
    raw = raw_config()
    plan = priors.parse_config(raw)
    base_hashes, base_loc = manifest.config_hashes(plan, BANK), manifest.manifest_hash(plan, BANK)
    more = copy.deepcopy(raw)
    more["replicates"] = 5  # more replicates: same per-config hash (old tasks unchanged), new location
    plan5 = priors.parse_config(more)
    assert manifest.config_hashes(plan5, BANK) == base_hashes
    assert manifest.manifest_hash(plan5, BANK) != base_loc
    changed = copy.deepcopy(raw)
    changed["defaults"]["theta_e"]["high"] = 3.0
    planc = priors.parse_config(changed)
    assert all(a != b for a, b in zip(manifest.config_hashes(planc, BANK), base_hashes))
    assert manifest.manifest_hash(planc, BANK) != base_loc
    assert manifest.manifest_hash(plan, manifest.BankSources(size=58)) != base_loc  # another bank -> another manifest


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["defaults"]["theta_e"].update(low=3.0), r"defaults.theta_e: low \(3.0\) must be below high"),
    (lambda r: r["defaults"].update(lens_q={"dist": "uniform", "low": 0.5, "high": 1.5}), r"defaults.lens_q.high: must be <= 1.0"),
    (lambda r: r["configs"][1].update(src_mode="galaxy"), r"configs\[1\].src_mode: must be one of cosmos, sersic"),
    (lambda r: r["configs"][1].update(sersic_n={"dist": "gauss"}), r"configs\[1\].sersic_n.dist: must be one of"),
    (lambda r: r["defaults"].pop("src_z"), r"defaults.src_z: missing required key"),
    (lambda r: r.update(replicate=2), r"replicate: unknown key"),
    (lambda r: r["configs"].append({"name": "cosmos"}), r"configs\[3\].name: duplicate config name"),
])
def test_config_errors_name_the_key(edit, message):
    raw = raw_config()
    edit(raw)
    with pytest.raises(ConfigError, match=message):
        priors.parse_config(raw, "p.yaml")


def test_sersic_priors_outside_the_renderable_range_are_refused():
    lo, hi = SERSIC_N_RANGE
    for bad in ({"dist": "uniform", "low": lo - 0.05, "high": 2.0}, {"dist": "uniform", "low": 1.0, "high": hi + 0.1}):
        raw = raw_config()
        raw["configs"][1]["sersic_n"] = bad
        with pytest.raises(ConfigError, match=r"configs\[1\].sersic_n.(low|high): must be"):
            priors.parse_config(raw, "p.yaml")
    raw = raw_config()
    raw["configs"][1]["sersic_n"] = {"dist": "uniform", "low": lo, "high": hi}
    priors.parse_config(raw, "p.yaml")


def test_tasks_follow_the_schema_module(big):
    tasks, _ = big
    assert list(tasks.columns) == MANIFEST_SCHEMA.names
    assert pa.Table.from_pandas(tasks.iloc[:10], schema=MANIFEST_SCHEMA, preserve_index=False).schema.equals(MANIFEST_SCHEMA)
    assert MANIFEST_SCHEMA.field("theta_e").metadata == {b"unit": b"arcsec"}


def _fake_manifest(folder, location=None):
    folder.mkdir(parents=True)
    (folder / "part-00000.parquet").write_bytes(b"")
    (folder / "_manifest.json").write_text(json.dumps({"location": str(location or folder)}))


def test_resolve_manifest_folder_root_and_refusals(tmp_path):
    one = tmp_path / "one"
    _fake_manifest(one / "aaaa")
    assert manifest.resolve_manifest(str(one / "aaaa")) == str(one / "aaaa")  # the folder itself
    assert manifest.resolve_manifest(str(one)) == str(one / "aaaa")           # a root with one
    moved = tmp_path / "moved"
    _fake_manifest(moved / "bbbb", location="s3://bucket/run/manifest/bbbb")
    assert manifest.resolve_manifest(str(moved)) == "s3://bucket/run/manifest/bbbb"  # the recorded location
    two = tmp_path / "two"
    _fake_manifest(two / "aaaa")
    _fake_manifest(two / "cccc")
    with pytest.raises(DatasetError, match=r"two: holds 2 manifests \(.*aaaa, .*cccc\): pass one of them"):
        manifest.resolve_manifest(str(two))
    copy_only = tmp_path / "copy"  # the dataset's files without _manifest.json: the folder itself
    copy_only.mkdir()
    (copy_only / "part-00000.parquet").write_bytes(b"")
    assert manifest.resolve_manifest(str(copy_only)) == str(copy_only)
    with pytest.raises(DatasetError, match=r"empty: no _manifest.json here or in a folder below it"):
        (tmp_path / "empty").mkdir()
        manifest.resolve_manifest(str(tmp_path / "empty"))


def test_target_checks_name_the_column():
    with pytest.raises(DatasetError, match=r"t: column target_id: '1-2-3' occurs 2 times"):
        manifest.check_targets("t", 3, ("1-2-3", 2), {})
    with pytest.raises(DatasetError, match=r"t: column psf_fwhm_r: 4 null values"):
        manifest.check_targets("t", 3, None, {"ra": 0, "psf_fwhm_r": 4})
    manifest.check_targets("t", 3, None, {"ra": 0})


def test_manifest_job_bad_targets_exit_2(spark, tmp_path, capsys):
    import pandas as pd

    from jobs import build_manifest

    (tmp_path / "t").mkdir()
    pd.DataFrame({"target_id": ["1-2-3"], "ra": [1.0]}).to_parquet(tmp_path / "t" / "part-00000.parquet")
    conf = str(REPO_ROOT / "conf" / "injection_priors.yaml")
    bank, _ = small_bank("local", str(tmp_path), tmp_path)
    rc = build_manifest.main(["--targets", str(tmp_path / "t"), "--config", conf, "--output", str(tmp_path / "m"), *bank])
    err = capsys.readouterr().err
    assert rc == 2 and "missing columns dec, brickname, split, psf_fwhm_g" in err
    rc = build_manifest.main(["--targets", str(tmp_path / "t"), "--config", conf, "--output", str(tmp_path / "m")])
    assert rc == 2 and "lens_mode deflector or the galaxies' own redshift or brightness, so --bank PATH" in \
        capsys.readouterr().err
    rc = build_manifest.main(["--targets", str(tmp_path / "none"), "--config", conf, "--output", str(tmp_path / "m"),
                              *bank])
    assert rc == 2 and "none: no Parquet files found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(conf).read().replace("replicates: 2 ", "replicates: two "))
    rc = build_manifest.main(["--targets", str(tmp_path / "t"), "--config", str(bad), "--output", str(tmp_path / "m"),
                              *bank])
    assert rc == 2 and "bad.yaml: replicates: expected an integer, got 'two'" in capsys.readouterr().err


def test_stage5_knows_when_a_manifest_moves_sources(tmp_path):
    """Stage 5 asks for the bank's SEDs only when a config moves galaxies (src_redshift: prior; a
    manifest from before that key moved them too)."""
    def write(folder, config):
        folder.mkdir()
        (folder / "_manifest.json").write_text(json.dumps({"config": config}))
        return str(folder)

    shipped = yaml.safe_load(CONF.read_text())
    assert not manifest.moves_sources(write(tmp_path / "own", shipped))
    moved = copy.deepcopy(shipped)
    moved["configs"][1]["src_redshift"] = "prior"
    assert manifest.moves_sources(write(tmp_path / "moved", moved))
    assert manifest.moves_sources(write(tmp_path / "old", raw_config() | {"defaults": {"src_z": {}}}))
    assert not manifest.moves_sources(str(tmp_path / "nothing"))
