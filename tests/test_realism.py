"""Realism (issue 12): the Legacy Survey viewer stretch, the arc/host estimators on stamps with known
answers, the two-sample tests, and the stage-6 job with ``--real`` (local Spark)."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from jobs import validate_cosmos_injection as job
from tests.stamp_factory import make_rows, write_dataset
from udfs.io import storage
from udfs.qa import plots, realism
from udfs.qa.rgb import legacy_rgb, stretch_planes
from udfs.schemas.cutouts import cutout_schema

N, PS = 64, 0.262
SKY = np.array([0.010, 0.015, 0.030])     # nanomaggies per pixel, g r z
HOST_COLOUR = np.array([0.4, 1.0, 1.6])   # an LRG: red
ARC_FLUX = np.array([4.0, 6.0, 7.2])      # nanomaggies, g r z: a blue arc
FWHM = [1.3, 1.2, 1.1]
_C = (N - 1) / 2
_Y, _X = np.mgrid[:N, :N]
R_PIX = np.hypot(_X - _C, _Y - _C)
PHI = np.arctan2(_Y - _C, _X - _C)
IVAR = np.broadcast_to(1 / SKY[:, None, None] ** 2, (3, N, N))


def _formula(g, r, z):
    """The module docstring's formula for one pixel, written out with math: (R, G, B) in [0, 1]."""
    x = {"g": 6.0 * g + 0.03, "r": 3.4 * r + 0.03, "z": 2.2 * z + 0.03}
    i = sum(max(0.0, v) for v in x.values()) / 3
    f = math.asinh(20 * i) / (math.sqrt(20) * i) if i > 0 else 0.0
    return tuple(min(1.0, max(0.0, x[b] * f)) for b in "zrg")


def test_stretch_follows_the_documented_formula():
    pixels = [(0.0, 0.0, 0.0), (0.1, 0.2, 0.5), (-0.1, -0.1, -0.1), (0.0, 0.0, 0.3), (0.02, -0.004, 1.5)]
    g, r, z = (np.array([p[k] for p in pixels])[None, :] for k in range(3))
    out = stretch_planes({"g": g, "r": r, "z": z})[0]
    for got, p in zip(out, pixels):
        assert got == pytest.approx(_formula(*p), abs=1e-12)
    # by hand: the empty sky is x = 0.03 in every band, f = asinh(0.6) / (sqrt(20) 0.03) = 4.2398 -> 0.1272 grey
    assert out[0] == pytest.approx([0.12719] * 3, abs=1e-5)
    assert out[2].tolist() == [0.0, 0.0, 0.0]                          # all bands negative: black
    assert out[1][0] == 1.0 and out[1][1] == pytest.approx(0.67401, abs=1e-4)  # z clips, r 0.71 x 0.9493
    # uint8 in R, G, B = z, r, g; band order of the stamp honoured (rzg given, same picture)
    img = np.stack([g, r, z]).reshape(3, 1, len(pixels))
    u8 = legacy_rgb(img, "grz")
    assert u8.dtype == np.uint8 and u8[0, 0].tolist() == [32, 32, 32]
    assert np.array_equal(legacy_rgb(img[[1, 2, 0]], "rzg"), u8)
    assert np.array_equal(u8[0], np.round(255 * out).astype(np.uint8))
    with pytest.raises(ValueError, match="lacks"):
        legacy_rgb(img[:2], "gr")


def test_faint_arc_at_3_sky_sigma_is_visible():
    from astropy.visualization import make_lupton_rgb

    rng = np.random.default_rng(3)
    ring = np.abs(R_PIX * PS - 2.0) < 0.3
    img = rng.normal(size=(3, N, N)) * SKY[:, None, None] + 3 * SKY[:, None, None] * ring[None]
    sky = R_PIX * PS > 3
    new = legacy_rgb(img, "grz").astype(float)
    lift = new[ring].mean() - new[sky].mean()
    old = make_lupton_rgb(img[2], img[1], img[0], stretch=0.5, Q=8).astype(float)  # the previous gallery stretch
    old_lift = old[ring].mean() - old[sky].mean()
    print(f"\n3-sigma ring: mean RGB level above the sky {lift:.0f}/255 (legacy), {old_lift:.0f}/255 (old Lupton)")
    assert lift > 50 and lift > 2 * old_lift
    assert 25 < new[sky].mean() < 60   # the sky is a visible dark grey, not black


