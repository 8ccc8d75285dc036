"""Number of images of a point source: lens-equation solutions on the stamp (the ``n_images`` metric).

The renderer traces the stamp's pixel corners once (:mod:`udfs.lensing.render`); here the traced
corner grid is searched for cells whose source-plane image contains the source centre, each
candidate is refined by Newton's method on the lens equation and duplicates are dropped. Frames
and units as in :mod:`udfs.lensing.render` (arcsec from the stamp centre).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from udfs.lensing.lens_model import ray


@njit(cache=True)
def _newton_image(x, y, bxs, bys, b, q, lc, ls, cx, cy, g1, g2):
    """Refine an image-plane point (x, y) so that it maps onto (bxs, bys); returns (x, y, ok)."""
    h = 1e-6
    for _ in range(30):
        bx, by = ray(x, y, b, q, lc, ls, cx, cy, g1, g2)
        rx, ry = bx - bxs, by - bys
        if rx * rx + ry * ry < 1e-20:
            return x, y, True
        bx1, by1 = ray(x + h, y, b, q, lc, ls, cx, cy, g1, g2)
        bx2, by2 = ray(x, y + h, b, q, lc, ls, cx, cy, g1, g2)
        a11, a21 = (bx1 - bx) / h, (by1 - by) / h
        a12, a22 = (bx2 - bx) / h, (by2 - by) / h
        det = a11 * a22 - a12 * a21
        if det == 0.0:
            return x, y, False
        x -= (a22 * rx - a12 * ry) / det
        y -= (-a21 * rx + a11 * ry) / det
    return x, y, False


@njit(cache=True, inline="always")
def _in_triangle(px, py, ax, ay, bx, by, cx, cy):
    d1 = (px - bx) * (ay - by) - (ax - bx) * (py - by)
    d2 = (px - cx) * (by - cy) - (bx - cx) * (py - cy)
    d3 = (px - ax) * (cy - ay) - (cx - ax) * (py - ay)
    neg = d1 < 0 or d2 < 0 or d3 < 0
    pos = d1 > 0 or d2 > 0 or d3 > 0
    return not (neg and pos)


@njit(cache=True, inline="always")
def _cell_contains(px, py, gx, gy, j, i):
    """Whether the traced cell with corners (j, i)..(j+1, i+1) covers (px, py), as two triangles."""
    return (_in_triangle(px, py, gx[j, i], gy[j, i], gx[j, i + 1], gy[j, i + 1], gx[j + 1, i + 1],
                         gy[j + 1, i + 1]) or
            _in_triangle(px, py, gx[j, i], gy[j, i], gx[j + 1, i + 1], gy[j + 1, i + 1], gx[j + 1, i],
                         gy[j + 1, i]))


@njit(cache=True)
def _add_image(found, nfound, x, y, cell, sx, sy, b, q, lc, ls, cx, cy, g1, g2):
    """Refine a candidate from a cell of size ``cell`` centred on (x, y); append it if new."""
    xi, yi, ok = _newton_image(x, y, sx, sy, b, q, lc, ls, cx, cy, g1, g2)
    if not ok or abs(xi - x) > 1.5 * cell or abs(yi - y) > 1.5 * cell:
        return nfound
    if (xi - cx) ** 2 + (yi - cy) ** 2 < 1e-12:
        return nfound
    for f in range(nfound):
        if (found[f, 0] - xi) ** 2 + (found[f, 1] - yi) ** 2 < 1e-10:
            return nfound
    if nfound < found.shape[0]:
        found[nfound, 0] = xi
        found[nfound, 1] = yi
        nfound += 1
    return nfound


@njit(cache=True)
def _scan_cell(found, nfound, x0, y0, cell, m, sx, sy, b, q, lc, ls, cx, cy, g1, g2):
    """Split the square cell with lower-left corner (x0, y0) into m x m sub-cells of two
    triangles each; ray-trace their corners and refine every triangle containing the source."""
    h = cell / m
    gx = np.empty((m + 1, m + 1))
    gy = np.empty((m + 1, m + 1))
    for a in range(m + 1):
        for c in range(m + 1):
            gx[a, c], gy[a, c] = ray(x0 + c * h, y0 + a * h, b, q, lc, ls, cx, cy, g1, g2)
    for a in range(m):
        for c in range(m):
            xc, yc = x0 + (c + 0.5) * h, y0 + (a + 0.5) * h
            if abs(xc - cx) <= 0.5 * h and abs(yc - cy) <= 0.5 * h:
                continue  # the SIE's singular core holds no image
            if _cell_contains(sx, sy, gx, gy, a, c):
                nfound = _add_image(found, nfound, xc, yc, h, sx, sy, b, q, lc, ls, cx, cy, g1, g2)
    return nfound


@njit(cache=True)
def count_images(cbx, cby, sx, sy, c0, pixel_scale, b, q, lc, ls, cx, cy, g1, g2):
    """Number of images of the source centre on the stamp.

    Triangles of traced pixel corners that contain the source are refined by Newton's method on
    the lens equation and de-duplicated. The 3 x 3 pixels around the lens centre, where the SIE
    deflection turns too fast for a pixel-sized linear map, are also scanned on an 8x finer grid
    (the pixel holding the lens centre only on that grid).
    """
    npix = cbx.shape[0] - 1
    found = np.empty((16, 2))
    nfound = 0
    near = 1.5 * pixel_scale
    for j in range(npix):
        y = (j - c0) * pixel_scale
        for i in range(npix):
            x = (i - c0) * pixel_scale
            if abs(x - cx) <= near and abs(y - cy) <= near:
                nfound = _scan_cell(found, nfound, x - 0.5 * pixel_scale, y - 0.5 * pixel_scale,
                                    pixel_scale, 8, sx, sy, b, q, lc, ls, cx, cy, g1, g2)
                if abs(x - cx) <= 0.5 * pixel_scale and abs(y - cy) <= 0.5 * pixel_scale:
                    continue
            if _cell_contains(sx, sy, cbx, cby, j, i):
                nfound = _add_image(found, nfound, x, y, pixel_scale, sx, sy, b, q, lc, ls, cx, cy, g1, g2)
    return nfound
