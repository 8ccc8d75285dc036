"""Noise texture (udfs.survey.noise_texture) on the real z coadd of brick 1102p240 and its CCDs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from udfs.io.errors import InputError
from udfs.survey import noise_texture as nt

DEV_RA, DEV_DEC = 110.30856, 23.91679
Z_CCDS = ["CP20150109/c4d_150110_053718_{}_z_ls9.S4.fits", "CP20181214/c4d_181215_045000_{}_z_ls9.S9.fits"]


@pytest.fixture(scope="module")
def coadd(data_root):
    folder = data_root / "legacysurvey" / "coadd_1102p240_z"
    image_uri = folder / "legacysurvey-1102p240-image-z.fits.fz"
    with fits.open(image_uri) as hdul:
        image, wcs = hdul[1].data.astype(float), WCS(hdul[1].header)
    with fits.open(folder / "legacysurvey-1102p240-invvar-z.fits.fz") as hdul:
        invvar = hdul[1].data.astype(float)
    mask = nt.source_free_mask(image, invvar)
    rho = nt.measure_correlation(image, invvar, mask)
    return {"folder": folder, "image": image, "invvar": invvar, "wcs": wcs, "mask": mask, "rho": rho}


def test_source_free_mask_drops_the_galaxies_and_keeps_half_the_stamp(coadd):
    mask, image, invvar = coadd["mask"], coadd["image"], coadd["invvar"]
    x, y = coadd["wcs"].world_to_pixel_values(DEV_RA, DEV_DEC)
    ix, iy = int(round(float(x))), int(round(float(y)))
    assert image.shape == (100, 100) and 80 < ix < 100 and 0 <= iy < 20
    assert not mask[max(iy - 2, 0):iy + 3, ix - 2:ix + 3].any(), "DEV galaxy pixels left in the mask"
    py, px = np.unravel_index(np.argmax(np.where(invvar > 0, image, -np.inf)), image.shape)
    assert not mask[py - 3:py + 4, px - 3:px + 4].any(), "brightest source left in the mask"
    assert not mask[invvar <= 0].any()
    print(f"\nsource-free mask keeps {mask.mean():.3f} of the stamp ({mask.sum()} px)")
    assert mask.mean() >= 0.5


def test_real_coadd_noise_is_correlated(coadd):
    rho = coadd["rho"]
    nb = nt.neighbour_correlation(rho)
    print(f"\nreal z coadd 1102p240: neighbour correlation {nb:.4f}\nrho 3x3 [dy, dx]:\n{np.round(rho, 4)}")
    assert rho.shape == (3, 3) and rho.dtype == np.float64 and rho[1, 1] == 1.0
    np.testing.assert_array_equal(rho, rho[::-1, ::-1])
    assert 0.05 < nb < 0.5
    assert min(rho[1, 0], rho[0, 1]) > 0.05, "both axes of a resampled coadd are correlated"
    diag = (rho[0, 0] + rho[0, 2]) / 2
    assert abs(diag) < nb / 2, "diagonal lags should be weaker than nearest neighbours"


def test_white_noise_control_on_the_same_mask(coadd):
    for seed in (1, 2, 3):
        white = np.random.default_rng(seed).standard_normal(coadd["image"].shape)
        rho = nt.measure_correlation(white, np.ones_like(white), coadd["mask"])
        assert abs(nt.neighbour_correlation(rho)) < 0.03
        assert np.all(np.abs(rho - np.eye(3)[1][:, None] * np.eye(3)[1][None, :]) < 0.05)


def test_coadd_is_more_correlated_than_the_ccds_that_went_in(coadd, data_root):
    """Resampling onto the brick grid adds correlation to the CCD's own (CP instcal) noise."""
    base = data_root / "legacysurvey" / "dr9_ccds_testcase6" / "images" / "decam" / "CP" / "V4.8.2a"
    coadd_nb = nt.neighbour_correlation(coadd["rho"])
    for name in Z_CCDS:
        tex = nt.texture_of_coadd(str(base / name.format("ooi")), str(base / name.format("oow")),
                                  str(base / name.format("ood")))
        print(f"\nCCD {name.split('/')[1].format('ooi')}: neighbour {tex.neighbour:.4f} ({tex.n_pixels} px)\n"
              f"{np.round(tex.rho, 4)}")
        assert tex.neighbour < coadd_nb - 0.03


def test_kernel_reproduces_the_real_rho(coadd):
    rho = coadd["rho"]
    k = nt.correlation_kernel(rho)
    assert k.shape == (3, 3) and abs(np.sum(k * k) - 1) < 1e-12
    auto = nt._autocorr(k, 1)
    print(f"\nkernel:\n{np.round(k, 4)}\nmax |autocorr(k) - rho| = {np.abs(auto - rho).max():.2e}")
    assert np.abs(auto - rho).max() < 0.01


