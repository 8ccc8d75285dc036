"""Arc shot noise with the coadd's texture (udfs.survey.shot_noise), down to arcs injected onto the
real z coadd of brick 1102p240 with the real PSFEx stack at its DEV galaxy."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from udfs.config.limits import ParameterError
from udfs.lensing.arcs import Sources, inject, render_arcs
from udfs.lensing.lens_model import Lens
from udfs.survey import noise_texture as nt
from udfs.survey import psf_stack as ps
from udfs.survey.shot_noise import add_poisson_noise

DEV = (110.30856, 23.91679)
SCALE = 0.262
RHO = np.array([[0.03, 0.16, 0.03], [0.13, 1.0, 0.13], [0.03, 0.16, 0.03]])  # a coadd-like texture


def _neighbour(r: np.ndarray, region: np.ndarray) -> float:
    """Mean nearest-neighbour correlation of the field r over pixel pairs both in region."""
    num = den = 0.0
    for a, b in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
        both = region[a] & region[b]
        num += np.sum(r[a][both] * r[b][both])
        den += np.sqrt(np.sum(r[a][both] ** 2) * np.sum(r[b][both] ** 2))
    return float(num / den)


def test_textured_shot_noise_keeps_mean_and_variance_and_takes_the_kernels_correlation():
    kernel = nt.correlation_kernel(RHO)
    arc, gain = np.full((300, 300), 4.0), 25.0
    inner = np.zeros(arc.shape, bool)
    inner[2:-2, 2:-2] = True
    rng = np.random.default_rng(3)
    textured = add_poisson_noise(arc, gain, rng, kernel) - arc
    white = add_poisson_noise(arc, gain, rng) - arc
    for name, resid, rho in (("textured", textured, nt.neighbour_correlation(RHO)), ("white", white, 0.0)):
        r = resid[inner]
        print(f"\n{name}: mean {r.mean():+.4f}, var*gain/arc {r.var() * gain / 4.0:.4f}, "
              f"neighbour corr {_neighbour(resid, inner):.4f} (want {rho:.4f})")
        assert abs(r.mean()) < 5 * np.sqrt(2 * 4.0 / gain / r.size)  # 2: sum of rho, correlated pixels
        assert r.var() * gain / 4.0 == pytest.approx(1.0, abs=0.03)   # Poisson variance arc / gain
        assert _neighbour(resid, inner) == pytest.approx(rho, abs=0.015)


def test_white_shot_noise_stays_on_the_arc_and_texture_reaches_only_one_pixel_beyond():
    arc = np.zeros((40, 40))
    arc[15:25, 15:25] = 2.0
    white = add_poisson_noise(arc, 10.0, np.random.default_rng(1))
    assert np.all(white[arc == 0] == 0)
    textured = add_poisson_noise(arc, 10.0, np.random.default_rng(1), nt.correlation_kernel(RHO))
    touched = np.zeros(arc.shape, bool)
    touched[14:26, 14:26] = True                      # the 3x3 kernel spreads one pixel out
    assert np.all(textured[~touched] == 0) and np.any(textured[touched & (arc == 0)] != 0)
    with pytest.raises(ParameterError, match="gain must be > 0"):
        add_poisson_noise(arc, 0.0, np.random.default_rng(1))


@pytest.fixture(scope="module")
def real_z(data_root):
    folder = data_root / "legacysurvey" / "coadd_1102p240_z"
    patch = data_root / "legacysurvey" / "dr9_ccds_testcase6"
    with fits.open(folder / "legacysurvey-1102p240-image-z.fits.fz") as hdul:
        image = hdul[1].data.astype(float)
    with fits.open(folder / "legacysurvey-1102p240-invvar-z.fits.fz") as hdul:
        invvar = hdul[1].data.astype(float)
    rho, kernel, source = nt.cutout_texture(image, invvar)
    assert source.startswith("measured:")
    psf, psf_source, _ = ps.psf_at_target(str(patch / "survey-ccds-1.fits.gz"), str(patch / "calib"), *DEV, "z")
    assert psf_source.startswith("psfex_stack")
    return {"image": image, "invvar": invvar, "rho": rho, "kernel": kernel, "psf": psf}


def test_arcs_on_the_real_z_coadd_carry_the_skys_noise_texture(real_z):
    """40 noisy draws of one bright arc (SIE theta_E 1.5", Sersic source, the real PSFEx stack) on
    the real 100x100 z coadd: the noise it added correlates with its neighbour like the sky does
    (within 0.03); white arc noise (the old behaviour) does not."""
    n, draws = real_z["image"].shape[0], 40
    lens = Lens.make(np.full(draws, 1.5), e1=0.1, e2=-0.05)
    sources = Sources(mode=np.array(["sersic"] * draws), x=np.full(draws, 0.25), y=np.full(draws, 0.1),
                      phi=np.zeros(draws), mag=np.full((draws, 1), 18.5), sersic_n=np.ones(draws),
                      sersic_re=np.full(draws, 0.4), sersic_q=np.full(draws, 0.7))
    rendered = render_arcs(lens, sources, [[real_z["psf"]]] * draws, n, SCALE)
    images = np.broadcast_to(real_z["image"], (draws, 1, n, n)).copy()
    invvar = np.broadcast_to(real_z["invvar"], (draws, 1, n, n)).copy()
    sky = nt.neighbour_correlation(real_z["rho"])
    arc = rendered.arcs[0, 0]
    region = arc > 0.2 * arc.max()
    got = {}
    for name, kernels in (("textured", np.broadcast_to(real_z["kernel"], (draws, 1, 3, 3))), ("white", None)):
        injected, added, metrics = inject(images, invvar, rendered, lens, "z", SCALE, seeds=np.arange(draws),
                                          noise_kernels=kernels)
        gain = metrics["gain_z"][0]
        resid = (injected[:, 0].astype(float) - real_z["image"] - arc) / np.sqrt(np.clip(arc, 1e-30, None) / gain)
        assert not region[:, [0, -1]].any()             # so pairs never cross from one draw to the next
        got[name] = _neighbour(np.concatenate(list(resid), axis=1), np.concatenate([region] * draws, axis=1))
        np.testing.assert_allclose(added.sum(axis=(2, 3)).mean(), arc.sum(), rtol=0.01)
    print(f"\nsky neighbour corr {sky:.4f}; injected noise: textured {got['textured']:.4f}, "
          f"white {got['white']:.4f}; arc region {region.sum()} px x {draws} draws")
    assert abs(got["textured"] - sky) < 0.03
    assert abs(got["white"]) < 0.03 and sky > 0.1


def test_batch_shot_noise_and_gains_equal_the_band_by_band_definitions():
    """The stage-5 batch path (gain_estimates + add_shot_noise) gives, stamp for stamp, the values
    of gain_estimate and add_poisson_noise drawn band by band from each stamp's seed (white:
    exactly; textured: to rounding, against scipy.ndimage.convolve), and names a dead band."""
    from scipy import ndimage

    from udfs.survey.shot_noise import add_shot_noise, gain_estimate, gain_estimates

    rng = np.random.default_rng(3)
    arcs = np.abs(rng.normal(0, 1, (4, 3, 20, 20))) * (rng.random((4, 3, 20, 20)) > 0.5)
    arcs -= 0.01 * (rng.random(arcs.shape) > 0.9)                  # PSF negative wings
    invvar = rng.uniform(10, 20, (4, 3, 20, 20)).astype(np.float32)
    invvar[0, 1, :5], invvar[1, 2, 3] = 0, np.nan
    gains = gain_estimates(invvar, "grz", 0.262)
    assert np.array_equal(gains, [[gain_estimate(invvar[s, b], "grz"[b], 0.262) for b in range(3)]
                                  for s in range(4)])
    seeds = [4, 5, 6, 7]
    kernels = rng.uniform(0, 1, (4, 3, 3, 3))
    textured, white = add_shot_noise(arcs, gains, seeds, kernels), add_shot_noise(arcs, gains, seeds)
    for s in range(4):
        r_white, r_tex = np.random.default_rng(seeds[s]), np.random.default_rng(seeds[s])
        for b in range(3):
            assert np.array_equal(white[s, b], add_poisson_noise(arcs[s, b], gains[s, b], r_white))
            k = kernels[s, b] / np.sqrt((kernels[s, b] ** 2).sum())
            lam = np.where(arcs[s, b] > 0, arcs[s, b], 0) * gains[s, b]
            want = arcs[s, b] + ndimage.convolve(r_tex.poisson(lam) / gains[s, b] - lam / gains[s, b], k,
                                                 mode="constant", cval=0.0)
            np.testing.assert_allclose(textured[s, b], want, rtol=0, atol=1e-12)
    invvar[2, 0] = 0
    with pytest.raises(Exception, match="stamp 2 band g: no pixel with invvar > 0"):
        gain_estimates(invvar, "grz", 0.262)


def test_batched_shot_noise_equals_stamp_by_stamp_noise():
    """add_shot_noise (draws per stamp, the rest on the whole batch) gives exactly the values of
    add_poisson_noise stamp by stamp with each stamp's own seeded generator, white and textured."""
    from udfs.survey.shot_noise import add_shot_noise

    rng = np.random.default_rng(4)
    arcs = np.clip(rng.normal(0.02, 0.05, (5, 3, 16, 16)), -0.01, None)  # some pixels <= 0 (PSF wings)
    gains = rng.uniform(50, 500, (5, 3))
    kernels = np.abs(rng.normal(0.2, 0.1, (5, 3, 3, 3)))
    kernels[..., 1, 1] = 1.0
    seeds = np.arange(100, 105, dtype=np.uint64)
    for k in (None, kernels):
        batch = add_shot_noise(arcs, gains, seeds, k)
        one = np.stack([add_poisson_noise(arcs[s], gains[s][:, None, None], np.random.default_rng(int(seeds[s])),
                                          None if k is None else k[s]) for s in range(5)])
        assert batch.tobytes() == one.tobytes()
        assert not np.array_equal(batch, arcs)
