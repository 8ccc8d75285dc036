"""The ``_summary.json`` of a stage-5 stamps dataset: counts, failure rates by label and reason,
PSF and depth quantiles (5/50/95 %) by label, rows per split; PSF sources counted per band
(:func:`udfs.survey.target_psf.source_method`) and the median noise correlation per band.

Pure pyarrow/pandas on the written files (no Spark), one file at a time (:func:`dataset_summary`):
the counts are exact; the quantiles and medians come from the :data:`QUANTILE_SAMPLE` rows per label
with the smallest hash of ``task_id`` (a uniform, deterministic sample: every row when there are
fewer, so exact there), so the driver's memory does not grow with the dataset.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from udfs.io import storage
from udfs.io.datasets import DatasetError, dataset_files, partition_values
from udfs.schemas import stamps as schema
from udfs.survey.target_psf import source_method

QUANTILE_SAMPLE = 200_000


def _status_columns(bands: str) -> list[str]:
    return (["task_id", "is_control", "ok", "fail_reason"] + [f[0] for f in schema.condition_fields(bands)]
            + [f[0] for f in schema.psf_noise_fields(bands)])


def _file_status(uri: str, path: str, bands: str) -> pd.DataFrame:
    """Label, status and conditions of the stamps of one file of the dataset at ``uri``, with ``split``."""
    with storage.open_input(path) as f:
        df = pq.read_table(f, columns=_status_columns(bands)).to_pandas()
    df["split"] = partition_values(uri, path).get("split")
    return df


def _label(df: pd.DataFrame) -> pd.Series:
    return df["is_control"].map({True: "control", False: "injected"})


def dataset_summary(uri: str, bands: str, sample: int = QUANTILE_SAMPLE) -> dict:
    """:func:`summarise` of the dataset at ``uri``, read file by file (see module doc)."""
    counts: dict[str, Counter] = {}
    kept: dict[str, pd.DataFrame] = {}
    files = dataset_files(uri)
    if not files:
        raise DatasetError(f"{uri}: no Parquet files found (expected {schema.WHAT})")
    for f in files:
        df = _file_status(uri, f, bands)
        df["_hash"] = pd.util.hash_pandas_object(df.pop("task_id"), index=False).to_numpy()
        for label, part in df.groupby(_label(df)):
            c = counts.setdefault(label, Counter())
            c["n"] += len(part)
            c["n_ok"] += int(part["ok"].sum())
            c.update({("fail", str(k)): int(v) for k, v in part.loc[~part["ok"], "fail_reason"].value_counts().items()})
            c.update({("split", str(k)): int(v) for k, v in part["split"].value_counts().items()})
            for b in bands:
                c.update({(b, str(k)): int(v) for k, v in part.loc[part["ok"], f"psf_source_{b}"].map(source_method)
                          .value_counts().items()})
            both = pd.concat([kept[label], part]) if label in kept else part
            kept[label] = both.nsmallest(sample, "_hash") if len(both) > sample else both
    out = summarise(pd.concat(list(kept.values()), ignore_index=True), bands)
    out["n_stamps"] = sum(c["n"] for c in counts.values())
    out["n_ok"] = sum(c["n_ok"] for c in counts.values())
    for label, c in counts.items():
        row = out["by_label"][label]
        row.update(n=c["n"], n_ok=c["n_ok"], failure_rate=float(1 - c["n_ok"] / c["n"]),
                   fail_reasons=_keyed(c, "fail"), by_split=_keyed(c, "split"))
    out["psf_source_counts"] = {b: dict(sorted(sum((Counter(_keyed(c, b)) for c in counts.values()),
                                                   Counter()).items())) for b in bands}
    return out


def _keyed(c: Counter, kind: str) -> dict[str, int]:
    """The ``(kind, key)`` entries of a counter as ``{key: count}``, keys sorted."""
    return {k[1]: int(v) for k, v in sorted((k, v) for k, v in c.items() if isinstance(k, tuple) and k[0] == kind)}


def summarise(df: pd.DataFrame, bands: str) -> dict:
    """Counts and failure rates by label and reason; PSF and depth quantiles by label (see module doc)."""
    conditions = [f[0] for f in schema.condition_fields(bands)]
    out = {"n_stamps": int(len(df)), "n_ok": int(df["ok"].sum()), "by_label": {}}
    for label, part in df.groupby(df["is_control"].map({True: "control", False: "injected"})):
        reasons = part.loc[~part["ok"], "fail_reason"].value_counts().sort_index()
        q = {c: [float(x) for x in np.nanquantile(part[c].astype(float), [0.05, 0.5, 0.95])]
             for c in conditions if part[c].notna().any()}
        out["by_label"][label] = {
            "n": int(len(part)), "n_ok": int(part["ok"].sum()),
            "failure_rate": float(1 - part["ok"].mean()),
            "fail_reasons": {str(k): int(v) for k, v in reasons.items()},
            "quantiles_5_50_95": q,
            "by_split": {str(k): int(v) for k, v in part["split"].value_counts().sort_index().items()},
        }
    ok = df[df["ok"]]
    out["psf_source_counts"] = {
        b: {str(k): int(v) for k, v in ok[f"psf_source_{b}"].map(source_method).value_counts().sort_index().items()}
        for b in bands}
    out["noise_corr_median"] = {b: (float(np.nanmedian(ok[f"noise_corr_{b}"].astype(float)))
                                    if ok[f"noise_corr_{b}"].notna().any() else None) for b in bands}
    return out
