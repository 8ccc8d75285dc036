"""Deflector-consistent lenses: the sigma -> theta_E chain against lenstronomy, the Faber-Jackson
relation, the colour redshift against real spectroscopic redshifts, the Tractor -> stamp frame on a
real galaxy, and stage 3's deflector mode (every drawn quantity in the row, theta_E following the host)."""
import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS
from scipy import stats

from udfs.config.checker import ConfigError
from udfs.config.provenance import REPO_ROOT
from udfs.config.sample_data import data_root
from udfs.lensing import deflector as dfl
from udfs.sources import red_galaxy
from udfs.sources.cosmology import get_cosmology
from udfs.stamps import manifest, priors

COSMO = "Planck18"
PARKER = dict(sigma_star=142.0, alpha=3.0, mstar_h=-20.44, mstar_z=0.1, evolution=1.5, cosmology=COSMO)


@pytest.mark.parametrize("sigma, z_l, z_s", [(209.0, 0.5, 2.0), (314.0, 0.5, 2.0), (250.0, 0.3, 1.2), (180.0, 0.8, 3.5)])
def test_sis_theta_e_matches_lenstronomy(sigma, z_l, z_s):
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    ref = LensCosmo(z_lens=z_l, z_source=z_s, cosmo=get_cosmology(COSMO)).sis_sigma_v2theta_E(sigma)
    assert dfl.sis_theta_e(sigma, z_l, z_s, COSMO) == pytest.approx(ref, rel=1e-9)
    assert np.isnan(dfl.sis_theta_e(sigma, z_l, z_l, COSMO))   # a source in front of (or at) the lens


def test_faber_jackson_normalisation_and_slope():
    h = get_cosmology(COSMO).H0.value / 100
    mstar = -20.44 + 5 * np.log10(h) - 1.5 * (0.5 - 0.1)
    assert dfl.faber_jackson_sigma(mstar, 0.5, **PARKER) == pytest.approx(142.0)
    # ten times the luminosity -> sigma x 10^(1/3)
    assert dfl.faber_jackson_sigma(mstar - 2.5, 0.5, **PARKER) == pytest.approx(142.0 * 10 ** (1 / 3))
    assert red_galaxy.k_correction_r(0.0) == pytest.approx(0.0, abs=0.01)


def test_colour_redshift_against_real_spectroscopic_redshifts():
    """On the Stein et al. (2021) training lenses with z_spec: bias and scatter of the red-sequence estimate."""
    d = pd.read_csv(data_root() / "lenses" / "stein2021" / "training_lenses.tsv", sep="\t")
    d = d[(d["z_spec"] > 0) & (d["mag_r"] > 0)]
    z = red_galaxy.colour_redshift(d["mag_g"], d["mag_r"], d["mag_z"])
    dz = (z - d["z_spec"].to_numpy()) / (1 + d["z_spec"].to_numpy())
    bias, nmad = np.median(dz), 1.4826 * np.median(np.abs(dz - np.median(dz)))
    print(f"colour z on {len(d)} lenses: bias {bias:+.3f}, NMAD {nmad:.3f}, >0.1: {np.mean(np.abs(dz) > 0.1):.2f}")
    assert len(d) > 300 and abs(bias) < 0.04 and nmad < 0.04
    assert np.isnan(red_galaxy.colour_redshift([np.nan], [20.0], [19.0])[0])


def _fit_angle(image, x, y, e, r_e, fwhm, win):
    """Stamp-frame angle (deg) of the DEV model (|e|, r_e) that best fits ``image`` (plus a plane) in ``win``."""
    import galsim

    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    best = (np.inf, None)
    for phi in np.arange(-90.0, 90.0, 2.0):
        g = galsim.Shear(g=e, beta=phi * galsim.degrees)
        gal = galsim.Convolve(galsim.DeVaucouleurs(half_light_radius=r_e).shear(g), galsim.Gaussian(fwhm=fwhm))
        model = gal.drawImage(galsim.ImageD(image.shape[1], image.shape[0], scale=0.262),
                              offset=(x - (image.shape[1] - 1) / 2, y - (image.shape[0] - 1) / 2)).array
        a = np.stack([model[win], np.ones(win.sum()), xx[win], yy[win]], axis=1)
        coef = np.linalg.lstsq(a, image[win], rcond=None)[0]
        rms = np.sqrt(np.mean((a @ coef - image[win]) ** 2))
        best = min(best, (rms, phi))
    return best[1]


