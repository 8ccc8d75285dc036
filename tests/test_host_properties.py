"""Stage 1's host properties: the Tractor shape of each LRG and its lens redshift (the colour
estimate, or the photo-z companion file), per catalogue and through the job."""
import numpy as np
import pytest
from astropy.io import fits

from tests.test_select_lrgs import _selection_config, config
from udfs.survey.tractor_catalog import CatalogError, read_catalog
from udfs.targets.lrg_targets import select_targets


def _sweep(data_root):
    return str(data_root / "legacysurvey" / "dr8_sweeps" / "sweep-330m005-340p000.fits")


def _write_pz(path, cols, z):
    fits.BinTableHDU.from_columns([
        fits.Column(name="RELEASE", format="I", array=cols["RELEASE"]),
        fits.Column(name="BRICKID", format="J", array=cols["BRICKID"]),
        fits.Column(name="OBJID", format="J", array=cols["OBJID"]),
        fits.Column(name="Z_PHOT_MEDIAN", format="E", array=z)]).writeto(path)


def test_targets_carry_the_hosts_shape_and_redshift(data_root, tmp_path):
    """The DR8 DEV LRG keeps its SHAPEDEV shape; its z_l is the colour estimate, or the photo-z
    companion's Z_PHOT_MEDIAN when one is given; a companion of other rows is refused."""
    from udfs.sources.red_galaxy import colour_redshift
    from udfs.targets.host_properties import photo_z_file

    cat = read_catalog(_sweep(data_root))
    cfg = config()
    t, _, stats = select_targets(cat, cfg, config_hash="h", code_version="v")
    assert len(t) == 1 and t["type"].iloc[0] == "DEV"
    i = int(np.flatnonzero(cat.columns["OBJID"] == t["objid"].iloc[0])[0])
    assert t["shape_source"].iloc[0] == "shapedev"
    for col in ("R", "E1", "E2"):
        assert t[f"shape_{col.lower()}"].iloc[0] == pytest.approx(float(cat.columns[f"SHAPEDEV_{col}"][i]))
    assert t["zl_source"].iloc[0] == "colour_estimate" and stats["zl_sources"] == {"colour_estimate": 1}
    expect = colour_redshift(t["mag_g"], t["mag_r"], t["mag_z"])[0]
    assert t["z_l"].iloc[0] == expect and 0.3 < expect < 1.2

    pz_dir = tmp_path / "pz"
    pz_dir.mkdir()
    z = np.full(len(cat), 0.55, np.float32)
    z[i] = 0.6125
    _write_pz(pz_dir / "sweep-330m005-340p000-pz.fits", cat.columns, z)
    found = photo_z_file(str(pz_dir), _sweep(data_root))
    assert found == str(pz_dir / "sweep-330m005-340p000-pz.fits")
    assert photo_z_file(str(pz_dir), "sweep-000m005-010p000.fits") is None
    t2, _, _ = select_targets(cat, cfg, config_hash="h", code_version="v", photo_z=found)
    assert t2["z_l"].iloc[0] == pytest.approx(0.6125) and t2["zl_source"].iloc[0] == "pz_file:sweep-330m005-340p000-pz.fits"
    shuffled = {k: v[::-1] for k, v in cat.columns.items()}
    _write_pz(tmp_path / "bad-pz.fits", shuffled, z)
    with pytest.raises(CatalogError, match=r"bad-pz.fits: rows do not match .*sweep-330m005-340p000.fits"):
        select_targets(cat, cfg, config_hash="h", code_version="v", photo_z=str(tmp_path / "bad-pz.fits"))


def test_select_lrgs_job_reads_photo_z_companions(spark, data_root, tmp_path, capsys):
    from jobs import select_lrgs
    from jobs.spark import read_parquet

    cat = read_catalog(_sweep(data_root))
    pz_dir = tmp_path / "pz"
    pz_dir.mkdir()
    _write_pz(pz_dir / "sweep-330m005-340p000-pz.fits", cat.columns, np.full(len(cat), 0.5, np.float32))
    out = str(tmp_path / "t")
    argv = ["--input", str(data_root / "legacysurvey" / "dr8_sweeps"), "--output", out,
            "--config", _selection_config(tmp_path), "--photo-z", str(pz_dir)]
    assert select_lrgs.main(argv) == 0
    t = read_parquet(spark, out).toPandas()
    assert (t["zl_source"] == "pz_file:sweep-330m005-340p000-pz.fits").all() and (t["z_l"] == 0.5).all()
    assert select_lrgs.main(argv[:-1] + [str(tmp_path / "nope")]) == 2
    assert "--photo-z" in capsys.readouterr().err
