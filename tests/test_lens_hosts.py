"""Real lens deflectors (Stein et al. 2021 lists) as targets: selection, documented sizes and shapes,
the catalogue the sample sky renders, and the job (union with stage-1 targets, one-line errors)."""
import numpy as np
import pandas as pd
import pytest
import yaml

from udfs.config.provenance import REPO_ROOT
from udfs.lensing.deflector import tractor_to_stamp
from udfs.sources.red_galaxy import absolute_mag_r
from udfs.schemas.targets import TARGET_SCHEMA
from udfs.sources.cosmology import get_cosmology
from udfs.targets import lens_hosts as lh

CONF = str(REPO_ROOT / "conf" / "lens_hosts.yaml")


@pytest.fixture(scope="module")
def hosts():
    cfg = lh.load_config(CONF)
    rows, counts = lh.select_hosts(cfg)
    targets, catalog = lh.host_tables(rows, cfg, chash="h", version="v")
    return cfg, rows, targets, catalog, counts


def test_hosts_are_real_rows_of_the_lists(hosts, data_root):
    cfg, rows, targets, _, counts = hosts
    assert len(targets) == cfg.n_hosts == 50 and targets["target_id"].is_unique
    assert targets["brickname"].nunique() >= 45          # many distinct backgrounds
    for name, path in (("stein2021_training", "training_lenses.tsv"), ("stein2021_new", "new_lenses.tsv")):
        table = pd.read_csv(data_root / "lenses" / "stein2021" / path, sep="\t")
        mine = targets[targets["target_id"].str.startswith(name + ":")]
        src = table.iloc[mine["target_id"].str.split(":").str[1].astype(int)]
        np.testing.assert_array_equal(mine["ra"], src["ra"])
        np.testing.assert_array_equal(mine["mag_r"], src["mag_r"])
        z = np.where(src["z_spec"] > 0, src["z_spec"], src["z_phot_mean"])
        np.testing.assert_allclose(mine["z_l"], z)
        assert counts[name]["rows"] == len(table)
    assert set(targets["zl_source"]) <= {f"{n}:{k}" for n in ("stein2021_training", "stein2021_new")
                                          for k in ("z_spec", "z_phot_mean")}
    again = lh.host_tables(lh.select_hosts(cfg)[0], cfg, chash="h", version="v")[0]
    pd.testing.assert_frame_equal(targets, again)       # deterministic
    assert list(targets.columns) == TARGET_SCHEMA.names


def test_assigned_sizes_and_shapes_follow_the_documented_rules(hosts):
    cfg, rows, targets, catalog, _ = hosts
    m = absolute_mag_r(targets["mag_r"], targets["z_l"], cfg.cosmology)
    r_kpc = 10 ** (-0.4 * 0.65 * m - 5.06)
    da = get_cosmology(cfg.cosmology).angular_diameter_distance(targets["z_l"].to_numpy()).to("kpc").value
    np.testing.assert_allclose(targets["shape_r"], r_kpc / da * 180 / np.pi * 3600, rtol=1e-9)
    q, _ = tractor_to_stamp(targets["shape_e1"], targets["shape_e2"])
    assert (q >= cfg.q_low - 1e-9).all() and (q <= 1.0).all()
    assert (q[targets["type"] == "REX"] == 1.0).all()
    assert abs(np.median(q[targets["type"] != "REX"]) - cfg.q_mean) < 0.1
    assert targets["shape_source"].str.startswith("assigned:").all()
    # the catalogue: observed (reddened) fluxes of the same magnitudes
    flux_r = catalog["FLUX_R"] / 10 ** (-0.4 * 2.165 * targets["ebv"].to_numpy())
    np.testing.assert_allclose(22.5 - 2.5 * np.log10(flux_r), targets["mag_r"], atol=1e-9)


def test_the_sample_sky_reads_and_renders_the_catalogue(hosts, tmp_path):
    from udfs.survey.sample_sky import galsim_profile, read_catalog

    *_, catalog, _ = hosts
    path = tmp_path / "hosts.fits"
    path.write_bytes(lh.catalog_fits(catalog))
    cat = read_catalog(str(path))
    assert len(cat) == 50
    for row in cat.to_dict("records")[:10]:
        prof = galsim_profile(row)
        assert prof is not None and prof.flux == pytest.approx(1.0)


def test_job_writes_hosts_with_stage1_targets_and_refuses_bad_input(spark, tmp_path, capsys):
    from jobs import build_lens_hosts
    from jobs.spark import read_parquet

    cfg = lh.load_config(CONF)
    lrgs, _ = lh.host_tables(lh.select_hosts(cfg)[0].head(2).assign(target_id=["8000-1-1", "8000-1-2"]), cfg,
                             chash="h", version="v")
    (tmp_path / "lrgs").mkdir()
    lrgs.to_parquet(tmp_path / "lrgs" / "part-00000.parquet", schema=TARGET_SCHEMA, index=False)
    argv = ["--with-targets", str(tmp_path / "lrgs"), "--output", str(tmp_path / "all"),
            "--catalog", str(tmp_path / "hosts.fits")]
    assert build_lens_hosts.main(argv) == 0
    both = read_parquet(spark, str(tmp_path / "all")).toPandas()
    assert len(both) == 52 and {"8000-1-1", "8000-1-2"} <= set(both["target_id"])
    assert (tmp_path / "hosts.fits").exists() and (tmp_path / "all" / "_hosts.json").exists()
    first = sorted(p.read_bytes() for p in (tmp_path / "all").glob("*.parquet"))
    assert build_lens_hosts.main(argv) == 0                       # rerun: same bytes
    assert sorted(p.read_bytes() for p in (tmp_path / "all").glob("*.parquet")) == first
    # a host id among the stage-1 targets: refused in one line
    clash, _ = lh.host_tables(lh.select_hosts(cfg)[0].head(1), cfg, chash="h", version="v")
    (tmp_path / "clash").mkdir()
    clash.to_parquet(tmp_path / "clash" / "part-00000.parquet", schema=TARGET_SCHEMA, index=False)
    assert build_lens_hosts.main(["--with-targets", str(tmp_path / "clash"), "--output", str(tmp_path / "x"),
                                  "--catalog", str(tmp_path / "x.fits")]) == 2
    assert "is also a lens host" in capsys.readouterr().err
    bad = yaml.safe_load(open(CONF))
    bad["lists"][0]["path"] = str(tmp_path / "missing.tsv")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert build_lens_hosts.main(["--config", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "y"),
                                  "--catalog", str(tmp_path / "y.fits")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.tsv: lens list 'stein2021_training' not found" in err[0]