def test_pictures_are_byte_deterministic():
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(3, 16, 16)) * SKY[:, None, None] for _ in range(2))
    pairs = [{"injected": a, "control": b, "label": "x"}]
    assert plots.gallery(pairs, "grz", "t") == plots.gallery(pairs, "grz", "t")
    rows = [{"real": a, "real_label": "r", "neighbours": [{"image": b, "label": "n"}]}]
    png = plots.neighbours(rows, "grz", "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == plots.neighbours(rows, "grz", "t")


def _host():
    """A de Vaucouleurs host of 40 nanomaggies in r (r_e = 1.5")."""
    h = np.exp(-7.67 * ((np.maximum(R_PIX, 0.3) * PS / 1.5) ** 0.25 - 1))
    return HOST_COLOUR[:, None, None] * (h / h.sum() * 40.0)[None]


def _arc(radius=2.0, sigma=0.25, psf_fwhm=0.0):
    """Unit-flux arc: Gaussian radial profile about ``radius`` (arcsec) over a 90 deg segment."""
    a = np.exp(-0.5 * ((R_PIX * PS - radius) / sigma) ** 2) * (np.abs(np.angle(np.exp(1j * (PHI - 0.5)))) < np.pi / 4)
    if psf_fwhm:
        a = ndimage.gaussian_filter(a, psf_fwhm / 2.3548 / PS)
    return a / a.sum()


def _stamp(seed, arc=None):
    rng = np.random.default_rng(seed)
    img = _host() + rng.normal(size=(3, N, N)) * SKY[:, None, None]
    return img if arc is None else img + ARC_FLUX[:, None, None] * arc[None]


@pytest.mark.parametrize("psf", [0.0, 1.2])
def test_estimators_recover_a_known_arc(psf):
    true_ratio = ARC_FLUX[1] / _host()[1][R_PIX * PS <= 4.0].sum()   # 0.181
    true_gr = -2.5 * math.log10(ARC_FLUX[0] / ARC_FLUX[1])           # 0.44
    m = realism.measure_stamps(np.stack([_stamp(s, _arc(psf_fwhm=psf)) for s in range(6)]),
                               np.broadcast_to(IVAR, (6, 3, N, N)), PS, np.array([FWHM] * 6))
    print(f"\npsf {psf}: ratio {m['arc_host_flux_ratio_r']} (true {true_ratio:.3f}), radius "
          f"{m['arc_radius_arcsec']}, width {m['arc_radial_width_arcsec']}, g-r {m['arc_g_r']}")
    assert np.all(m["arc_pixels"] > 20)
    assert np.all(np.abs(m["arc_radius_arcsec"] - 2.0) < 0.1)
    assert np.all(np.abs(m["arc_g_r"] - true_gr) < 0.15)
    if psf == 0:
        assert np.all(np.abs(m["arc_host_flux_ratio_r"] / true_ratio - 1) < 0.10)
        assert np.all(np.abs(m["arc_radial_width_arcsec"] / 0.25 - 1) < 0.25)
        # SB: the arc's r flux over its grown footprint, ~22.4-22.6 mag/arcsec^2 here
        assert np.all((m["arc_sb_r"] > 22.0) & (m["arc_sb_r"] < 23.0))
    else:  # the PSF spreads flux below threshold (lower bound) and widens the arc toward sqrt(s^2 + s_psf^2)
        assert np.all((m["arc_host_flux_ratio_r"] > 0.65 * true_ratio) & (m["arc_host_flux_ratio_r"] < 1.05 * true_ratio))
        assert np.all((m["arc_radial_width_arcsec"] > 0.25) & (m["arc_radial_width_arcsec"] < 0.57))
    # the same every time, and the host-only stamps' noise is white (the generated noise)
    assert np.all(np.abs(m["noise_corr"]) < 0.05)
    # depth: 5 sigma over a Gaussian PSF's noise-equivalent area, r sky 0.015 nmgy/px, FWHM 1.2"
    nea = 4 * math.pi * (1.2 / (2 * math.sqrt(2 * math.log(2))) / PS) ** 2
    assert m["depth_r"] == pytest.approx(22.5 - 2.5 * math.log10(5 * 0.015 * math.sqrt(nea)), abs=1e-9)
    assert np.all(m["psf_fwhm_r"] == 1.2)


def test_no_arc_gives_zero_ratio_and_nan_arc_measurements():
    m = realism.measure_stamps(np.stack([_stamp(100 + s) for s in range(20)]), np.broadcast_to(IVAR, (20, 3, N, N)),
                               PS, np.array([FWHM] * 20))
    found = int(np.sum(m["arc_pixels"] > 0))
    assert found <= 1                                    # noise peaks: min 3 connected pixels at 3 sigma
    none = m["arc_pixels"] == 0
    assert np.all(m["arc_host_flux_ratio_r"][none] == 0.0)
    for k in ("arc_g_r", "arc_r_z", "arc_radius_arcsec", "arc_radial_width_arcsec", "arc_sb_r"):
        assert np.all(np.isnan(m[k][none]))
    assert np.all(np.isfinite(m["noise_corr"])) and np.all(np.isfinite(m["depth_r"]))
    # a missing PSF size or an empty stamp gives NaN, never an exception
    nan_psf = realism.measure_stamp(_stamp(1, _arc()), IVAR, PS, [1.3, np.nan, 1.1])
    assert np.isnan(nan_psf["arc_host_flux_ratio_r"]) and np.isnan(nan_psf["depth_r"]) and nan_psf["arc_pixels"] == 0
    empty = realism.measure_stamp(np.full((3, N, N), np.nan), np.zeros((3, N, N)), PS, FWHM)
    assert all(np.isnan(empty[k]) for k in realism.MEASUREMENTS if k != "psf_fwhm_r")


def test_two_sample_tests_tell_different_sets_from_identical_ones():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(1.0, 1.0, size=80)
    diff = realism.two_sample(a, b)
    assert diff["ks_p"] < 1e-6 and diff["ad_p"] == pytest.approx(0.001) and diff["ad_p_clipped"]
    assert diff["injected"]["q0.5"] == pytest.approx(np.median(a)) and diff["real"]["q0.84"] > diff["real"]["q0.5"]
    same = realism.two_sample(np.r_[a, np.nan, np.nan], a.copy())
    assert same["ks_p"] == pytest.approx(1.0) and same["ad_p"] == pytest.approx(0.25) and same["ad_p_clipped"]
    assert same["n_injected"] == 300 and same["nan_injected"] == 2 and same["nan_real"] == 0
    draws = realism.two_sample(a[:150], a[150:])         # two draws of one distribution: not rejected
    assert draws["ks_p"] > 0.05 and draws["ad_p"] > 0.05
    few = realism.two_sample([1.0], [np.nan, 2.0, 3.0])
    assert few["ks_p"] is None and few["ad_p"] is None and few["n_real"] == 2


def test_nearest_injections_in_measurement_space():
    inj = {m: np.zeros(5) for m in realism.MEASUREMENTS}
    inj["arc_radius_arcsec"] = np.array([1.0, 2.0, 3.0, 1.9, np.nan])
    real = {m: np.zeros(2) for m in realism.MEASUREMENTS}
    real["arc_radius_arcsec"] = np.array([2.05, 0.9])
    assert realism.nearest(inj, real, 2) == [[1, 3], [0, 3]]
    real["arc_radius_arcsec"] = np.array([np.nan, 2.0])   # no arc: the injection without one is nearest
    assert realism.nearest(inj, real, 1) == [[4], [1]]


# --- the job -------------------------------------------------------------------------------------

def write_cutouts(uri: str, rows: list[dict]) -> str:
    """A stage-4 cutouts file (udfs.schemas.cutouts) of ``rows`` (target_id, image, invvar, psf_fwhm_*)."""
    sch = cutout_schema("grz", N)
    cols = []
    for f in sch:
        if pa.types.is_fixed_size_list(f.type):
            n = f.type.list_size
            flat = np.concatenate([np.asarray(r[f.name], np.float64).ravel() if f.name in r else np.full(n, np.nan)
                                   for r in rows])
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=f.type.value_type), n))
        else:
            cols.append(pa.array([r.get(f.name) for r in rows], type=f.type))
    buf = io.BytesIO()
    pq.write_table(pa.table(cols, schema=sch), buf)
    path = storage.join(uri, "part-00000.parquet")
    storage.write_bytes(path, buf.getvalue())
    return path


