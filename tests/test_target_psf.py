"""The PSF chosen per target (udfs.survey.target_psf): stack, Moffat fallback, and the default beta."""
import galsim
import numpy as np
import pytest
from astropy.table import Table
from scipy import optimize

from udfs.config.checker import ConfigError
from udfs.survey import psf_stack as ps
from udfs.survey.psf import psfex_kernel
from udfs.survey.target_psf import DEFAULT_MOFFAT_BETA, BrickPSF, PSFConfig

DEV = (110.30856, 23.91679)


@pytest.fixture(scope="module")
def patch(data_root):
    ls = data_root / "legacysurvey"
    if not (ls / "dr9_ccds_testcase6").exists():
        pytest.skip("real testcase6 patch not present")
    return ls


def _moffat_beta(kernel: np.ndarray) -> float:
    n = kernel.shape[0]

    def resid(p):
        m = galsim.Moffat(beta=p[1], fwhm=p[0]).drawImage(nx=n, ny=n, scale=0.262, method="no_pixel").array
        return (m / m.sum() - kernel).ravel()
    return float(optimize.least_squares(resid, [1.2, 3.0], bounds=([0.3, 1.1], [4.0, 20.0])).x[1])


def test_default_beta_is_the_median_of_the_real_psfex_models(patch):
    """Moffat fits to the 14 real DECam PSFEx models of the sample data: median 3.12, 2.65-4.02."""
    files = sorted((patch / "psfex").glob("*.fits")) + sorted((patch / "dr9_ccds_testcase6").rglob("*-psfex.fits"))
    assert len(files) == 14
    betas = [_moffat_beta(psfex_kernel(str(f), None, None, 0.262, size=63)) for f in files]
    print(f"\nMoffat beta of the real models: median {np.median(betas):.3f}, range {min(betas):.2f}-{max(betas):.2f}")
    assert abs(np.median(betas) - DEFAULT_MOFFAT_BETA) < 0.1
    assert min(betas) > 2.5 and max(betas) < 4.2


def test_missing_table_falls_back_with_the_reason(tmp_path, patch):
    maker = BrickPSF(PSFConfig(), str(tmp_path / "none-ccds.fits"), str(patch / "dr9_ccds_testcase6" / "calib"))
    kernels, sources = maker.at(*DEV, "gz", {"g": 1.4, "z": 1.1})
    assert sources == [f"moffat:fwhm=psfsize,beta=3.10 (default); no stack: no CCD table {tmp_path / 'none-ccds.fits'}"] * 2
    k = kernels.shape[-1]
    assert kernels.shape == (2, k, k) and kernels.dtype == np.float32
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 1.0, atol=1e-6)
    fwhm = [ps.fwhm_pixels(kernels[i].astype(float)) * 0.262 for i in range(2)]
    np.testing.assert_allclose(fwhm, [1.4, 1.1], rtol=0.03)
    assert ps.flux_beyond(kernels[1].astype(float), 2 * fwhm[1] / 0.262) > 0.02   # Moffat: 0.034 - the 0.005 cropped


def test_beta_from_the_ccd_table_where_it_has_one(tmp_path, patch):
    table = Table.read(patch / "dr9_ccds_testcase6" / "survey-ccds-1.fits.gz")
    table["moffat_beta"] = np.where([f.strip() == "z" for f in table["filter"]], 2.5, 4.0)
    uri = str(tmp_path / "ccds.fits")
    table.write(uri)
    maker = BrickPSF(PSFConfig(model="moffat", images_base=str(patch / "dr9_ccds_testcase6" / "images")), uri,
                     str(tmp_path / "no-calib"))
    _, sources = maker.at(*DEV, "z", {"z": 1.1})
    assert sources == ["moffat:fwhm=psfsize,beta=2.50 (ccds table, 2 ccds); configured"]


def test_bands_share_one_padded_size_and_the_stack_is_per_target(patch):
    d = patch / "dr9_ccds_testcase6"
    maker = BrickPSF(PSFConfig(), str(d / "survey-ccds-1.fits.gz"), str(d / "calib"))
    kernels, sources = maker.at(*DEV, "grz", {b: 1.2 for b in "grz"})
    assert sources == ["psfex_stack:2 ccds"] * 3
    for i, b in enumerate("grz"):
        own, _, _ = ps.psf_at_target(str(d / "survey-ccds-1.fits.gz"), str(d / "calib"), *DEV, b)
        k, c = own.shape[0], (kernels.shape[-1] - own.shape[0]) // 2
        np.testing.assert_allclose(kernels[i][c:c + k, c:c + k], own, atol=1e-6)
        assert kernels[i].sum(dtype=np.float64) - kernels[i][c:c + k, c:c + k].sum(dtype=np.float64) < 1e-6
    n_files = len(maker.files_read())
    maker.at(DEV[0] + 0.001, DEV[1], "grz", {b: 1.2 for b in "grz"})
    assert len(maker.files_read()) == n_files, "a brick's files are read once"


@pytest.mark.parametrize("kw, flag", [({"model": "airy"}, "--psf-model"), ({"moffat_beta": 1.0}, "--moffat-beta"),
                                      ({"flux_fraction": 1.0}, "--psf-flux-fraction")])
def test_bad_settings_name_the_flag(kw, flag):
    with pytest.raises(ConfigError, match=flag):
        PSFConfig(**kw).validate()
