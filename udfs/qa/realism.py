"""Realism: the same crude measurements on injected stamps and on real lenses, and their comparison.

The estimators (:func:`measure_stamp`) are pure NumPy/SciPy and see one stamp at a time, injected
or real alike, so any difference between the two sets comes from the pixels, not the code path.

Conventions (once, for every function here):

- ``image`` ``(n_bands, N, N)`` in nanomaggies, ``invvar`` the same shape in 1/nanomaggies^2 (<= 0
  or non-finite: no data); the band order ``bands`` must hold g, r and z. ``pixel_scale`` in
  arcsec/pixel (0.262 for Legacy Survey coadds). ``psf_fwhm`` one FWHM per band in arcsec.
- Radii ``r`` from the lens centre ``c = ((N-1)/2 + dx, (N-1)/2 + dy)`` (``offset = (dx, dy)``
  pixels: the cutout's ``dx_pix, dy_pix``), in pixels; reported in arcsec.
- **Host model**: per band, the median of the usable pixels in thin circular rings
  ``floor(r / ring_width_pix)`` about ``c`` (an azimuthal median), painted back on every pixel of
  the ring. A tangential arc that covers a fraction ``f < 1/2`` of a ring moves the ring's median
  only to the ``1/(2(1-f))`` quantile of the host+noise pixels (+0.43 sigma for f = 1/4), so most
  of the arc stays in the residual; a complete Einstein ring (f ~ 1) is absorbed into the host and
  measured as (almost) no arc. Two passes: the second leaves the first pass's arc pixels (grown by
  1 px) out of the ring medians, which removes most of that bias. Circular rings on an elliptical host leave + lobes along its major
  axis and - lobes along its minor axis; the lobes above threshold count as "arc" (for real and
  injected stamps alike, which share LRG hosts). The host includes any sky offset.
- **Residual** ``R_b = image_b - host_b``; its **detection S/N** ``D = sum_b R_b / sqrt(sum_b 1/invvar_b)``
  over the bands with data at the pixel (one detection for all bands, so colours are not biased
  by selecting on one band).
- **Arc pixels**: ``D > k_sigma`` with ``core_psf_fwhm * psf_fwhm_r < r * pixel_scale <= radius_arcsec``
  (outside the PSF core, within 4"), in 8-connected groups of at least ``min_arc_pixels`` (isolated
  noise peaks dropped). Fluxes are summed over the arc pixels grown by 1 px (8-neighbours, same
  region), which collects the wings just below threshold at the price of a little extra noise;
  radii and widths use the arc pixels themselves. The threshold still truncates faint arcs:
  fluxes and widths are lower bounds that tighten with the arc's S/N.
- Measurements per stamp (:data:`MEASUREMENTS`):
  ``arc_host_flux_ratio_r`` = sum of ``R_r`` over the (grown) arc pixels / sum of ``host_r`` over
  ``r <= radius_arcsec`` (0.0 when there are no arc pixels: no arc was found, the host exists);
  ``arc_g_r``, ``arc_r_z`` = ``-2.5 log10`` of the ratios of the arc pixels' summed residuals (AB
  mag; NaN when a sum is <= 0); ``arc_radius_arcsec`` = mean radius of the arc pixels weighted by
  ``sum_b R_b``; ``arc_radial_width_arcsec`` = the weighted rms of their radii about that mean (a
  noiseless-PSF Gaussian radial profile of sigma s reads ~s at high S/N and less when the threshold
  cuts its wings; a PSF-convolved arc reads about ``sqrt(s^2 + sigma_psf^2)``);
  ``arc_sb_r`` = ``22.5 - 2.5 log10`` (arc r flux / (grown arc pixels * pixel_scale^2)),
  mag/arcsec^2; ``noise_corr`` = the mean
  nearest-neighbour correlation of the r-band residual normalised by invvar
  (:mod:`udfs.survey.noise_texture`, on source-free pixels outside ``radius_arcsec``; the
  residual's 1-px ring medians add ~+0.01); ``depth_r`` = the 5-sigma point-source depth in r,
  AB mag, ``22.5 - 2.5 log10(5 / sqrt(psfdepth))`` with ``psfdepth = median(invvar_r) / (4 pi
  (sigma_psf / pixel_scale)^2)`` (1/nanomaggies^2: the point-source flux inverse variance of a
  Gaussian PSF, whose noise-equivalent area is ``4 pi sigma_psf^2``; it ignores the coadd's pixel
  correlation, so both sides read ~0.1 mag too deep alike); ``psf_fwhm_r`` as given, arcsec.
  ``arc_pixels`` (a count) comes with them.
- A measurement that does not exist in a stamp is NaN, never an exception: no arc pixels (every
  ``arc_*`` but the ratio), a colour with a non-positive flux, a noise texture that cannot be
  measured, a non-finite ``psf_fwhm_r`` (then every arc measurement and the depth are NaN: the
  PSF core is unknown). The comparison counts the finite values of each side.

Comparison (:func:`two_sample`, :func:`realism_section`): per measurement, the finite values of
both sides; medians and 16/84% quantiles; the two-sample Kolmogorov-Smirnov test
(``scipy.stats.ks_2samp``) and the k-sample Anderson-Darling test (``scipy.stats.anderson_ksamp``,
whose p-value is interpolated in a table and clipped to [0.001, 0.25]: ``ad_p_clipped`` says when
it sits at a bound, i.e. the true p is smaller/larger). Small p: the two sets differ. The linear
probe (:func:`probe_pixels` + :func:`udfs.qa.linear_probe.grouped_auc`): logistic regression on
standardised central pixels, injections (label 1) vs real lenses (0), folds grouped by target.
The reading of stamps and cutouts, the probe call and the picture rows are in :mod:`udfs.qa.realism_io`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage, stats

from udfs.stamps.pixels import radii
from udfs.survey.noise_texture import (MIN_STAMP_PIXELS, NoiseTextureError, measure_correlation,
                                       neighbour_correlation, source_free_mask)

MEASUREMENTS = ("arc_host_flux_ratio_r", "arc_g_r", "arc_r_z", "arc_radius_arcsec", "arc_radial_width_arcsec",
                "arc_sb_r", "noise_corr", "depth_r", "psf_fwhm_r")
#: the measurement parameters (``conf/validation.yaml`` ``realism:`` keys of the same names)
PARAMS = ("k_sigma", "radius_arcsec", "core_psf_fwhm", "min_arc_pixels", "ring_width_pix")
#: the seed project's AUC of its Sersic injections vs real lenses: the number to beat
SEED_PROJECT_AUC = 0.997
MISSING_PENALTY = 2.0  # nearest(): a measurement present on one side only, in robust widths
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_NAN = float("nan")


def host_model(image: np.ndarray, usable: np.ndarray, r: np.ndarray, ring_width_pix: float) -> np.ndarray:
    """The azimuthal-median host of one band ``(N, N)``: each ring's median of its ``usable``
    pixels (module docstring); a ring with no usable pixel is 0."""
    ring = np.floor(r / ring_width_pix).astype(int)
    out = np.zeros(image.shape)
    good = usable & np.isfinite(image)
    for k in np.unique(ring):
        sel = ring == k
        vals = image[sel & good]
        out[sel] = np.median(vals) if vals.size else 0.0
    return out


def _arc_pixels(above: np.ndarray, allowed: np.ndarray, min_pixels: int) -> np.ndarray:
    """The ``above & allowed`` pixels in 8-connected groups of at least ``min_pixels``."""
    cand = above & allowed
    labels, n = ndimage.label(cand, structure=np.ones((3, 3), bool))
    if not n:
        return cand
    sizes = ndimage.sum_labels(np.ones(cand.shape), labels, index=np.arange(1, n + 1))
    return np.isin(labels, np.flatnonzero(sizes >= min_pixels) + 1)


def _colour(a: float, b: float) -> float:
    return -2.5 * math.log10(a / b) if a > 0 and b > 0 else _NAN


def _noise_corr(resid: np.ndarray, invvar: np.ndarray, outside: np.ndarray) -> float:
    """Neighbour correlation of one band's residual on source-free pixels of ``outside``; NaN if unmeasurable."""
    try:
        mask = source_free_mask(resid, invvar, (~outside).astype(np.int32))
        if mask.sum() < MIN_STAMP_PIXELS:
            return _NAN
        return neighbour_correlation(measure_correlation(resid, invvar, mask))
    except NoiseTextureError:
        return _NAN


