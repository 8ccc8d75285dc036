"""Ray-shooting renderer: lensed surface brightness of a unit-flux source on a stamp grid.

Conventions
-----------
- Stamp: ``N x N`` pixels of ``pixel_scale`` arcsec; pixel ``(row j, column i)`` has its centre at
  ``x = (i - (N-1)/2) * pixel_scale``, ``y = (j - (N-1)/2) * pixel_scale`` (arcsec from the stamp
  centre). Lens centre and source position are in the same frame (source: in the source plane).
- Output: flux per pixel for a source of total (unlensed) flux 1, i.e. the mean surface brightness
  over the pixel times its area. The lensed total is the magnification; nothing is renormalised.
- ``cosmos`` sources: a unit-sum bank image of ``scale`` arcsec/pixel, read as surface brightness
  ``image / scale**2`` with bilinear interpolation and zero outside (as lenstronomy's INTERPOL),
  centred on ``(src_x, src_y)`` and rotated counter-clockwise by ``src_phi``. The kernel reads each
  image from its footprint crop (:class:`udfs.sources.bank.Crops`) with the whole square's
  coordinates, so the result is the same as on the square.
- ``sersic`` sources: ``I(R) = I_e exp(-b_n ((R/R_e)^(1/n) - 1))``, ``R = sqrt(q x'^2 + y'^2/q)``
  in the frame rotated by ``phi`` (lenstronomy's SERSIC_ELLIPSE; ``R_e`` is the circularised
  half-light radius), ``b_n`` exact (``gammaincinv(2n, 1/2)``), ``I_e`` normalised to unit flux.

Adaptive supersampling
----------------------
Pixel corners are ray-traced first. A pixel whose source-plane footprint (the bounding box of its
four traced corners, widened by half its size to cover folds near critical curves) misses the
source's support disc is not supersampled: ``cosmos`` pixels there are exactly 0 (the bank image is
zero outside its support), ``sersic`` pixels get ``k_outer x k_outer`` samples of the smooth outer
profile. Every other pixel gets ``k x k`` samples at the same sub-pixel centres lenstronomy uses for
``supersampling_factor = k``, but for ``sersic`` pixels whose footprint does not reach the profile's
centre. Those are first sampled at their centre and corners: where the five values differ by less
than ``SERSIC_SMOOTH`` of the pixel's value (or of ``SERSIC_FAINT`` of the peak in faint pixels),
the pixel is their 2-D Simpson mean (2/3 centre + 1/3 corner mean: exact for quadratics); the
others take 2 x 2, 4 x 4 or k x k samples, the fewest whose error, estimated from the centre sample
and the 2 x 2 mean (Richardson: the midpoint rule errs by ~E/m^2 with m x m samples), is within
``SERSIC_PIXEL_TOL`` of the pixel (or of ``SERSIC_FAINT`` of the peak).
The lens mapping is smooth away from the SIE's centre, so there the k x k sub-pixel source
positions are interpolated quadratically from rays traced at the pixel's 3 x 3 nodes (corners, edge
midpoints, centre); within ``EXACT_RAY_RADIUS_PIX`` pixels of the lens centre every ray is traced.
The tests bound the result against lenstronomy at supersampling 8 (<= 1% of the arc's peak pixel;
adaptive Sersic: <= 0.3% of the peak, <= 0.2% of the flux).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from udfs.lensing.image_count import count_images
from udfs.lensing.sersic_sampling import sersic_bn, sersic_ie, sersic_nodes, sersic_pixel_mean, sersic_sb
from udfs.lensing.lens_model import Lens, ray, sie_kernel_params
from udfs.config.limits import SERSIC_N_RANGE, ParameterError
from udfs.sources.bank import Crops, support_radius

MODE_COSMOS = 0
MODE_SERSIC = 1
SERSIC_CORE_RE = 6.0   # sersic: supersample inside this many R_e (major axis)
SERSIC_PIXEL_TOL = 1e-3  # sersic: estimated sampling error allowed per pixel, of its own brightness ...
SERSIC_FAINT = 0.05       # ... or of this fraction of the peak brightness in fainter pixels
SERSIC_SMOOTH = 0.15       # sersic: a pixel whose 5 node values vary by less than this (of its value) is smooth
EXACT_RAY_RADIUS_PIX = 3.0  # trace every sub-pixel ray this close to the lens centre


@njit(cache=True, inline="always")
def _bilinear(pixels, box, u, v):
    """Bilinear interpolation at (column u, row v) of the ``S x S`` bank image whose nonzero part is
    the crop ``box = (offset, y0, x0, height, width)`` of ``pixels``, with zeros outside it. The same
    arithmetic as on the whole square (same floor, same weights, same order): only the taps that
    fall outside the crop, all zeros there, are skipped."""
    off, y0, x0, h, w = box[0], box[1], box[2], box[3], box[4]
    if u <= x0 - 1.0 or v <= y0 - 1.0 or u >= x0 + w or v >= y0 + h:
        return 0.0
    i0 = int(math.floor(u))
    j0 = int(math.floor(v))
    fu = u - i0
    fv = v - j0
    val = 0.0
    for dj in range(2):
        j = j0 + dj - y0
        if j < 0 or j >= h:
            continue
        wv = fv if dj == 1 else 1.0 - fv
        for di in range(2):
            i = i0 + di - x0
            if i < 0 or i >= w:
                continue
            wu = fu if di == 1 else 1.0 - fu
            val += wu * wv * pixels[off + j * w + i]
    return val


@njit(cache=True, inline="always")
def _surface_brightness(bx, by, mode, pixels, box, inv_scale, sb_norm, c_img, sx, sy, cphi, sphi,
                        n_s, re_s, q_s, bn_s, ie_s):
    if mode == 1:
        return sersic_sb(bx, by, sx, sy, cphi, sphi, n_s, re_s, q_s, bn_s, ie_s)
    dx = bx - sx
    dy = by - sy
    return sb_norm * _bilinear(pixels, box, (cphi * dx + sphi * dy) * inv_scale + c_img,
                               (-sphi * dx + cphi * dy) * inv_scale + c_img)


@njit(cache=True)
def _render_batch(out, n_images, lens_p, mode, src_xy, src_phi, src_index, pixels, boxes, n_img, scale,
                  support, sersic_p, pixel_scale, k, k_outer):
    n_stamp, npix = out.shape[0], out.shape[1]
    c0 = (npix - 1) / 2.0
    c_img = (n_img - 1) / 2.0
    cbx = np.empty((npix + 1, npix + 1))
    cby = np.empty((npix + 1, npix + 1))
    csc = np.empty((npix, npix))  # sersic: surface brightness at the pixel centres ...
    csb = np.empty((npix + 1, npix + 1))  # ... and corners
    nbx = np.empty((3, 3))
    nby = np.empty((3, 3))
    half = 0.5 * pixel_scale
    exact_r2 = (EXACT_RAY_RADIUS_PIX * pixel_scale) ** 2
    # quadratic Lagrange weights of the k sub-pixel centres on nodes at 0, 1/2, 1 of the pixel
    lag = np.empty((k, 3))
    for a in range(k):
        u = (a + 0.5) / k
        lag[a, 0] = 2.0 * (u - 0.5) * (u - 1.0)
        lag[a, 1] = -4.0 * u * (u - 1.0)
        lag[a, 2] = 2.0 * u * (u - 0.5)
    for s in range(n_stamp):
        b, q, lc, ls, cx, cy, g1, g2 = (lens_p[s, 0], lens_p[s, 1], lens_p[s, 2], lens_p[s, 3],
                                        lens_p[s, 4], lens_p[s, 5], lens_p[s, 6], lens_p[s, 7])
        m = mode[s]
        sx, sy = src_xy[s, 0], src_xy[s, 1]
        cphi, sphi = math.cos(src_phi[s]), math.sin(src_phi[s])
        n_s, re_s, q_s, bn_s, ie_s = (sersic_p[s, 0], sersic_p[s, 1], sersic_p[s, 2],
                                      sersic_p[s, 3], sersic_p[s, 4])
        inv_scale = 1.0 / scale[s]
        sb_norm = inv_scale * inv_scale
        if m == 0:
            box = boxes[src_index[s]]
            radius = support[src_index[s]] * scale[s]
            kk_out = 0
        else:
            box = boxes[0]
            radius = SERSIC_CORE_RE * re_s / math.sqrt(q_s)
            kk_out = k_outer
        for j in range(npix + 1):
            y = (j - 0.5 - c0) * pixel_scale
            for i in range(npix + 1):
                x = (i - 0.5 - c0) * pixel_scale
                cbx[j, i], cby[j, i] = ray(x, y, b, q, lc, ls, cx, cy, g1, g2)
        n_images[s] = count_images(cbx, cby, sx, sy, c0, pixel_scale, b, q, lc, ls, cx, cy, g1, g2)
        peak = 0.0
        if m == 1:
            peak = sersic_nodes(csc, csb, cbx, cby, c0, pixel_scale, b, q, lc, ls, cx, cy, g1, g2, sx, sy, cphi,
                                sphi, n_s, re_s, q_s, bn_s, ie_s)
        for j in range(npix):
            for i in range(npix):
                x0 = min(cbx[j, i], cbx[j, i + 1], cbx[j + 1, i], cbx[j + 1, i + 1])
                x1 = max(cbx[j, i], cbx[j, i + 1], cbx[j + 1, i], cbx[j + 1, i + 1])
                y0 = min(cby[j, i], cby[j, i + 1], cby[j + 1, i], cby[j + 1, i + 1])
                y1 = max(cby[j, i], cby[j, i + 1], cby[j + 1, i], cby[j + 1, i + 1])
                pad = 0.5 * max(x1 - x0, y1 - y0)
                ddx = max(x0 - pad - sx, 0.0, sx - x1 - pad)
                ddy = max(y0 - pad - sy, 0.0, sy - y1 - pad)
                kk = k if ddx * ddx + ddy * ddy <= radius * radius else kk_out
                if m == 1 and (ddx > 0.0 or ddy > 0.0):  # the profile's centre is out of the footprint's reach
                    c00, c01, c10, c11 = csb[j, i], csb[j, i + 1], csb[j + 1, i], csb[j + 1, i + 1]
                    simpson = (2.0 * csc[j, i] + 0.25 * (c00 + c01 + c10 + c11)) / 3.0  # exact for quadratics
                    spread = max(c00, c01, c10, c11, csc[j, i]) - min(c00, c01, c10, c11, csc[j, i])
                    if spread <= SERSIC_SMOOTH * max(simpson, SERSIC_FAINT * peak):
                        out[s, j, i] = simpson * pixel_scale * pixel_scale
                        continue
                    if kk == k:
                        # (2 x 2 mean - centre sample) = -3E/4, so the 2 x 2 mean errs by |that| / 3
                        v2 = sersic_pixel_mean(i, j, 2, c0, pixel_scale, b, q, lc, ls, cx, cy, g1, g2, sx, sy, cphi,
                                               sphi, n_s, re_s, q_s, bn_s, ie_s)
                        err2 = abs(v2 - csc[j, i]) / 3.0
                        allowed = SERSIC_PIXEL_TOL * max(v2, SERSIC_FAINT * peak)
                        if err2 <= allowed:
                            out[s, j, i] = v2 * pixel_scale * pixel_scale
                            continue
                        kk = 4 if err2 <= 4.0 * allowed and k > 4 else k
                if kk != 0 and m == 0:
                    # tighter for bank images: the footprint against the image's square, in its
                    # own rotated pixel frame (bilinear support reaches from -1 to S)
                    u0, u1, v0, v1 = 1e30, -1e30, 1e30, -1e30
                    for a in range(2):
                        for c in range(2):
                            dx = cbx[j + a, i + c] - sx
                            dy = cby[j + a, i + c] - sy
                            uu = (cphi * dx + sphi * dy) * inv_scale + c_img
                            vv = (-sphi * dx + cphi * dy) * inv_scale + c_img
                            u0, u1 = min(u0, uu), max(u1, uu)
                            v0, v1 = min(v0, vv), max(v1, vv)
                    pad = 0.5 * max(u1 - u0, v1 - v0)
                    if u1 + pad <= -1.0 or v1 + pad <= -1.0 or u0 - pad >= n_img or v0 - pad >= n_img:
                        kk = 0
                if kk == 0:
                    out[s, j, i] = 0.0
                    continue
                acc = 0.0
                xc_pix = (i - c0) * pixel_scale
                yc_pix = (j - c0) * pixel_scale
                if kk != k or (xc_pix - cx) ** 2 + (yc_pix - cy) ** 2 < exact_r2:
                    for a in range(kk):
                        yy = (j - c0 - 0.5 + (a + 0.5) / kk) * pixel_scale
                        for c in range(kk):
                            xx = (i - c0 - 0.5 + (c + 0.5) / kk) * pixel_scale
                            bx, by = ray(xx, yy, b, q, lc, ls, cx, cy, g1, g2)
                            acc += _surface_brightness(bx, by, m, pixels, box, inv_scale, sb_norm, c_img, sx,
                                                       sy, cphi, sphi, n_s, re_s, q_s, bn_s, ie_s)
                    out[s, j, i] = acc * pixel_scale * pixel_scale / (kk * kk)
                    continue
                # Smooth part of the lens mapping: trace the pixel's 3 x 3 nodes (corners are
                # traced already), map them to source coordinates (bank-image pixels for cosmos),
                # and interpolate the k x k sub-pixel positions quadratically, row by row.
                for a in range(3):
                    for c in range(3):
                        if a % 2 == 0 and c % 2 == 0:
                            bx, by = cbx[j + a // 2, i + c // 2], cby[j + a // 2, i + c // 2]
                        else:
                            bx, by = ray(xc_pix + (c - 1) * half, yc_pix + (a - 1) * half,
                                         b, q, lc, ls, cx, cy, g1, g2)
                        if m == 0:
                            dx = bx - sx
                            dy = by - sy
                            bx = (cphi * dx + sphi * dy) * inv_scale + c_img
                            by = (-sphi * dx + cphi * dy) * inv_scale + c_img
                        nbx[a, c] = bx
                        nby[a, c] = by
                for a in range(kk):
                    l0, l1, l2 = lag[a, 0], lag[a, 1], lag[a, 2]
                    r0x = l0 * nbx[0, 0] + l1 * nbx[1, 0] + l2 * nbx[2, 0]
                    r1x = l0 * nbx[0, 1] + l1 * nbx[1, 1] + l2 * nbx[2, 1]
                    r2x = l0 * nbx[0, 2] + l1 * nbx[1, 2] + l2 * nbx[2, 2]
                    r0y = l0 * nby[0, 0] + l1 * nby[1, 0] + l2 * nby[2, 0]
                    r1y = l0 * nby[0, 1] + l1 * nby[1, 1] + l2 * nby[2, 1]
                    r2y = l0 * nby[0, 2] + l1 * nby[1, 2] + l2 * nby[2, 2]
                    for c in range(kk):
                        u = lag[c, 0] * r0x + lag[c, 1] * r1x + lag[c, 2] * r2x
                        v = lag[c, 0] * r0y + lag[c, 1] * r1y + lag[c, 2] * r2y
                        if m == 0:
                            acc += sb_norm * _bilinear(pixels, box, u, v)
                        else:
                            acc += _surface_brightness(u, v, m, pixels, box, inv_scale, sb_norm, c_img, sx,
                                                       sy, cphi, sphi, n_s, re_s, q_s, bn_s, ie_s)
                out[s, j, i] = acc * pixel_scale * pixel_scale / (kk * kk)


def render_unit_arcs(lens: Lens, *, npix: int, pixel_scale: float, mode: np.ndarray,
                     src_x: np.ndarray, src_y: np.ndarray, src_phi: np.ndarray,
                     src_index: np.ndarray | None = None, images: Crops | np.ndarray | None = None,
                     image_scale=None, support: np.ndarray | None = None,
                     sersic_n=None, sersic_re=None, sersic_q=None, k: int = 8,
                     k_outer: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Lensed images of unit-flux sources and the number of images of each source centre.

    Returns ``(images, n_images)``: ``(B, npix, npix)`` float64 flux per pixel (its sum is the
    magnification of the part of the lensed source on the stamp) and ``(B,)`` int counts.

    ``mode``: per stamp ``MODE_COSMOS`` or ``MODE_SERSIC``. Cosmos stamps use bank image
    ``src_index`` of ``images``: the bank's footprint crops (:class:`udfs.sources.bank.Crops`) or
    ``(N, S, S)`` squares (cropped here), unit sum, ``image_scale`` arcsec/pix, one value or one per
    stamp (e.g. rescaled to each source redshift); ``support`` from
    :func:`udfs.sources.bank.support_radius`, computed here if omitted. Sersic stamps use
    ``sersic_n`` (within ``SERSIC_N_RANGE``), ``sersic_re`` (arcsec, circularised), ``sersic_q``;
    ``src_phi`` is the position angle (rad, counter-clockwise from +x).
    """
    nb = len(lens)
    mode = np.broadcast_to(np.asarray(mode, dtype=np.int64), (nb,)).copy()
    if k < 1 or k_outer < 1:
        raise ParameterError("supersampling factors must be >= 1")
    lens_p = np.array([sie_kernel_params(lens.theta_e[i], lens.e1[i], lens.e2[i], lens.center_x[i],
                                         lens.center_y[i], lens.gamma1[i], lens.gamma2[i])
                       for i in range(nb)], dtype=np.float64).reshape(nb, 8)
    src_xy = np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), (nb,)) for v in (src_x, src_y)],
                      axis=-1)
    src_phi = np.broadcast_to(np.asarray(src_phi, dtype=np.float64), (nb,)).copy()
    is_sersic = mode == MODE_SERSIC
    sersic_p = _sersic_params(is_sersic, sersic_n, sersic_re, sersic_q)
    src_index, images, image_scale, support = _cosmos_inputs(~is_sersic, src_index, images, image_scale, support)
    out = np.empty((nb, npix, npix))
    n_images = np.zeros(nb, dtype=np.int64)
    _render_batch(out, n_images, lens_p, mode, src_xy, src_phi, src_index, images.pixels, images.boxes,
                  images.size, image_scale, np.asarray(support, dtype=np.float64), sersic_p,
                  float(pixel_scale), int(k), int(k_outer))
    return out, n_images


