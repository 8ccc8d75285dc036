"""Fitted SEDs (udfs.sources.sed) against GalSim's own SED redshifting and astropy's distances; the
F814W-only route; stage 5's re-colouring of a source moved to another redshift."""
from __future__ import annotations

import os

import galsim
import numpy as np
import pandas as pd
import pytest

from udfs.sources import bank_photometry, colours, sed
from udfs.sources.bank import BankError
from udfs.sources.cosmology import get_cosmology
from udfs.sources.cosmos_catalog import CosmosCatalog
from udfs.stamps.inject import _source_mags

COSMO = "Planck18"


def _galsim_bandpass(name: str) -> galsim.Bandpass:
    if name == sed.ACS_F814W:  # GalSim's own file, in nm: independent of our speclite wrapper
        return galsim.Bandpass("ACS_wfc_F814W.dat", wave_type="nm").withZeropoint("AB")
    import speclite.filters

    curve = speclite.filters.load_filter(name)
    return galsim.Bandpass(galsim.LookupTable(curve.wavelength, curve.response, interpolant="linear"),
                           wave_type="Ang").withZeropoint("AB")


def _galsim_mags(weights: dict[str, float], z: float, filters) -> np.ndarray:
    """GalSim: sum of CWW template files (each normalised at rest 5500 A like our basis), at z."""
    total = None
    for name, w in weights.items():
        s = galsim.SED(os.path.join(galsim.meta_data.share_dir, "SEDs", f"{name}.sed"), "Angstrom", "flambda")
        s = s * (w / s(sed.NORM_WAVELENGTH / 10.0))   # GalSim evaluates SEDs at nm
        total = s if total is None else total + s
    total = total.atRedshift(z)
    return np.array([total.calculateMagnitude(_galsim_bandpass(f)) for f in filters])