def measure_stamp(image, invvar, pixel_scale: float, psf_fwhm, *, bands: str = "grz", offset=(0.0, 0.0),
                  k_sigma: float = 3.0, radius_arcsec: float = 4.0, core_psf_fwhm: float = 0.5,
                  min_arc_pixels: int = 3, ring_width_pix: float = 1.0) -> dict[str, float]:
    """The :data:`MEASUREMENTS` and ``arc_pixels`` of one stamp (module docstring)."""
    image = np.asarray(image, np.float64)
    invvar = np.asarray(invvar, np.float64)
    if image.ndim != 3 or image.shape != invvar.shape or image.shape[1] != image.shape[2]:
        raise ValueError(f"expected image and invvar of one shape (n_bands, N, N), got {image.shape}, {invvar.shape}")
    if any(b not in bands for b in "grz") or len(bands) != image.shape[0]:
        raise ValueError(f"band order {bands!r} must hold g, r, z and match {image.shape[0]} planes")
    ig, ir, iz = (bands.index(b) for b in "grz")
    fwhm_r = float(psf_fwhm[ir])
    npix = image.shape[1]
    r = radii(npix, offset)
    usable = np.isfinite(invvar) & (invvar > 0) & np.isfinite(image)
    var = np.where(usable, 1.0 / np.where(usable, invvar, 1.0), 0.0)
    sigma = np.sqrt(var.sum(axis=0))
    radius_pix = radius_arcsec / pixel_scale
    within = r <= radius_pix
    core = core_psf_fwhm * fwhm_r / pixel_scale if math.isfinite(fwhm_r) and fwhm_r > 0 else None
    allowed = within & (r > core) if core is not None else np.zeros_like(within)
    arc = np.zeros_like(within)
    for _ in range(2):  # the second pass leaves the first pass's arc (grown 1 px) out of the ring medians
        mask = usable & ~ndimage.binary_dilation(arc, np.ones((3, 3), bool))[None] if arc.any() else usable
        host = np.stack([host_model(image[b], mask[b], r, ring_width_pix) for b in range(len(bands))])
        resid = np.where(usable, image - host, 0.0)
        det = np.where(sigma > 0, resid.sum(axis=0) / np.where(sigma > 0, sigma, 1.0), 0.0)
        arc = _arc_pixels(det > k_sigma, allowed, min_arc_pixels)
    out = dict.fromkeys(MEASUREMENTS, _NAN)
    out["arc_pixels"] = 0
    out["psf_fwhm_r"] = fwhm_r
    out["noise_corr"] = _noise_corr(resid[ir], np.where(usable[ir], invvar[ir], 0.0), ~within)
    if core is None:
        return out
    ivr = invvar[ir][usable[ir]]
    if ivr.size:
        psfdepth = float(np.median(ivr)) / (4.0 * math.pi * (fwhm_r * FWHM_TO_SIGMA / pixel_scale) ** 2)
        out["depth_r"] = 22.5 - 2.5 * math.log10(5.0 / math.sqrt(psfdepth)) if psfdepth > 0 else _NAN
    host_r = float(host[ir][within].sum())
    n_arc = int(arc.sum())
    out["arc_pixels"] = n_arc
    if n_arc == 0:
        out["arc_host_flux_ratio_r"] = 0.0 if host_r > 0 else _NAN
        return out
    grown = ndimage.binary_dilation(arc, np.ones((3, 3), bool)) & allowed  # the wings below k sigma
    flux = {b: float(resid[i][grown].sum()) for b, i in zip("grz", (ig, ir, iz))}
    out["arc_host_flux_ratio_r"] = flux["r"] / host_r if host_r > 0 else _NAN
    out["arc_g_r"] = _colour(flux["g"], flux["r"])
    out["arc_r_z"] = _colour(flux["r"], flux["z"])
    w = resid.sum(axis=0)[arc]
    rr = r[arc] * pixel_scale
    if w.sum() > 0:
        mean = float(np.sum(w * rr) / w.sum())
        out["arc_radius_arcsec"] = mean
        out["arc_radial_width_arcsec"] = float(math.sqrt(max(np.sum(w * (rr - mean) ** 2) / w.sum(), 0.0)))
    if flux["r"] > 0:
        out["arc_sb_r"] = 22.5 - 2.5 * math.log10(flux["r"] / (int(grown.sum()) * pixel_scale ** 2))
    return out