def _sersic_params(is_sersic: np.ndarray, sersic_n, sersic_re, sersic_q) -> np.ndarray:
    """``(B, 5)`` kernel parameters ``(n, R_e, q, b_n, I_e)`` of the Sersic stamps (zeros elsewhere)."""
    nb = len(is_sersic)
    sersic_p = np.zeros((nb, 5))
    if not is_sersic.any():
        return sersic_p
    n, re, q = (np.broadcast_to(np.asarray(v, dtype=np.float64), (nb,)) for v in (sersic_n, sersic_re, sersic_q))
    lo, hi = SERSIC_N_RANGE
    bad = is_sersic & ~((n >= lo) & (n <= hi) & (re > 0) & (q > 0) & (q <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParameterError(f"stamp {i}: Sersic needs {lo} <= n <= {hi}, R_e > 0, 0 < q <= 1; "
                             f"got n={n[i]}, R_e={re[i]}, q={q[i]}")
    sel = is_sersic
    sersic_p[sel, 0], sersic_p[sel, 1], sersic_p[sel, 2] = n[sel], re[sel], q[sel]
    sersic_p[sel, 3] = sersic_bn(n[sel])
    sersic_p[sel, 4] = sersic_ie(n[sel], re[sel])
    return sersic_p


def _cosmos_inputs(is_cosmos: np.ndarray, src_index, images, image_scale, support):
    """``(src_index, crops, image_scale, support)`` for the kernel, checked; placeholders when no
    stamp is a cosmos stamp."""
    nb = len(is_cosmos)
    if is_cosmos.any():
        if images is None or image_scale is None:
            raise ParameterError("cosmos sources need the bank images and their pixel scale")
        if not isinstance(images, Crops):
            images = Crops.from_squares(images)
        src_index = np.broadcast_to(np.asarray(src_index, dtype=np.int64), (nb,)).copy()
        bad = is_cosmos & ((src_index < 0) | (src_index >= len(images)))
        if bad.any():
            raise ParameterError(f"source index {int(src_index[bad][0])} out of range: the bank holds "
                                 f"{len(images)} galaxies")
        if support is None:
            support = support_radius(images)
    else:
        images = Crops.checked(np.zeros(0, np.float32), np.zeros((1, 5), np.int64), 2)
        image_scale = 1.0
        support = np.zeros(1)
        src_index = np.zeros(nb, dtype=np.int64)
    image_scale = np.broadcast_to(np.asarray(image_scale, dtype=np.float64), (nb,)).copy()
    if not np.all(image_scale > 0):
        raise ParameterError("source image pixel scales must be > 0")
    return src_index, images, image_scale, support
