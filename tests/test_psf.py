"""PSF kernels and convolution: centroids stay put, flux is conserved, wide kernels work."""
import glob

import galsim
import numpy as np
import pytest

from udfs.io.errors import InputError
from udfs.survey import psf
from udfs.survey.psf import (PSFError, convolve, convolve_bands, gaussian_kernel, moffat_kernel, psf_kernel,
                             psfex_kernel)


def centroid(img):
    yy, xx = np.indices(img.shape)
    return (img * xx).sum() / img.sum(), (img * yy).sum() / img.sum()


def gaussian_of_size(k, sigma_pix=2.0):
    """A Gaussian sampled symmetrically about the geometric centre of a k x k grid."""
    return galsim.Gaussian(sigma=sigma_pix).drawImage(nx=k, ny=k, scale=1.0, method="no_pixel").array


@pytest.mark.parametrize("npix", [63, 64])
@pytest.mark.parametrize("k", [9, 10, 25, 26, 151, 152])  # odd/even; 151/152 wider than the stamp
def test_point_source_lands_where_it_was(npix, k):
    img = np.zeros((npix, npix))
    j, i = 29, 34
    img[j, i] = 5.0
    kernel = gaussian_of_size(k, sigma_pix=min(2.0, k / 8))
    assert centroid(kernel.astype(np.float64)) == pytest.approx(((k - 1) / 2,) * 2, abs=1e-9)  # geometric centre
    out = convolve(img, kernel)
    cx, cy = centroid(out)
    if k < npix // 2:  # PSF fully on the stamp: centroid and flux exact
        assert (cx, cy) == pytest.approx((i, j), abs=0.01)
        assert out.sum() == pytest.approx(5.0 * kernel.sum(), rel=1e-6)
    full = convolve(img, kernel, full=True)
    assert full.sum() == pytest.approx(5.0 * kernel.sum(), rel=1e-6)  # all of the flux is kept
    off = (k - 1) // 2
    fx, fy = centroid(full)
    assert (fx - off, fy - off) == pytest.approx((i, j), abs=0.01)


@pytest.mark.parametrize("k", [151, 152])
def test_kernel_wider_than_stamp_centred_point(k):
    """A centred point and a kernel wider than the stamp: the stamp holds exactly the kernel's
    central window (no wrap-around, no error) and the centroid stays at the centre."""
    n = 64
    img = np.zeros((n, n))
    img[32, 32] = 1.0
    kernel = gaussian_of_size(k, sigma_pix=20.0)
    out = convolve(img, kernel)
    c = (k - 1) / 2.0
    lo = int(round(c - 32))
    window = kernel[lo:lo + n, lo:lo + n] if k % 2 else None
    if window is not None:
        np.testing.assert_allclose(out, window, atol=1e-12)
    assert np.all(out > 0)
    assert out.sum() < 1.0


def test_bands_share_one_forward_fft_and_agree_with_single_convolution(monkeypatch):
    """convolve_bands transforms the image once for all bands, and each kernel once (cached)."""
    rng = np.random.default_rng(2)
    img = rng.random((64, 64))
    kernels = [gaussian_kernel(1.1, 0.262), moffat_kernel(1.3, 3.5, 0.262), gaussian_kernel(1.0, 0.262, 20)]
    expected = [convolve(img, kern) for kern in kernels]
    psf._kernel_fft.cache_clear()
    calls = []
    real_rfft2 = psf.sfft.rfft2
    monkeypatch.setattr(psf.sfft, "rfft2", lambda a, *args, **kw: calls.append(np.shape(a)) or real_rfft2(a, *args, **kw))
    out = convolve_bands(img, kernels)
    batch = (1,) + img.shape
    assert calls.count(batch) == 1                           # one forward FFT of the image
    assert sorted(calls) == sorted([batch] + [k.shape for k in kernels])  # and one per kernel
    calls.clear()
    again = convolve_bands(img, kernels)
    assert calls == [batch]                                 # kernel transforms come from the cache
    for b in range(len(kernels)):
        np.testing.assert_allclose(out[b], expected[b], atol=1e-12)
    np.testing.assert_array_equal(again, out)