def measure_stamps(images, invvars, pixel_scale: float, psf_fwhm, *, bands: str = "grz", offsets=None,
                   **params) -> dict[str, np.ndarray]:
    """:func:`measure_stamp` over ``(n, n_bands, N, N)`` stacks: ``{measurement: (n,) array}`` plus
    ``arc_pixels``. ``psf_fwhm`` ``(n, n_bands)``; ``offsets`` ``(n, 2)`` (dx, dy) or None (0)."""
    n = len(images)
    offsets = np.zeros((n, 2)) if offsets is None else np.nan_to_num(np.asarray(offsets, np.float64))
    rows = [measure_stamp(images[i], invvars[i], pixel_scale, np.asarray(psf_fwhm[i], float), bands=bands,
                          offset=offsets[i], **params) for i in range(n)]
    keys = list(MEASUREMENTS) + ["arc_pixels"]
    return {k: np.array([row[k] for row in rows], dtype=np.int64 if k == "arc_pixels" else np.float64)
            for k in keys}


def probe_pixels(images: np.ndarray, probe_pix: int) -> np.ndarray:
    """``(n, n_bands * p * p)`` central ``p x p`` pixels of every band (the probe's features)."""
    images = np.asarray(images, np.float64)
    npix = images.shape[-1]
    if probe_pix > npix:
        raise ValueError(f"probe region {probe_pix} px exceeds the {npix} px stamp")
    s = (npix - probe_pix) // 2
    return images[..., s:s + probe_pix, s:s + probe_pix].reshape(len(images), -1)