def _real_rows(n: int) -> list[dict]:
    """"Real lenses": host + arc stamps of another seed, as cutout rows."""
    return [{"target_id": f"real-{i:02d}", "ok": True, "dx_pix": 0.0, "dy_pix": 0.0, "image": r["image"],
             "invvar": r["invvar"], "maskbits": np.zeros(N * N), **{f"psf_fwhm_{b}": r[f"psf_fwhm_{b}"] for b in "grz"}}
            for i, r in enumerate(x for x in make_rows(n, seed=77) if not x["is_control"])]


def test_job_with_real_lenses_writes_the_realism_section(spark, tmp_path, capsys):
    stamps = str(tmp_path / "stamps")
    write_dataset(stamps, make_rows(30, seed=5, n_failed=2))
    real = str(tmp_path / "real")
    write_cutouts(real, _real_rows(12))
    out = str(tmp_path / "rep" / "report.json")
    assert job.main(["--stamps", stamps, "--output", out, "--real", real]) == 0
    rep = json.loads(storage.read_bytes(out))
    sec = rep["realism"]
    assert sec["n_injected"] == 28 and sec["n_real"] == 12 and sec["injected_sample_fraction"] == 1.0
    assert set(sec["measurements"]) == set(realism.MEASUREMENTS)
    rad = sec["measurements"]["arc_radius_arcsec"]
    # the factory's arcs sit at theta_E in 1.8..3.0" on both sides
    assert 1.6 < rad["injected"]["q0.5"] < 3.1 and 1.6 < rad["real"]["q0.5"] < 3.1
    assert rad["n_injected"] + sec["no_arc_pixels"]["injected"] == 28
    for m in sec["measurements"].values():
        assert m["n_injected"] + m["nan_injected"] == 28 and m["n_real"] + m["nan_real"] == 12
    psf = sec["measurements"]["psf_fwhm_r"]
    assert psf["ks_p"] is not None and psf["ad_stat"] is not None
    probe = sec["probe"]
    assert probe["refused"] is False and probe["n_groups"] == 40 and 0 <= probe["auc"] <= 1
    assert probe["auc_to_beat"] == 0.997 and len(probe["auc_interval"]) == 2
    assert probe["n_features"] == 3 * 20 * 20
    for key in ("realism", "realism_hist"):
        assert rep["outputs"][key].endswith(f"report_{key}.png")
        assert storage.read_bytes(rep["outputs"][key])[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "realism: 28 injected vs 12 real lenses; probe AUC" in printed and "arc_host_flux_ratio_r" in printed


def test_job_bad_real_input_exits_2_with_one_line(tmp_path, capsys):
    stamps = str(tmp_path / "stamps")
    write_dataset(stamps, make_rows(4, seed=1))
    out = str(tmp_path / "r.json")
    assert job.main(["--stamps", stamps, "--output", out, "--real", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "no Parquet files found" in err
    bad = str(tmp_path / "bad")
    path = write_cutouts(bad, _real_rows(2))
    t = pq.read_table(path)
    pq.write_table(t.drop_columns(["invvar"]).replace_schema_metadata(t.schema.metadata), path)
    assert job.main(["--stamps", stamps, "--output", out, "--real", bad]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: missing column invvar\n"
    assert not (tmp_path / "r.json").exists()
