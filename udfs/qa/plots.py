"""Stage-6 pictures (matplotlib Agg, PNG bytes): stamp gallery, histograms, completeness heat map,
score distributions, the realism neighbours. Colour images use the Legacy Survey viewer's grz
stretch (:func:`udfs.qa.rgb.legacy_rgb`: z, r, g as R, G, B), the same for every picture."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from udfs.qa.rgb import legacy_rgb  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def gallery(pairs: list[dict], bands: str, title: str) -> bytes:
    """One row per pair (sorted by arc SNR by the caller): injected | control | injected - control.

    ``pairs``: dicts with ``injected``, ``control`` ((n_bands, N, N) arrays), ``label`` (text)."""
    n = len(pairs)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n + 0.5), squeeze=False)
    for row, p in zip(axes, pairs):
        diff = p["injected"] - p["control"]
        for ax, img, name in zip(row, (p["injected"], p["control"], diff), ("injected", "control", "difference")):
            ax.imshow(legacy_rgb(img, bands), origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=7)
        row[0].set_ylabel(p["label"], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _png(fig)


def neighbours(rows: list[dict], bands: str, title: str) -> bytes:
    """One row per real lens: the real cutout, then its nearest injections (same stretch).

    ``rows``: dicts with ``real`` (an (n_bands, N, N) array), ``real_label`` (text) and
    ``neighbours`` (a list of ``{"image", "label"}``); rows may hold different numbers of neighbours."""
    n = max(1, len(rows))
    k = 1 + max([len(r["neighbours"]) for r in rows] or [0])
    fig, axes = plt.subplots(n, k, figsize=(2.2 * k, 2.3 * n + 0.5), squeeze=False)
    for row, r in zip(axes, rows):
        panels = [(r["real"], r["real_label"])] + [(p["image"], p["label"]) for p in r["neighbours"]]
        for ax, (img, label) in zip(row, panels):
            ax.imshow(legacy_rgb(img, bands), origin="lower")
            ax.set_title(label, fontsize=6)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[len(panels):]:
            ax.axis("off")
    if not rows:
        axes[0, 0].axis("off")
        axes[0, 0].set_title("no real lenses", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _png(fig)


def histograms(samples: dict[str, dict[str, np.ndarray]], bins: int, title: str) -> bytes:
    """A grid of histograms; ``samples[column][label] = values`` (labels overlaid, e.g. datasets)."""
    cols = list(samples)
    ncol = 4
    nrow = max(1, -(-len(cols) // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.5 * nrow), squeeze=False)
    for ax, col in zip(axes.ravel(), cols):
        finite = {k: v[np.isfinite(v)] for k, v in samples[col].items()}
        allv = np.concatenate([v for v in finite.values()]) if finite else np.empty(0)
        if allv.size == 0:
            ax.set_title(f"{col}: no values", fontsize=8)
            continue
        lo, hi = np.percentile(allv, [0.5, 99.5])
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        for label, v in finite.items():
            ax.hist(np.clip(v, edges[0], edges[-1]), bins=edges, histtype="step", label=f"{label} (n={v.size})")
        ax.set_title(col, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(cols):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _png(fig)


def heatmap(values: np.ndarray, x_edges, y_edges, x_label: str, y_label: str, title: str,
            counts: np.ndarray | None = None) -> bytes:
    """``values[i, j]`` for x bin i, y bin j (NaN = empty) as a colour map in [0, 1], counts printed."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    nx, ny = values.shape
    mesh = ax.pcolormesh(np.arange(nx + 1), np.arange(ny + 1), np.ma.masked_invalid(values.T),
                         vmin=0, vmax=1, cmap="viridis")
    if counts is not None:
        for i in range(nx):
            for j in range(ny):
                if counts[i, j]:
                    ax.text(i + 0.5, j + 0.5, f"{values[i, j]:.2f}\nn={int(counts[i, j])}", ha="center",
                            va="center", fontsize=6, color="w" if values[i, j] < 0.6 else "k")
    ax.set_xticks(np.arange(nx + 1), [f"{e:g}" for e in x_edges], fontsize=7)
    ax.set_yticks(np.arange(ny + 1), [f"{e:g}" for e in y_edges], fontsize=7)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    fig.colorbar(mesh, ax=ax, label="completeness")
    fig.tight_layout()
    return _png(fig)


def score_distributions(groups: dict[str, np.ndarray], thresholds: dict[str, float], bins: int,
                        title: str) -> bytes:
    """Histograms of scores per group (e.g. anchors, negatives) with vertical threshold lines."""
    fig, ax = plt.subplots(figsize=(7, 4))
    allv = np.concatenate([np.asarray(v, float) for v in groups.values()])
    lo, hi = (float(np.min(allv)), float(np.max(allv))) if allv.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    for label, v in groups.items():
        ax.hist(v, bins=edges, histtype="step", density=True, label=f"{label} (n={len(v)})")
    for name, t in thresholds.items():
        ax.axvline(t, ls="--", lw=0.8, color="k")
        ax.text(t, ax.get_ylim()[1] * 0.95, name, rotation=90, fontsize=6, va="top")
    ax.set_yscale("log")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)