def _quantiles(v: np.ndarray) -> dict:
    if not v.size:
        return {"q0.16": None, "q0.5": None, "q0.84": None}
    q = np.quantile(v, [0.16, 0.5, 0.84])
    return {"q0.16": float(q[0]), "q0.5": float(q[1]), "q0.84": float(q[2])}


def two_sample(injected, real) -> dict:
    """Both sides' finite counts, NaN counts and quantiles; KS and AD statistics and p-values
    (None when a side has fewer than 2 finite values, or AD when all values are equal)."""
    a, b = np.asarray(injected, np.float64), np.asarray(real, np.float64)
    fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
    out = {"n_injected": int(fa.size), "n_real": int(fb.size), "nan_injected": int(a.size - fa.size),
           "nan_real": int(b.size - fb.size), "injected": _quantiles(fa), "real": _quantiles(fb),
           "ks_stat": None, "ks_p": None, "ad_stat": None, "ad_p": None, "ad_p_clipped": None}
    if fa.size < 2 or fb.size < 2:
        return out
    ks = stats.ks_2samp(fa, fb)
    out.update(ks_stat=float(ks.statistic), ks_p=float(ks.pvalue))
    if np.unique(np.concatenate([fa, fb])).size > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "p-value capped/floored": reported as ad_p_clipped
            ad = stats.anderson_ksamp([fa, fb])
        p = float(ad.pvalue)
        out.update(ad_stat=float(ad.statistic), ad_p=p, ad_p_clipped=bool(p <= 0.001 or p >= 0.25))
    return out