def test_round_trip_drawn_noise_remeasures_the_real_rho(coadd):
    rho = coadd["rho"]
    sigma = 1.0 / np.sqrt(np.median(coadd["invvar"][coadd["invvar"] > 0]))
    noise = nt.correlated_noise((512, 512), sigma, nt.correlation_kernel(rho), np.random.default_rng(11))
    ivar = np.full(noise.shape, 1.0 / sigma**2)
    again = nt.measure_correlation(noise, ivar, np.ones(noise.shape, bool))
    err = again - rho
    print(f"\nround trip 512x512: max |rho_drawn - rho_real| = {np.abs(err).max():.4f}, "
          f"neighbour {nt.neighbour_correlation(again):.4f} vs {nt.neighbour_correlation(rho):.4f}, "
          f"std/sigma = {noise.std() / sigma:.4f}")
    assert np.abs(err).max() < 0.02
    assert abs(nt.neighbour_correlation(again) - nt.neighbour_correlation(rho)) < 0.02
    assert abs(noise.std() / sigma - 1) < 0.02
    masked = nt.measure_correlation(noise, ivar, np.tile(coadd["mask"], (6, 6))[:512, :512])
    assert np.abs(masked - rho).max() < 0.02, "the real mask's holes bias the estimate"


def test_variance_map_sets_each_halves_std(coadd):
    k = nt.correlation_kernel(coadd["rho"])
    sigma = np.full((400, 400), 0.02)
    sigma[:, 200:] = 0.05
    noise = nt.correlated_noise(sigma.shape, sigma, k, 5)
    assert abs(noise[:, :200].std() / 0.02 - 1) < 0.03
    assert abs(noise[:, 200:].std() / 0.05 - 1) < 0.03


def test_same_seed_same_noise_and_different_seed_differs():
    k = nt.correlation_kernel(np.array([[0.05, 0.2, 0.05], [0.15, 1.0, 0.15], [0.05, 0.2, 0.05]]))
    a = nt.correlated_noise((64, 48), 1.0, k, np.random.default_rng(7))
    b = nt.correlated_noise((64, 48), 1.0, k, np.random.default_rng(7))
    assert a.shape == (64, 48) and np.array_equal(a, b)
    assert not np.array_equal(a, nt.correlated_noise((64, 48), 1.0, k, 8))


def test_texture_of_coadd_from_files_is_json_ready(coadd):
    f = coadd["folder"]
    tex = nt.texture_of_coadd(str(f / "legacysurvey-1102p240-image-z.fits.fz"),
                              str(f / "legacysurvey-1102p240-invvar-z.fits.fz"))
    np.testing.assert_allclose(tex.rho, coadd["rho"])
    assert tex.n_pixels == int(coadd["mask"].sum())
    d = json.loads(json.dumps(tex.as_dict()))
    assert set(d) == {"rho", "neighbour", "n_pixels", "kernel"} and len(d["kernel"]) == 3
    with pytest.raises(AttributeError):
        tex.neighbour = 0.0


def test_bad_input_names_the_problem(coadd, tmp_path):
    image, invvar = coadd["image"], coadd["invvar"]
    with pytest.raises(InputError, match="mismatched shapes"):
        nt.source_free_mask(image, invvar[:50])
    with pytest.raises(InputError, match="mismatched shapes"):
        nt.measure_correlation(image, invvar, coadd["mask"][:, :10])
    with pytest.raises(InputError, match="invvar > 0"):
        nt.source_free_mask(image, np.zeros_like(invvar))
    with pytest.raises(InputError, match="clean maskbits"):
        nt.source_free_mask(image, invvar, np.ones(image.shape, np.int32))
    with pytest.raises(InputError, match="usable pixels in the mask"):
        nt.measure_correlation(image, invvar, np.zeros(image.shape, bool))
    with pytest.raises(InputError, match="sigma shape"):
        nt.correlated_noise((10, 10), np.ones((5, 5)), np.ones((3, 3)), 0)
    with pytest.raises(InputError, match="kernel"):
        nt.correlated_noise((10, 10), 1.0, np.ones((2, 2)), 0)
    with pytest.raises(InputError, match="point-symmetric"):
        nt.correlation_kernel(np.array([[0, 0.3, 0], [0, 1, 0], [0, 0, 0]]))
    with pytest.raises(InputError, match="cannot read"):
        nt.texture_of_coadd(str(tmp_path / "missing.fits.fz"), invvar)
