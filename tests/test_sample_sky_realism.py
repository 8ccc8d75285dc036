"""The demo's stand-in sky against the survey's own files: the real z coadd's noise texture, sources
drawn with a real PSFEx model, the sources' own shot noise, headers that say so, byte-identical reruns.

Reference figures: the real coadd legacysurvey-1102p240-image-z (obiwan testcase6) measures a
neighbour-pixel noise correlation of 0.145 with :mod:`udfs.survey.noise_texture`; the rendered sky
must match it within 0.02 (issue 15), where white noise measures ~0.
"""
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from udfs.survey.bricks import PIXSCALE_ARCSEC, brick_from_name, coadd_wcs_header
from udfs.survey.coadd_cutouts import CutoutConfig, cut_brick
from udfs.survey.coadd_files import brick_file
from udfs.survey.noise_texture import texture_of_coadd
from udfs.survey.psf import psfex_kernel
from udfs.survey.psf_stack import crop_to_fraction, psf_at_target
from udfs.survey.sample_sky import read_catalogs, render_brick, write_sky_for_brick
from udfs.survey.shot_noise import gain_estimate
from udfs.survey.sky_ccds import PseudoCCD

BRICK = "3301m002"
SECTION = (1700, 1700, 300, 300)
PSFEX_Z = "c4d_180218_090701_ooi_z_ls9-N10-psfex.fits"


@pytest.fixture(scope="module")
def texture(data_root):
    folder = data_root / "legacysurvey" / "coadd_1102p240_z"
    t = texture_of_coadd(str(folder / "legacysurvey-1102p240-image-z.fits.fz"),
                         str(folder / "legacysurvey-1102p240-invvar-z.fits.fz"))
    return {**t.as_dict(), "source": "legacysurvey-1102p240-image-z.fits.fz"}


@pytest.fixture(scope="module")
def depth_row(data_root):
    """One real DR8 Tractor row of the brick: its PSFDEPTH/GALDEPTH set the sky's depth."""
    cat = read_catalogs([str(data_root / "legacysurvey" / "dr8_tractor" / f"tractor-{BRICK}.fits")])
    return cat[cat.objid == 15].assign(flux_g=0.0, flux_r=0.0, flux_z=0.0, ra=0.0)  # off the section


def _with_source(depth_row, kind: str, flux: float, **shape) -> pd.DataFrame:
    b = brick_from_name(BRICK)
    x0, y0, nx, ny = SECTION
    src = depth_row.assign(type=kind, objid=999, flux_z=flux, ra=b.ra, dec=b.dec, **shape)
    return pd.concat([depth_row, src], ignore_index=True)


def test_rendered_noise_has_the_real_coadds_texture_and_its_variance(depth_row, texture):
    assert 0.1 < texture["neighbour"] < 0.3  # the real coadd is correlated (white noise: ~0)
    b = brick_from_name(BRICK)
    textured = render_brick(b, depth_row, SECTION, bands="z", texture=texture)
    white = render_brick(b, depth_row, SECTION, bands="z")
    measured = texture_of_coadd(textured["images"]["z"], textured["invvars"]["z"])
    assert measured.neighbour == pytest.approx(texture["neighbour"], abs=0.02)
    assert abs(texture_of_coadd(white["images"]["z"], white["invvars"]["z"]).neighbour) < 0.03
    # invvar keeps its meaning: 1/variance per pixel, the same with and without the texture
    np.testing.assert_array_equal(textured["invvars"]["z"], white["invvars"]["z"])
    whitened = textured["images"]["z"] * np.sqrt(textured["invvars"]["z"])
    assert np.std(whitened) == pytest.approx(1.0, abs=0.03)


def test_sources_are_drawn_with_the_psfex_model_and_its_wings(data_root, depth_row):
    psfex = str(data_root / "legacysurvey" / "psfex" / PSFEX_Z)
    cat = _with_source(depth_row, "PSF", 2e5)  # a bright star: its noise is negligible here
    b = brick_from_name(BRICK)
    fractions = {}
    for name, opts in (("psfex", {"psfex": {"z": psfex}}), ("gaussian", {})):
        out = render_brick(b, cat, SECTION, bands="z", **opts)
        img = out["images"]["z"].astype(float)
        fwhm = out["psf_fwhm"]["z"]
        iy, ix = np.unravel_index(np.argmax(img), img.shape)
        yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
        r = np.hypot(xx - ix, yy - iy) * PIXSCALE_ARCSEC
        inside = r < 15.0
        fractions[name] = img[inside & (r > 2 * fwhm)].sum() / img[inside].sum()
        assert out["psf_source"]["z"] == (PSFEX_Z if name == "psfex" else "gaussian")
    kernel = psfex_kernel(psfex, None, None, PIXSCALE_ARCSEC)
    k = kernel.shape[0]
    kr = np.hypot(*(np.mgrid[:k, :k] - (k - 1) / 2)) * PIXSCALE_ARCSEC
    ref_fwhm = render_brick(b, cat, SECTION, bands="z", psfex={"z": psfex})["psf_fwhm"]["z"]
    reference = kernel[kr > 2 * ref_fwhm].sum() / kernel.sum()
    assert reference > 0.03  # the real model's wings (4-11% of the flux beyond 2 x FWHM)
    assert fractions["psfex"] == pytest.approx(reference, rel=0.15)
    assert fractions["gaussian"] < 0.2 * reference