@pytest.mark.parametrize("z", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("weights", [{"CWW_E_ext": 1.0}, {"CWW_Scd_ext": 1.0}, {"CWW_Im_ext": 1.0},
                                     {"CWW_Sbc_ext": 0.3, "CWW_Im_ext": 0.7}])
def test_recolouring_matches_galsim_redshifted_sed(z, weights):
    """magnitudes_at colours g-r, r-z equal GalSim's SED.atRedshift + calculateMagnitude (AB) to
    0.01 mag for single templates and a flux mixture (fails if wavelengths are not stretched, if
    the coefficients combine magnitudes instead of fluxes, or the basis is mis-normalised)."""
    coeff = np.array([[weights.get(t, 0.0) * 1e8 for t in colours.TEMPLATES]])
    got = sed.magnitudes_at(coeff, np.array([z]), COSMO)[0]
    want = _galsim_mags(weights, z, colours.DECAM_FILTERS)
    assert abs((got[0] - got[1]) - (want[0] - want[1])) < 0.01
    assert abs((got[1] - got[2]) - (want[1] - want[2])) < 0.01
    # and the moved colours really change with z (a test that passes with z ignored is no test)
    other = sed.magnitudes_at(coeff, np.array([0.1]), COSMO)[0]
    assert np.abs(np.diff(other) - np.diff(got)).max() > 0.2


def test_template_magnitudes_match_speclite_on_the_same_spectrum():
    """Our vectorised integration = speclite's get_ab_magnitudes of the same redshifted, dimmed
    spectrum, to 2e-3 mag, in DECam, HSC and the registered ACS F814W (speclite integrates on the
    template's own ~40 A grid, we on a 5 A grid; ours moves by < 1e-5 mag at 1 A)."""
    import astropy.units as u
    import speclite.filters

    filters = colours.DECAM_FILTERS + colours.HSC_FILTERS + (sed.ACS_F814W,)
    wave, flam = sed.basis()
    for z in (0.3, 1.4):
        dim = (1e-5 / get_cosmology(COSMO).luminosity_distance(z).to_value("Mpc")) ** 2 / (1 + z)
        got = sed.sed_mags(np.array([[0.0, 2e8, 0.0, 0.0]]), np.array([z]), filters, COSMO)[0]
        table = speclite.filters.load_filters(*filters).get_ab_magnitudes(
            2e8 * flam[1] * dim * u.erg / (u.cm ** 2 * u.s * u.AA), wave * (1 + z) * u.AA)
        np.testing.assert_allclose(got, [table[c][0] for c in table.colnames], atol=2e-3)


def test_distance_dimming_matches_astropy_distance_modulus():
    """A flat-F_nu SED of absolute AB magnitude M at 10 pc, seen at z: m = M + DM(z) - 2.5 log10(1+z)
    (F_nu,obs = (1+z) L_nu / (4 pi D_L^2)); so m(z2) - m(z1) = DM(z2) - DM(z1) - 2.5 log10((1+z2)/(1+z1)).
    Both to 1e-3 mag against astropy's distmod (fails with D_A instead of D_L, or a wrong (1+z) power)."""
    cosmo = get_cosmology(COSMO)
    wave = np.geomspace(100.0, 40000.0, 4000)
    m_abs = -20.0
    flam10 = 10 ** (-0.4 * m_abs) * sed.AB_FNU * sed.C_ANGSTROM_S / wave ** 2
    z = np.array([0.5, 1.0, 2.0])
    m = -2.5 * np.log10(sed.observed_maggies(wave, flam10, z, ("decam2014-r", "decam2014-z"), COSMO)[:, 0, :])
    want = m_abs + cosmo.distmod(z).value - 2.5 * np.log10(1 + z)
    np.testing.assert_allclose(m, np.repeat(want[:, None], 2, axis=1), atol=1e-3)
    diff = m[2, 0] - m[0, 0]
    assert abs(diff - (cosmo.distmod(2.0).value - cosmo.distmod(0.5).value - 2.5 * np.log10(3.0 / 1.5))) < 1e-3


@pytest.mark.parametrize("n_sersic, name", [(1.0, "CWW_Scd_ext"), (2.0, "CWW_Sbc_ext"), (4.0, "CWW_E_ext")])
def test_f814w_only_galaxy_gets_template_r_minus_f814w(n_sersic, name):
    """No photometry: r = F814W + (r - F814W) of the Sersic-n template at zphot, the colour checked
    against GalSim (its own ACS file, nm) to 0.01 mag; F814W of the fitted SED = the catalogue MAG."""
    z, f814 = np.array([0.4, 1.1]), np.array([22.0, 24.5])
    cat = CosmosCatalog(directory="-", file_name="-", name="-", main=np.zeros(0), params=None, selection=None)
    meta = {"catalog_index": np.arange(2), "zphot": z, "sersic_n": np.full(2, n_sersic), "mag_f814w": f814}
    cols = bank_photometry.sed_columns(meta, cat, None, COSMO)
    assert list(cols["colour_source"]) == ["cww_template"] * 2 and list(cols["zphot_source"]) == ["catalogue"] * 2
    np.testing.assert_allclose(sed.sed_mags(cols["sed_coeff"], z, (sed.ACS_F814W,), COSMO)[:, 0], f814, atol=1e-9)
    assert np.count_nonzero(cols["sed_coeff"], axis=1).tolist() == [1, 1]
    assert cols["sed_coeff"][0, colours.TEMPLATES.index(name)] > 0
    for k in range(2):
        r, acs = _galsim_mags({name: 1.0}, z[k], ("decam2014-r", sed.ACS_F814W))
        assert abs((cols["mag_r"][k] - f814[k]) - (r - acs)) < 0.01
    np.testing.assert_allclose(cols["g_r"], cols["mag_g"] - cols["mag_r"], atol=1e-12)


def test_fit_recovers_an_sed_and_moves_it():
    """Magnitudes made from a known SED through HSC are fitted back (model mags within 1e-4) and the
    fit predicts the DECam magnitudes at another z within 0.01 mag."""
    truth = np.array([[3e7, 0.0, 5e7, 2e7], [0.0, 8e8, 0.0, 1e8]])
    z = np.array([0.7, 1.3])
    mags = sed.sed_mags(truth, z, colours.HSC_FILTERS, COSMO)
    fit = sed.fit_sed(mags, colours.HSC_FILTERS, z, COSMO)
    np.testing.assert_allclose(sed.sed_mags(fit, z, colours.HSC_FILTERS, COSMO), mags, atol=1e-4)
    np.testing.assert_allclose(sed.magnitudes_at(fit, z + 0.8, COSMO), sed.magnitudes_at(truth, z + 0.8, COSMO),
                               atol=0.01)
    mags[0, 4] = np.nan  # a missing band is ignored, not fitted as zero flux
    assert np.isfinite(sed.fit_sed(mags, colours.HSC_FILTERS, z, COSMO)).all()


def _bank_meta(with_sed=True):
    coeff = np.array([[0.0, 1e8, 0.0, 0.0], [0.0, 0.0, 0.0, 1e8]])
    meta = {"g_r": np.array([0.9, 0.3]), "r_z": np.array([0.8, 0.2]), "zphot": np.array([0.6, 1.2])}
    if with_sed:
        meta["sed_coeff"] = coeff
    return meta, coeff


def test_stage5_keeps_bank_colours_as_they_are_and_recolours_moved_sources():
    meta, coeff = _bank_meta()
    idx = np.array([0, 1, 0, 1])
    rows = pd.DataFrame({"task_id": list("abcd"), "src_mag_r": [22.0, 23.0, 22.5, 24.0],
                         "src_z": [0.6, np.float32(1.2), 1.5, 2.5]})   # float32 round trip is no move
    mags = _source_mags(rows, meta, idx, COSMO)
    np.testing.assert_array_equal(mags["r"], rows["src_mag_r"].to_numpy())
    np.testing.assert_allclose(mags["g"][:2] - mags["r"][:2], [0.9, 0.3], atol=0)
    np.testing.assert_allclose(mags["r"][:2] - mags["z"][:2], [0.8, 0.2], atol=0)
    at = sed.magnitudes_at(coeff[[0, 1]], np.array([1.5, 2.5]), COSMO)
    np.testing.assert_allclose(mags["g"][2:] - mags["r"][2:], at[:, 0] - at[:, 1], atol=1e-12)
    np.testing.assert_allclose(mags["r"][2:] - mags["z"][2:], at[:, 1] - at[:, 2], atol=1e-12)
    at_home = sed.magnitudes_at(coeff[[0]], meta["zphot"][[0]], COSMO)[0]
    assert abs((mags["g"][2] - mags["r"][2]) - (at_home[0] - at_home[1])) > 0.2   # src_z, not zphot, was used


def test_stage5_refuses_old_bank_only_for_moved_tasks():
    meta, _ = _bank_meta(with_sed=False)
    here = pd.DataFrame({"task_id": ["a"], "src_mag_r": [22.0], "src_z": [0.6]})
    assert _source_mags(here, meta, np.array([0]), COSMO)["g"][0] == pytest.approx(22.9)
    moved = pd.DataFrame({"task_id": ["a", "b"], "src_mag_r": [22.0, 22.0], "src_z": [0.6, 2.0]})
    with pytest.raises(BankError, match=r"lacks column 'sed_coeff'.*task b"):
        _source_mags(moved, meta, np.array([0, 0]), COSMO)
