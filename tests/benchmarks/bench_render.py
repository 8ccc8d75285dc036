"""Renderer benchmark: our batched renderer vs lenstronomy ImageModel + INTERPOL.

Same stamps for both: 3-band 64x64 stamps at 0.262"/pix, a different real COSMOS galaxy per stamp
(drawn with GalSim from ../shared/data/cosmos/btk_ext26), SIE + shear lenses and source positions
drawn from one seed, a per-stamp PSF per band (per-target seeing, as in the pipeline).

Baselines, lenstronomy at supersampling 4 with fresh INTERPOL caches per stamp:
- ``lenstronomy``: its ordinary use, one ``ImageModel`` per band with that band's PSF, ``image()``
  per band (three lensing passes per stamp);
- ``lenstronomy_lens_once``: a hand-tuned use, one unconvolved ``image()`` per stamp and
  lenstronomy's pixel-kernel convolution per band (what our renderer also does).
Accuracy: our default rendering vs lenstronomy at supersampling 8 (per band, with the PSF),
max |difference| / the arc's peak pixel.
Run single-threaded (``make bench`` pins BLAS/OpenMP/numba threads to 1).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

N, DP, BANDS = 64, 0.262, "grz"


def _stamps(n: int, n_sources: int, seed: int = 11):
    rng = np.random.default_rng(seed)
    te = rng.uniform(0.8, 2.2, n)
    e1, e2, g1, g2 = rng.normal(0, [[0.1], [0.1], [0.03], [0.03]], (4, n))
    r = te * np.sqrt(rng.uniform(0, 0.5, n))
    ang = rng.uniform(0, 2 * np.pi, n)
    fwhm = rng.uniform(1.0, 1.6, (n, 3))
    return dict(te=te, e1=e1, e2=e2, g1=g1, g2=g2, sx=r * np.cos(ang), sy=r * np.sin(ang),
                phi=rng.uniform(0, 2 * np.pi, n), index=np.arange(n) % n_sources,
                mag=np.stack([rng.uniform(22, 24, n) + d for d in (0.5, 0.0, -0.4)], axis=1), fwhm=fwhm)


def _lenstronomy_model(supersampling: int, kernel=None):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    data = ImageData(image_data=np.zeros((N, N)), ra_at_xy_0=-(N - 1) / 2 * DP,
                     dec_at_xy_0=-(N - 1) / 2 * DP, transform_pix2angle=np.eye(2) * DP)
    psf = PSF(psf_type="PIXEL", kernel_point_source=kernel) if kernel is not None else PSF(psf_type="NONE")
    return ImageModel(data, psf, lens_model_class=LensModel(["SIE", "SHEAR"]),
                      source_model_class=LightModel(["INTERPOL"]),
                      kwargs_numerics={"supersampling_factor": supersampling})


def _kwargs(st, i, images, scale):
    kw_lens = [dict(theta_E=st["te"][i], e1=st["e1"][i], e2=st["e2"][i], center_x=0.0, center_y=0.0),
               dict(gamma1=st["g1"][i], gamma2=st["g2"][i])]
    kw_src = [dict(image=images[st["index"][i]] / scale ** 2, amp=1.0, center_x=st["sx"][i],
                   center_y=st["sy"][i], phi_G=st["phi"][i], scale=scale)]
    return kw_lens, kw_src, 10 ** ((22.5 - st["mag"][i]) / 2.5)


def _lenstronomy_per_band(st, i, images, scale, kernels, supersampling):
    """Ordinary use: one ImageModel per band (its PSF), fresh caches."""
    kw_lens, kw_src, flux = _kwargs(st, i, images, scale)
    return np.stack([_lenstronomy_model(supersampling, kernels[b]).image(kw_lens, kw_src) * flux[b]
                     for b in range(3)])


def _lenstronomy_lens_once(model, st, i, images, scale, kernels):
    """Hand-tuned use: lens once (fresh INTERPOL cache), convolve per band."""
    from lenstronomy.ImSim.Numerics.convolution import PixelKernelConvolution

    kw_lens, kw_src, flux = _kwargs(st, i, images, scale)
    model.SourceModel.delete_interpol_caches()
    unit = model.image(kw_lens, kw_src, unconvolved=True)
    return np.stack([PixelKernelConvolution(kernels[b]).convolution2d(unit) * flux[b] for b in range(3)])


def run(n_ours: int = 200, n_lenstronomy: int = 40, n_accuracy: int = 12,
        supersampling: int | None = None) -> dict:
    from tests.lensing_fixtures import write_test_bank
    from udfs.lensing.arcs import DEFAULT_SUPERSAMPLING, Sources, render_arcs
    from udfs.lensing.lens_model import Lens
    from udfs.survey.psf import gaussian_kernel
    from udfs.config.sample_data import data_root
    from udfs.sources.bank import read_bank

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.h5"
        write_test_bank(path, data_root() / "cosmos" / "btk_ext26", n=60)
        bank = read_bank(str(path))
    squares = np.stack([bank.image(i) for i in range(len(bank))])  # lenstronomy's INTERPOL input
    st = _stamps(max(n_ours, n_lenstronomy), len(bank))
    kernels = [[gaussian_kernel(float(f), DP) for f in row] for row in st["fwhm"]]

    def ours(sl):
        lens = Lens.make(st["te"][sl], st["e1"][sl], st["e2"][sl], 0.0, 0.0, st["g1"][sl], st["g2"][sl])
        src = Sources(mode=np.full(len(lens), "cosmos"), x=st["sx"][sl], y=st["sy"][sl],
                      phi=st["phi"][sl], mag=st["mag"][sl], index=st["index"][sl])
        return render_arcs(lens, src, kernels[sl], N, DP, bank, supersampling or DEFAULT_SUPERSAMPLING).arcs

    ours(slice(0, 2))  # JIT warm-up (numba compiles once per process or loads its cache)
    t0 = time.perf_counter()
    ours_arcs = ours(slice(0, n_ours))
    t_ours = (time.perf_counter() - t0) / n_ours

    t0 = time.perf_counter()
    for i in range(n_lenstronomy):
        _lenstronomy_per_band(st, i, squares, bank.pixel_scale, kernels[i], 4)
    t_len = (time.perf_counter() - t0) / n_lenstronomy

    model4 = _lenstronomy_model(4)
    t0 = time.perf_counter()
    for i in range(n_lenstronomy):
        _lenstronomy_lens_once(model4, st, i, squares, bank.pixel_scale, kernels[i])
    t_once = (time.perf_counter() - t0) / n_lenstronomy

    dev = 0.0
    for i in range(n_accuracy):
        ref = _lenstronomy_per_band(st, i, squares, bank.pixel_scale, kernels[i], 8)
        dev = max(dev, float((np.abs(ours_arcs[i] - ref).max(axis=(1, 2)) / ref.max(axis=(1, 2))).max()))
    return {
        "render_stamp_shape": [3, N, N],
        "ours_ms_per_stamp": round(t_ours * 1e3, 3),
        "lenstronomy_ms_per_stamp": round(t_len * 1e3, 3),
        "ours_stamps_per_s": round(1.0 / t_ours, 1),
        "lenstronomy_stamps_per_s": round(1.0 / t_len, 1),
        "lenstronomy_lens_once_stamps_per_s": round(1.0 / t_once, 1),
        "speedup": round(t_len / t_ours, 1),
        "speedup_vs_lens_once": round(t_once / t_ours, 1),
        "max_dev_frac_of_peak": float(f"{dev:.3g}"),
        "render_baseline": "lenstronomy ImageModel+INTERPOL per band, supersampling 4, fresh caches",
        "accuracy_reference": "lenstronomy ImageModel+INTERPOL per band, supersampling 8",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run()))