def nearest(injected: dict[str, np.ndarray], real: dict[str, np.ndarray], k: int) -> list[list[int]]:
    """For each real lens, the indices of its ``k`` nearest injections in the measurement space:
    each measurement scaled by the injections' robust width ((q84 - q16) / 2, 1 if 0 or undefined);
    distance = rms over the measurements finite on at least one side of the scaled difference, where
    a measurement that exists on one side only (e.g. no arc pixels) counts as ``MISSING_PENALTY``
    widths; none finite on either side: 0. Ties by index."""
    cols = list(MEASUREMENTS)
    a = np.column_stack([np.asarray(injected[c], np.float64) for c in cols])
    b = np.column_stack([np.asarray(real[c], np.float64) for c in cols])
    scale = np.ones(len(cols))
    for j in range(len(cols)):
        f = a[np.isfinite(a[:, j]), j]
        if f.size >= 2:
            w = (np.quantile(f, 0.84) - np.quantile(f, 0.16)) / 2
            scale[j] = w if w > 0 else 1.0
    out = []
    fa = np.isfinite(a)
    for row in b:
        fb = np.isfinite(row)
        d2 = np.where(fa & fb, ((a - np.where(fb, row, 0.0)) / scale) ** 2, 0.0)
        d2 = np.where(fa ^ fb, MISSING_PENALTY ** 2, d2)
        cnt = (fa | fb).sum(axis=1)
        dist = np.sqrt(d2.sum(axis=1) / np.maximum(cnt, 1))
        out.append([int(i) for i in np.argsort(dist, kind="stable")[:k]])
    return out


PROBE_NOTE = (f"AUC of a grouped logistic probe, injections (1) vs real lenses (0): 0.5 = indistinguishable; "
              f"the seed project measured {SEED_PROJECT_AUC} for its Sersic injections vs real lenses (the number "
              f"to beat). Groups (targets) hold one label each, so the null shuffles whole targets' labels "
              f"between targets (null_aucs, p_value); auc_interval bootstraps the targets.")


def realism_section(injected: dict[str, np.ndarray], real: dict[str, np.ndarray], probe: dict, *,
                    n_injected_ok: int, sample_fraction: float, params: dict) -> dict:
    """The report's ``realism`` section: per-measurement :func:`two_sample`, the no-arc counts,
    the probe's result (``grouped_auc`` dict) with :data:`PROBE_NOTE`, the parameters used."""
    return {
        "n_injected": int(len(injected["arc_pixels"])), "n_real": int(len(real["arc_pixels"])),
        "n_injected_ok": int(n_injected_ok), "injected_sample_fraction": float(sample_fraction),
        "measurements": {m: two_sample(injected[m], real[m]) for m in MEASUREMENTS},
        "no_arc_pixels": {"injected": int(np.sum(injected["arc_pixels"] == 0)),
                          "real": int(np.sum(real["arc_pixels"] == 0))},
        "probe": {**probe, "auc_to_beat": SEED_PROJECT_AUC, "note": PROBE_NOTE,
                  **({"refusal": probe["note"]} if probe.get("refused") else {})},
        "params": dict(params),
    }


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def summary_lines(section: dict) -> list[str]:
    """The printed realism table: the probe's AUC, then one line per measurement."""
    p = section["probe"]
    if p.get("auc") is None:
        probe = f"probe refused ({p.get('refusal') or p.get('note')})"
    else:
        lo, hi = p.get("auc_interval") or (None, None)
        probe = f"probe AUC {_fmt(p['auc'])} [{_fmt(lo)}, {_fmt(hi)}] (to beat: {SEED_PROJECT_AUC}; 0.5 = indistinguishable)"
        if p.get("null_aucs"):
            probe += f", null median {_fmt(p['null_aucs']['q0.5'])} (95% {_fmt(p['null_aucs']['q0.95'])}), p {_fmt(p['p_value'])}"
    lines = [f"realism: {section['n_injected']} injected vs {section['n_real']} real lenses; {probe}",
             f"  {'measurement':<24} {'injected q16/q50/q84':>24} {'real q16/q50/q84':>24} {'n inj/real':>11} "
             f"{'KS p':>8} {'AD p':>8}"]
    for name, m in section["measurements"].items():
        qi, qr = m["injected"], m["real"]
        inj = "/".join(_fmt(qi[k]) for k in ("q0.16", "q0.5", "q0.84"))
        rea = "/".join(_fmt(qr[k]) for k in ("q0.16", "q0.5", "q0.84"))
        ad = _fmt(m["ad_p"]) + ("*" if m["ad_p_clipped"] else "")
        lines.append(f"  {name:<24} {inj:>24} {rea:>24} {m['n_injected']:>5}/{m['n_real']:<5} "
                     f"{_fmt(m['ks_p'], '.2g'):>8} {ad:>8}")
    return lines + ["  (AD p marked * is clipped to scipy's table [0.001, 0.25])"]
