"""PSF at the target from the survey's own CCD PSFEx models, on the real testcase6 patch."""
from pathlib import Path

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from udfs.survey import psf_stack as ps

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "legacysurvey"
PATCH = DATA / "dr9_ccds_testcase6"
COADD = DATA / "coadd_1102p240_z"
CCDS = str(PATCH / "survey-ccds-1.fits.gz")
CALIB = str(PATCH / "calib")
DEV = (110.30856, 23.91679)

pytestmark = pytest.mark.skipif(not PATCH.exists(), reason="real testcase6 patch not present")


@pytest.fixture(scope="module")
def stacks():
    return {b: ps.psf_at_target(CCDS, CALIB, *DEV, b) for b in "grz"}


def test_z_stack_at_the_dev_galaxy(stacks):
    kernel, source, record = stacks["z"]
    k = kernel.shape[0]
    assert len(record["ccds"]) >= 1 and source == f"psfex_stack:{len(record['ccds'])} ccds"
    assert kernel.dtype == np.float32 and k % 2 == 1 and kernel.shape == (k, k)
    assert abs(kernel.sum(dtype=np.float64) - 1) < 1e-6
    mx, my = ps._moments(kernel.astype(np.float64))
    assert abs(mx) < 0.05 and abs(my) < 0.05
    wide, _, _ = ps.psf_at_target(CCDS, CALIB, *DEV, "z", flux_fraction=0.99999)
    c, h = wide.shape[0] // 2, k // 2
    held = wide[c - h: c + h + 1, c - h: c + h + 1].sum(dtype=np.float64)
    held_smaller = wide[c - h + 1: c + h, c - h + 1: c + h].sum(dtype=np.float64)
    assert held >= 0.995 - 1e-4 and held_smaller < 0.995 + 1e-4
    assert all(e["wcs_source"] == "header TPV" for e in record["ccds"])
    assert record["bytes_read"] == sum(e["bytes"] for e in record["files"]) > 0
    print(f"\nz: K={k} moments=({mx:+.4f},{my:+.4f}) held={held:.4f} ccds={len(record['ccds'])} "
          f"bytes={record['bytes_read']} files={len(record['files'])}")


def test_wings_match_the_individual_models(stacks):
    for band, (kernel, _, record) in stacks.items():
        fwhm = ps.fwhm_pixels(kernel)
        stack_wing = ps.flux_beyond(kernel, 2 * fwhm)
        singles = []
        for e in record["ccds"]:
            row = Table.read(CCDS)
            row = row[[ps._strip(n) == e["image_filename"] for n in row["image_filename"]]][0]
            model = ps.read_psfex_model(ps.psfex_uri(CALIB, row["image_filename"]), e["ccdname"])
            cov = ps.covering_ccds(Table(row), *DEV, band, str(PATCH / "images"))[0]
            img = ps.ccd_psf_on_coadd(model, e["x"], e["y"], np.asarray(cov["jac"]), 69)
            singles.append(ps.flux_beyond(img, 2 * ps.fwhm_pixels(img)))
        ref = float(np.mean(singles))
        gauss = galsim.Gaussian(fwhm=fwhm).drawImage(nx=69, ny=69, scale=1.0, method="no_pixel").array
        print(f"\n{band}: FWHM={fwhm * 0.262:.3f}\" K={kernel.shape[0]} ccds={len(record['ccds'])} "
              f"bytes={record['bytes_read']} beyond 2FWHM: stack={stack_wing:.4f} "
              f"models={np.round(singles, 4).tolist()} gaussian={ps.flux_beyond(gauss, 2 * fwhm):.1e}")
        assert 0.02 < stack_wing and abs(stack_wing / ref - 1) < 0.20


def test_missing_psfex_file_and_no_covering_ccd_are_input_errors(tmp_path):
    with pytest.raises(ps.PSFStackError, match="psfex"):
        ps.psf_at_target(CCDS, str(tmp_path / "calib"), *DEV, "z", image_root=str(PATCH / "images"))
    with pytest.raises(ps.PSFStackError, match="no CCD in band z"):
        ps.psf_at_target(CCDS, CALIB, 120.0, 10.0, "z")
    with pytest.raises(ps.PSFStackError, match="no-such"):
        ps.psf_at_target(str(tmp_path / "no-such.fits"), CALIB, *DEV, "z")
    assert issubclass(ps.PSFStackError, ps.InputError)


def test_table_tan_misses_the_tpv_position_on_decam():
    tan = ps.covering_ccds(CCDS, *DEV, "z")
    tpv = ps.covering_ccds(CCDS, *DEV, "z", str(PATCH / "images"))
    assert len(tpv) == 2 and len(tan) < len(tpv)  # the table's TAN puts S9 off its cutout


def _profile(img, cx, cy, rmax=8):
    yy, xx = np.indices(img.shape, dtype=float)
    r = np.hypot(xx - cx, yy - cy).astype(int)
    return np.array([img[r == i].mean() for i in range(rmax)])


def test_stack_matches_the_coadd_profile_better_than_a_gaussian(stacks):
    """The REX galaxy (the brightest compact source, mid-stamp) in the z coadd: Tractor's
    exponential convolved with each PSF, flux and sky fitted, radial-profile residuals compared."""
    image = fits.getdata(COADD / "legacysurvey-1102p240-image-z.fits.fz").astype(np.float64)
    wcs = WCS(fits.getheader(COADD / "legacysurvey-1102p240-image-z.fits.fz", 1))
    cat = Table.read(COADD / "tractor-1102p240.fits")
    src = cat[[ps._strip(t) == "REX" for t in cat["type"]]][0]
    cx, cy = (float(v) for v in wcs.all_world2pix(src["ra"], src["dec"], 0))
    kernel = stacks["z"][0].astype(np.float64)
    fwhm = ps.fwhm_pixels(kernel)
    gal = galsim.Exponential(half_light_radius=max(float(src["shapeExp_r"]), 1e-3) / 0.262)
    n = image.shape[0]
    obs = _profile(image, cx, cy)
    resid = {}
    for name, psf in (("stack", galsim.InterpolatedImage(galsim.Image(kernel, scale=1.0))),
                      ("gaussian", galsim.Gaussian(fwhm=fwhm))):
        off = galsim.PositionD(cx - (n - 1) / 2, cy - (n - 1) / 2)
        model = galsim.Convolve(gal, psf).drawImage(nx=n, ny=n, scale=1.0, offset=off,
                                                    method="no_pixel").array
        prof = _profile(model, cx, cy)
        a = np.vstack([prof, np.ones_like(prof)]).T
        coef = np.linalg.lstsq(a, obs, rcond=None)[0]
        resid[name] = float(np.sqrt(np.mean((a @ coef - obs) ** 2)) / obs[0])
    print(f"\nREX z profile rms residual / peak: stack={resid['stack']:.4f} "
          f"gaussian={resid['gaussian']:.4f} (FWHM {fwhm * 0.262:.3f}\")")
    assert resid["stack"] < resid["gaussian"]
