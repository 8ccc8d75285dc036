"""Completeness (selection function) of a lens finder on injected stamps, with Wilson intervals.

Completeness in a bin = k / n: n ok injected stamps with a score whose truth falls in the bin, k of
them scored >= the threshold. Intervals: Wilson score intervals from
``astropy.stats.binom_conf_interval(interval='wilson')`` at the configured coverage. Bins are
half-open ``[lo, hi)`` except the last, which includes its upper edge; values outside the edges are
counted per axis as ``out_of_range`` (never silently dropped).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from astropy.stats import binom_conf_interval

COUNT_COLUMNS = ["axis", "axis2", "bin", "bin2", "threshold", "n", "k"]


def wilson(k, n, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson interval ``(lo, hi)`` for k successes of n trials (NaN where n == 0)."""
    k = np.atleast_1d(np.asarray(k, dtype=np.int64))
    n = np.atleast_1d(np.asarray(n, dtype=np.int64))
    lo, hi = np.full(k.shape, np.nan), np.full(k.shape, np.nan)
    has = n > 0
    if has.any():
        ci = binom_conf_interval(k[has], n[has], confidence_level=confidence, interval="wilson")
        lo[has], hi[has] = ci[0], ci[1]
    return lo, hi


def bin_index(values: np.ndarray, edges) -> np.ndarray:
    """Bin of each value (0..len(edges)-2), -1 outside the edges or not finite; last bin closed."""
    edges = np.asarray(edges, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(edges, v, side="right") - 1
    idx = np.where(v == edges[-1], len(edges) - 2, idx)
    return np.where(np.isfinite(v) & (idx >= 0) & (idx <= len(edges) - 2), idx, -1)


def count_bins(pdf: pd.DataFrame, bins: dict, thresholds, heatmap: tuple[str, str]) -> pd.DataFrame:
    """Partial counts for one batch of rows (columns: the axes and ``score``), summed by the caller.

    One row per (axis, bin, threshold) and per (heatmap cell, threshold); ``bin = -1`` counts the
    rows out of range (or null) on that axis. ``axis2``/``bin2`` are ``""``/-1 for 1-D rows.
    """
    score = pdf["score"].to_numpy(dtype=np.float64)
    out = []
    idx = {axis: bin_index(pdf[axis].to_numpy(dtype=np.float64), edges) for axis, edges in bins.items()}
    for t in thresholds:
        hit = score >= t
        for axis, edges in bins.items():
            b = idx[axis]
            for j in range(-1, len(edges) - 1):
                sel = b == j
                if sel.any():
                    out.append((axis, "", j, -1, float(t), int(sel.sum()), int(hit[sel].sum())))
        ax, ay = heatmap
        bx, by = idx[ax], idx[ay]
        good = (bx >= 0) & (by >= 0)
        if good.any():
            cells = pd.DataFrame({"bx": bx[good], "by": by[good], "hit": hit[good]})
            for (i, j), grp in cells.groupby(["bx", "by"], sort=True):
                out.append((ax, ay, int(i), int(j), float(t), len(grp), int(grp["hit"].sum())))
    return pd.DataFrame(out, columns=COUNT_COLUMNS)


def completeness_table(counts: pd.DataFrame, bins: dict, confidence: float) -> pd.DataFrame:
    """Summed counts -> rows with bin edges, completeness and Wilson interval."""
    df = counts.groupby(COUNT_COLUMNS[:5], as_index=False)[["n", "k"]].sum()
    df = df.sort_values(COUNT_COLUMNS[:5], kind="stable").reset_index(drop=True)

    def edge(axis, b, side):
        if not axis or b < 0:
            return np.nan
        return float(bins[axis][b + side])

    df["lo"] = [edge(a, b, 0) for a, b in zip(df["axis"], df["bin"])]
    df["hi"] = [edge(a, b, 1) for a, b in zip(df["axis"], df["bin"])]
    df["lo2"] = [edge(a, b, 0) for a, b in zip(df["axis2"], df["bin2"])]
    df["hi2"] = [edge(a, b, 1) for a, b in zip(df["axis2"], df["bin2"])]
    df["completeness"] = np.where(df["n"] > 0, df["k"] / df["n"].where(df["n"] > 0, 1), np.nan)
    df["ci_lo"], df["ci_hi"] = wilson(df["k"].to_numpy(), df["n"].to_numpy(), confidence)
    df["out_of_range"] = df["bin"] < 0
    return df


def heatmap_grid(table: pd.DataFrame, bins: dict, heatmap: tuple[str, str], threshold: float):
    """``(completeness, counts)`` arrays ``[x bin, y bin]`` of the 2-D map at one threshold."""
    ax, ay = heatmap
    nx, ny = len(bins[ax]) - 1, len(bins[ay]) - 1
    comp, cnt = np.full((nx, ny), np.nan), np.zeros((nx, ny), dtype=np.int64)
    sel = table[(table["axis"] == ax) & (table["axis2"] == ay) & (table["threshold"] == threshold)]
    for _, r in sel.iterrows():
        comp[int(r["bin"]), int(r["bin2"])] = r["completeness"]
        cnt[int(r["bin"]), int(r["bin2"])] = r["n"]
    return comp, cnt
