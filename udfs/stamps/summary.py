"""The ``_summary.json`` of a stage-5 stamps dataset: counts, failure rates by label and reason,
PSF and depth quantiles (5/50/95 %) by label, rows per split; PSF sources counted per band
(:func:`udfs.survey.target_psf.source_method`) and the median noise correlation per band.

Pure pyarrow/pandas on the written files (no Spark): :func:`read_status` reads the few columns
needed, :func:`summarise` turns them into the summary.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from udfs.io.datasets import read_columns
from udfs.schemas import stamps as schema
from udfs.survey.target_psf import source_method


def read_status(uri: str, bands: str) -> pd.DataFrame:
    """Label, status and conditions of every stamp of the dataset at ``uri``, with its ``split``."""
    cols = (["is_control", "ok", "fail_reason"] + [f[0] for f in schema.condition_fields(bands)]
            + [f[0] for f in schema.psf_noise_fields(bands)])
    return read_columns(uri, schema.WHAT, cols + ["split"])


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