def test_rendered_sources_carry_their_own_shot_noise(depth_row):
    cat = _with_source(depth_row, "EXP", 2e4, shapeexp_r=2.0, shapeexp_e1=0.0, shapeexp_e2=0.0)
    b = brick_from_name(BRICK)
    a, c = (render_brick(b, cat, SECTION, bands="z", seed=s) for s in (0, 1))
    ivar = a["invvars"]["z"]
    sigma2 = 1.0 / ivar[0, 0]
    gain = gain_estimate(ivar, "z", PIXSCALE_ARCSEC)
    assert a["gain"]["z"] == pytest.approx(gain)
    model = (a["images"]["z"].astype(float) + c["images"]["z"]) / 2
    bright = model / gain > 3 * sigma2  # shot noise dominates the sky noise here
    assert bright.sum() > 100
    half_var = ((a["images"]["z"].astype(float) - c["images"]["z"]) ** 2 / 2)[bright].mean()
    assert half_var == pytest.approx((sigma2 + model[bright] / gain).mean(), rel=0.1)
    sky = model / gain < 0.01 * sigma2
    assert ((a["images"]["z"].astype(float) - c["images"]["z"]) ** 2 / 2)[sky].mean() == pytest.approx(sigma2, rel=0.05)


def test_sky_files_record_psf_and_noise_and_rerun_byte_identical(data_root, depth_row, texture, tmp_path):
    psfex = {"z": str(data_root / "legacysurvey" / "psfex" / PSFEX_Z)}
    cat = _with_source(depth_row, "PSF", 50.0)
    b = brick_from_name(BRICK)
    runs = [write_sky_for_brick(str(tmp_path / name), BRICK, [b.ra], [b.dec], cat, bands="z", psfex=psfex,
                                texture=texture) for name in ("a", "b")]
    assert runs[0]["noise_neighbour_correlation"] == texture["neighbour"]
    with fits.open(brick_file(str(tmp_path / "a"), BRICK, "image", "z")) as hdul:
        h = hdul[1].header
        assert (h["PSFSRC"], h["NOISESRC"]) == (PSFEX_Z, texture["source"])
        assert h["NOISECOR"] == pytest.approx(texture["neighbour"]) and h["GAIN"] > 0
    for a_file, b_file in zip(runs[0]["files"], runs[1]["files"]):
        assert open(a_file, "rb").read() == open(b_file, "rb").read(), a_file  # invvar and maskbits too


def test_stage4_psf_at_a_sky_target_is_the_psf_the_sky_was_drawn_with(data_root, depth_row, tmp_path):
    """Stage 4 reads the sky's pseudo-CCD table and moved PSFEx model like the survey's own: its stack
    at a target equals the model the sky drew that position with (cropped to the flux fraction), and
    it differs from the model at another position of the brick (the PSF varies)."""
    psfex = str(data_root / "legacysurvey" / "psfex" / PSFEX_Z)
    b = brick_from_name(BRICK)
    base = str(tmp_path / "sky")
    cat = _with_source(depth_row, "PSF", 50.0)
    summary = write_sky_for_brick(base, BRICK, [b.ra], [b.dec], cat, bands="z", psfex={"z": psfex})
    assert summary["psfex_files"]["z"].endswith(f"calib/psfex/sample-sky/{BRICK}-z-psfex.fits")
    ccd = PseudoCCD(b, "z", psfex)
    # a target 600 px east and 400 px north of the brick centre (x runs west in the coadd)
    x, y = 1800.5 - 600, 1800.5 + 400
    ra, dec = (float(v) for v in WCS(coadd_wcs_header(b)).all_pix2world(x, y, 1))
    kernel, source, record = psf_at_target(summary["ccds_file"], summary["calib_root"], ra, dec, "z")
    assert source == "psfex_stack:1 ccds" and record["ccds"][0]["x"] == pytest.approx(x, abs=1e-6)
    expected = crop_to_fraction(ccd.kernel_at(x, y), 0.995)
    np.testing.assert_allclose(kernel, expected, atol=1e-5 * expected.max())  # float32 storage
    centre = crop_to_fraction(ccd.kernel_at(1800.5, 1800.5), 0.995)
    k = min(centre.shape[0], kernel.shape[0])
    crop = lambda a: a[(a.shape[0] - k) // 2: (a.shape[0] + k) // 2, (a.shape[0] - k) // 2: (a.shape[0] + k) // 2]
    assert np.abs(crop(centre) - crop(kernel)).max() > 1e-3 * kernel.max()  # the model varies over the brick
    # stage 4 with its defaults (CCD table beside the coadds, calib under the sky base) uses the stack
    target = pd.DataFrame({"target_id": ["t"], "ra": [b.ra], "dec": [b.dec], "brickname": [BRICK],
                           "psf_fwhm_z": [1.0], "split": ["train"]})
    row = cut_brick(base, BRICK, target, CutoutConfig(stamp_size=64, bands="z")).iloc[0]
    assert row.ok and list(row.psf_source) == ["psfex_stack:1 ccds"]
    stored = np.asarray(row.psf, np.float32).reshape(int(row.psf_size), int(row.psf_size))
    at_centre, _, _ = psf_at_target(summary["ccds_file"], summary["calib_root"], b.ra, b.dec, "z")
    np.testing.assert_allclose(stored, at_centre, atol=1e-5 * at_centre.max())