def test_tractor_shape_to_stamp_frame_on_a_real_galaxy():
    """The real DEV elliptical of brick 1102p240 (e1 -0.177, e2 0.209): its angle fitted on the survey's
    own model image and on the real coadd agrees with the converted angle; the other sign conventions
    (e1 or e2 flipped, or both kept as pixel-frame) are far off."""
    d = data_root() / "legacysurvey" / "coadd_1102p240_z"
    row = [r for r in fits.getdata(d / "tractor-1102p240.fits") if r["type"].strip() == "DEV"][0]
    e1, e2 = float(row["shapeDev_e1"]), float(row["shapeDev_e2"])
    q, phi = dfl.tractor_to_stamp(e1, e2)
    ours = np.degrees(phi)
    ours = ours - 180 if ours > 90 else ours
    with fits.open(d / "legacysurvey-1102p240-model-z.fits.fz") as hm, \
            fits.open(d / "legacysurvey-1102p240-image-z.fits.fz") as hi:
        wcs = WCS(hm[1].header)
        assert hm[1].header["CD1_1"] < 0 < hm[1].header["CD2_2"]       # +x West, +y North
        model, image = hm[1].data.astype(float), hi[1].data.astype(float)
    x, y = wcs.all_world2pix(row["ra"], row["dec"], 0)
    yy, xx = np.mgrid[0:model.shape[0], 0:model.shape[1]]
    win = np.hypot(xx - x, yy - y) < 9
    e = (1 - q) / (1 + q)
    assert e == pytest.approx(np.hypot(e1, e2), rel=1e-6)
    fwhm = float(np.ravel(row["psfsize"])[0]) if np.ndim(row["psfsize"]) else float(row["psfsize"])
    fits_deg = [_fit_angle(im, x, y, e, float(row["shapeDev_r"]), fwhm, win) for im in (model, image)]
    print(f"converted angle {ours:.1f} deg; fitted on the survey model {fits_deg[0]:.0f}, on the coadd {fits_deg[1]:.0f}")

    def gap(a, b):
        return abs((a - b + 90) % 180 - 90)

    alternatives = [np.degrees(0.5 * np.arctan2(s2 * e2, s1 * e1)) for s1, s2 in ((1, 1), (1, -1), (-1, 1))]
    for fitted in fits_deg:
        assert gap(fitted, ours) < 15
        assert all(gap(fitted, alt) > gap(fitted, ours) + 15 for alt in alternatives)
    assert dfl.tractor_to_stamp(0.0, 0.0)[0] == 1.0


# ---- stage 3, lens_mode deflector ----------------------------------------------------------------

CONF = REPO_ROOT / "conf" / "injection_priors.yaml"


def _bank(n=300, seed=1):
    rng = np.random.default_rng(seed)
    return manifest.BankSources(size=n, zphot=rng.uniform(0.2, 3.0, n), mag_r=rng.uniform(22.5, 25.5, n),
                                cosmology=COSMO)


def _hosts(n=2000, seed=2):
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    z_l = rng.uniform(0.3, 0.8, n)
    abs_mag = rng.uniform(-23.8, -21.5, n)   # LRG-like luminosities -> apparent r through the same K and DM
    mag_r = abs_mag + get_cosmology(COSMO).distmod(z_l).value + red_galaxy.k_correction_r(z_l)
    return pd.DataFrame({"target_id": [f"h{k}" for k in i], "ra": i * 0.01, "dec": 0.0, "brickname": "x",
                         "split": "train", "psf_fwhm_g": 1.3, "psf_fwhm_r": 1.2, "psf_fwhm_z": 1.1,
                         "mag_r": mag_r, "z_l": z_l, "zl_source": "colour_estimate",
                         "shape_e1": rng.normal(0, 0.15, n), "shape_e2": rng.normal(0, 0.15, n)})


@pytest.fixture(scope="module")
def drawn():
    raw = yaml.safe_load(CONF.read_text())
    raw["configs"] = [{"name": "cosmos"}]
    plan = priors.parse_config(raw, "t")
    bank, hosts = _bank(), _hosts()
    tasks = manifest.build_tasks(hosts, plan, bank, manifest.config_hashes(plan, bank), "v")
    inj = tasks[~tasks["is_control"]].merge(hosts[["target_id", "shape_e1", "shape_e2", "mag_r"]],
                                             on="target_id", suffixes=("", "_host"))
    return inj, bank, plan


