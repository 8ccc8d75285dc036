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


def column_reader(columns: list[str]):
    """mapInPandas body over a ``path`` column: ``columns`` of each Parquet file (pyarrow, one file
    at a time, so the stamps' pixels are never read)."""
    def read(batches):
        import pyarrow.parquet as pq

        from udfs.io import storage

        for batch in batches:
            for path in batch["path"]:
                with storage.open_input(path) as f:
                    yield pq.read_table(f, columns=columns).to_pandas()[columns]
    return read


def bin_counter(bins: dict, thresholds, heatmap: tuple[str, str]):
    """mapInPandas body: :func:`count_bins` per batch (``COUNT_DDL`` rows, summed by the caller)."""
    def count(batches):
        for pdf in batches:
            yield count_bins(pdf, bins, thresholds, heatmap)
    return count


COUNT_DDL = "axis string, axis2 string, bin long, bin2 long, threshold double, n long, k long"


def rates_at_thresholds(inj_scores: np.ndarray, ctl_scores: np.ndarray, thresholds,
                        confidence: float) -> tuple[list[dict], list[dict]]:
    """Overall completeness of the injected stamps and false-positive rate of the controls per
    threshold (``score >= t``), each with its Wilson interval (None when there is no stamp)."""
    overall, fpr = [], []
    for t in thresholds:
        for name, arr, dest in (("completeness", inj_scores, overall), ("control_fpr", ctl_scores, fpr)):
            k, n = int((arr >= t).sum()), int(arr.size)
            lo, hi = wilson(k, n, confidence)
            dest.append({"threshold": t, "n": n, "k": k, name: (k / n if n else None),
                         "ci_lo": float(lo[0]) if n else None, "ci_hi": float(hi[0]) if n else None})
    return overall, fpr


def matched_counts(tally: list[dict], n_scores: int) -> dict:
    """How stamps and scores matched. ``tally``: rows ``{is_control, ok, scored, count}``."""
    def n_of(ctl, ok, scored):
        return sum(r["count"] for r in tally if r["is_control"] is ctl and r["ok"] is ok and r["scored"] is scored)

    n_matched = sum(r["count"] for r in tally if r["scored"])
    return {"injected_ok": n_of(False, True, True), "control_ok": n_of(True, True, True),
            "failed_stamps_with_score": n_of(False, False, True) + n_of(True, False, True),
            "injected_ok_without_score": n_of(False, True, False),
            "scores_without_stamp": int(n_scores - n_matched)}


def heatmap_pngs(table: pd.DataFrame, bins: dict, heatmap: tuple[str, str], thresholds) -> list[tuple[str, bytes]]:
    """``(file name, PNG)`` of the 2-D completeness map at each threshold."""
    from udfs.qa import plots

    out = []
    for t in thresholds:
        comp, cnt = heatmap_grid(table, bins, heatmap, t)
        out.append((f"completeness_heatmap_t{t:g}.png",
                    plots.heatmap(comp, bins[heatmap[0]], bins[heatmap[1]], heatmap[0], heatmap[1],
                                  f"completeness at score >= {t:g} (n per cell)", cnt)))
    return out


def completeness_summary(table: pd.DataFrame, matched: dict, inj_scores: np.ndarray, ctl_scores: np.ndarray,
                         cfg) -> dict:
    """``completeness.json`` without inputs, outputs and provenance (``cfg``: the completeness section)."""
    overall, fpr = rates_at_thresholds(inj_scores, ctl_scores, cfg.thresholds, cfg.confidence)
    return {
        "confidence": cfg.confidence, "thresholds": list(cfg.thresholds),
        "bins": {k: list(v) for k, v in cfg.bins.items()}, "heatmap": list(cfg.heatmap),
        "matched": matched, "overall": overall, "control_false_positive_rate": fpr,
        "table": table.replace({np.nan: None}).to_dict(orient="records"),
    }