def test_batched_convolution_does_not_depend_on_the_batch_and_single_precision_is_close():
    """convolve_stamps equals convolve_bands stamp by stamp, bit for bit, whatever the batch's mix
    of kernel sizes and chunking; its float32 transforms stay within 1e-6 of each band's peak."""
    from udfs.survey.psf import convolve_stamps

    rng = np.random.default_rng(7)
    imgs = rng.random((7, 64, 64))
    sizes = [(25, 25, 25), (31, 29, 27), (25, 25, 25), (43, 25, 25), (25, 25, 25), (31, 29, 27), (19, 19, 19)]
    kernels = [[moffat_kernel(1.2 + 0.01 * s, 3.1, 0.262, k) for k in ks] for s, ks in enumerate(sizes)]
    single = np.stack([convolve_bands(imgs[s], kernels[s]) for s in range(7)])
    np.testing.assert_array_equal(convolve_stamps(imgs, kernels), single)
    np.testing.assert_array_equal(convolve_stamps(imgs, kernels, chunk=2), single)
    np.testing.assert_array_equal(convolve_stamps(imgs[3:5], kernels[3:5]), single[3:5])
    fast = convolve_stamps(imgs, kernels, single=True)
    assert fast.dtype == np.float64
    assert np.abs(fast - single).max() / single.max() < 1e-6


def test_gaussian_and_moffat_kernels_match_galsim_fwhm():
    for kern, fwhm in ((gaussian_kernel(1.3, 0.262), 1.3), (moffat_kernel(1.3, 2.5, 0.262), 1.3)):
        assert kern.sum() == pytest.approx(1.0)
        assert kern.shape[0] % 2 == 1
        peak = kern.max()
        c = kern.shape[0] // 2
        profile = kern[c, c:]
        half = np.interp(0.5 * peak, profile[::-1], np.arange(len(profile))[::-1])
        assert 2 * half * 0.262 == pytest.approx(fwhm, rel=0.03)
    assert moffat_kernel(1.3, 2.5, 0.262).shape[0] > 64  # 99.9% of a beta=2.5 Moffat: wider than a stamp


@pytest.mark.parametrize("fwhm", [0.0, -1.0, float("nan")])
def test_zero_or_bad_psf_size_is_a_clear_error(fwhm):
    with pytest.raises(PSFError, match="PSF FWHM must be a positive number"):
        psf_kernel("gaussian", fwhm, 0.262)


def test_unknown_model_and_missing_beta():
    with pytest.raises(PSFError, match="unknown PSF model 'airy'"):
        psf_kernel("airy", 1.0, 0.262)
    with pytest.raises(PSFError, match="beta"):
        psf_kernel("moffat", 1.0, 0.262)


def test_psfex_kernels_reproduce_the_models(data_root):
    """Real DECam PSFEx models: at POLZERO the kernel is the constant basis image (unit sum); away
    from it, the polynomial terms change it; FWHMs span the models' recorded 0.87-1.74 arcsec."""
    from astropy.io import fits

    files = sorted(glob.glob(str(data_root / "legacysurvey" / "psfex" / "*-psfex.fits")))
    assert len(files) == 8
    widths, recorded = [], []
    for f in files:
        row = fits.getdata(f, 1)[0]
        kern = psfex_kernel(f, row["polzero1"], row["polzero2"], 0.262)
        base = np.asarray(row["psf_mask"][0], dtype=np.float64)
        np.testing.assert_allclose(kern, base / base.sum(), atol=1e-6 * base.max() / base.sum())
        corner = psfex_kernel(f, row["polzero1"] + row["polscal1"], row["polzero2"] - row["polscal2"], 0.262)
        assert np.abs(corner - kern).max() > 1e-4 * kern.max()  # the spatial variation is applied
        assert corner.sum() == pytest.approx(1.0)
        widths.append(2 * np.sqrt((kern >= 0.5 * kern.max()).sum() / np.pi) * 0.262)
        recorded.append(row["psf_fwhm"] * 0.262)
    assert 0.6 < min(widths) and max(widths) < 1.8
    assert np.corrcoef(widths, recorded)[0, 1] > 0.8  # same ordering of seeing as PSFEx reports


def test_psfex_unreadable_file_names_it(tmp_path):
    bad = tmp_path / "broken-psfex.fits"
    bad.write_bytes(b"not fits at all")
    with pytest.raises(PSFError, match="broken-psfex.fits"):
        psfex_kernel(str(bad), 0, 0, 0.262)
    with pytest.raises(PSFError, match="no-such-psfex.fits"):
        psfex_kernel(str(tmp_path / "no-such-psfex.fits"), 0, 0, 0.262)
    assert issubclass(PSFError, InputError) and not issubclass(PSFError, ValueError)