def test_deflector_tasks_follow_their_hosts(drawn):
    inj, bank, plan = drawn
    f = lambda c: inj[c].to_numpy(dtype=float)  # noqa: E731
    d = plan.configs[0].deflector
    # every drawn quantity is in the row, and theta_E is the SIS radius of the row's sigma, z_l and z_s
    np.testing.assert_allclose(f("theta_e"), dfl.sis_theta_e(f("sigma_v"), f("z_l"), f("src_z"), COSMO), rtol=1e-12)
    idx = inj["src_index"].to_numpy(dtype=int)
    np.testing.assert_array_equal(f("src_z"), bank.zphot[idx])          # the galaxy's own redshift ...
    np.testing.assert_array_equal(f("src_mag_r"), bank.mag_r[idx])      # ... and brightness
    assert (f("src_z") >= f("z_l") + d.min_source_dz).all()
    # sigma about the Faber-Jackson mean: log-normal, 0.1 dex, shifted by the cross-section weighting
    mean = np.log10(dfl.faber_jackson_sigma(f("host_abs_mag_r"), f("z_l"), **PARKER))
    resid = np.log10(f("sigma_v")) - mean - 4 * np.log(10) * d.scatter_dex ** 2
    assert abs(resid.mean()) < 0.01 and resid.std() == pytest.approx(d.scatter_dex, rel=0.08)
    assert stats.kstest(resid / d.scatter_dex, "norm").pvalue > 1e-3
    # brighter hosts make bigger Einstein radii
    rho = stats.spearmanr(-f("host_abs_mag_r"), f("theta_e")).statistic
    print(f"Spearman(luminosity, theta_E) = {rho:.2f}; theta_E median {np.median(f('theta_e')):.2f}\"")
    assert rho > 0.3
    # mass follows light: the light's shape in the stamp frame, scattered as configured
    q, phi = dfl.tractor_to_stamp(f("shape_e1"), f("shape_e2"))
    np.testing.assert_allclose(f("light_q"), q)
    np.testing.assert_allclose(f("light_phi"), phi)
    dphi = (f("lens_phi") - phi + np.pi / 2) % np.pi - np.pi / 2
    assert np.degrees(dphi).std() == pytest.approx(d.lens_pa_scatter_deg, rel=0.1)
    dq = f("lens_q") - q
    inside = (q > 0.35) & (q < 0.85)
    assert dq[inside].std() == pytest.approx(d.lens_q_scatter, rel=0.1)
    assert (inj["zl_source"] == "colour_estimate").all()


def test_sources_reach_the_caustic(drawn):
    """Uniform in source-plane area up to the SIS caustic (1 theta_E), not kept well inside it."""
    inj, _, plan = drawn
    beta = np.hypot(inj["src_x"].astype(float), inj["src_y"].astype(float)) / inj["theta_e"].astype(float)
    rmax = plan.configs[0].r_max_over_theta_e
    assert rmax >= 1 and stats.kstest(beta, lambda x: np.clip(x / rmax, 0, 1) ** 2).pvalue > 1e-3
    assert (beta > 0.9 * rmax).mean() == pytest.approx(1 - 0.81, abs=0.03)   # the near-caustic ring


def test_sources_behind_the_lens_are_drawn_by_their_cross_section():
    """With cross_section_weighting a galaxy behind a z_l = 0.5 lens is drawn with probability
    proportional to (D_ls / D_s)^2 (astropy distances), never one in front."""
    raw = yaml.safe_load(CONF.read_text())
    raw["configs"] = [{"name": "cosmos"}]
    plan = priors.parse_config(raw, "t")
    z = np.array([0.3, 0.55, 0.7, 1.0, 1.5, 2.5])
    bank = manifest.BankSources(size=6, zphot=z, mag_r=np.full(6, 24.0), cosmology=COSMO)
    hosts = _hosts(6000)
    hosts["z_l"] = 0.5
    inj = manifest.build_tasks(hosts, plan, bank, manifest.config_hashes(plan, bank), "v")
    counts = np.bincount(inj.loc[~inj["is_control"], "src_index"].astype(int), minlength=6)
    c = get_cosmology(COSMO)
    w = np.array([(c.angular_diameter_distance_z1z2(0.5, zs) / c.angular_diameter_distance(zs)).value ** 2
                  if zs >= 0.6 else 0.0 for zs in z])
    assert counts[:2].sum() == 0
    expected = w / w.sum() * counts.sum()
    print("drawn", counts[2:], "expected", expected[2:].round(0))
    assert stats.chisquare(counts[2:], expected[2:]).pvalue > 1e-3
    assert stats.chisquare(counts[2:]).pvalue < 1e-6            # not uniform


def test_no_galaxy_behind_the_lens_leaves_named_nulls():
    raw = yaml.safe_load(CONF.read_text())
    raw["configs"] = [{"name": "cosmos"}]
    plan = priors.parse_config(raw, "t")
    bank = manifest.BankSources(size=3, zphot=np.array([0.3, 0.4, 0.5]), mag_r=np.array([24.0, 24.5, 25.0]),
                                cosmology=COSMO)
    hosts = _hosts(4)
    hosts["z_l"] = [0.2, 0.35, 0.6, 0.9]
    inj = manifest.build_tasks(hosts, plan, bank, manifest.config_hashes(plan, bank), "v")
    inj = inj[~inj["is_control"] & (inj["replicate"] == 0)].set_index("target_id").loc[hosts["target_id"]]
    assert inj["src_index"].isna().tolist() == [False, False, True, True]
    assert inj["theta_e"].isna().tolist() == [False, False, True, True]
    assert (inj["src_z"].dropna() >= np.array([0.3, 0.45])).all()


def test_moved_sources_take_the_prior_redshift_above_the_lens(drawn):
    raw = yaml.safe_load(CONF.read_text())
    raw["configs"] = [{"name": "moved", "src_redshift": "prior", "src_brightness": "prior"}]
    plan = priors.parse_config(raw, "t")
    bank, hosts = _bank(), _hosts(1500)
    inj = manifest.build_tasks(hosts, plan, bank, manifest.config_hashes(plan, bank), "v")
    inj = inj[~inj["is_control"]]
    lo = hosts.set_index("target_id").loc[inj["target_id"], "z_l"].to_numpy() + 0.1
    z = inj["src_z"].to_numpy(float)
    assert (z >= lo).all() and (z <= 3.0).all()
    # conditional on z_l, the prior U(1, 3) truncated below at max(1, z_l + 0.1): the PIT is uniform
    pit = (z - np.maximum(lo, 1.0)) / (3.0 - np.maximum(lo, 1.0))
    assert stats.kstest(pit, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["configs"][0].update(theta_e={"dist": "fixed", "value": 1.0}),
     r"configs\[0\].theta_e: not used with lens_mode deflector"),
    (lambda r: r["defaults"].pop("lens_mode"), r"defaults.lens_mode: missing required key"),
    (lambda r: r["defaults"]["deflector"].pop("scatter_dex"), r"defaults.deflector.scatter_dex: missing required key"),
    (lambda r: r["defaults"]["deflector"].update(sigma=1), r"defaults.deflector.sigma: unknown key"),
    (lambda r: r["defaults"].update(src_redshift="mine"), r"defaults.src_redshift: must be one of own, prior"),
])
def test_deflector_config_errors_name_the_key(edit, message):
    raw = yaml.safe_load(CONF.read_text())
    edit(raw)
    with pytest.raises(ConfigError, match=message):
        priors.parse_config(raw, "p.yaml")


def test_stage3_refuses_deflector_mode_without_a_bank():
    plan = priors.load_config(str(CONF))
    with pytest.raises(Exception, match=r"--bank PATH must give the source bank"):
        manifest.bank_sources_of(plan, None, str(CONF))
    uniform = copy.deepcopy(yaml.safe_load(CONF.read_text()))
    uniform["defaults"].update(lens_mode="uniform", src_redshift="prior", src_brightness="prior",
                               theta_e={"dist": "uniform", "low": 0.8, "high": 2.5},
                               lens_q={"dist": "uniform", "low": 0.5, "high": 1.0})
    plan_u = priors.parse_config(uniform, "u")
    assert manifest.bank_sources_of(plan_u, None, "u")[0].size == uniform["bank_size"]
