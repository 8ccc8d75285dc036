"""Per-row and per-pair checks of the stage-5 stamps dataset, and the comparison of two reports.

Everything here is NumPy/pandas on one file or one batch of pairs; ``jobs.validate_cosmos_injection``
runs it in Spark tasks and aggregates. Conventions: images and arcs in nanomaggies, invvar in
nanomaggies^-2, ``gain_<band>`` in electrons per nanomaggy, radii from the stamp centre.

Flux accounting (per pair, per band). The injected image is ``cutout + Poisson(arc * gain) / gain``
stored as float32, the control is the same cutout, and ``arc`` is the noiseless arc. So
``d = injected - control`` must equal ``arc`` within the arc's shot noise where ``arc > 0``
(variance ``arc / gain``) and be exactly 0 where ``arc <= 0``, up to float32 rounding (one spacing
of each stored value, ``numpy.spacing``). Reported: ``z_sum`` = summed residual over its sigma,
``chi2_dof`` = mean squared per-pixel residual in sigma units over the pixels where the arc
holds >= ``CHI2_MIN_ELECTRONS`` electrons (Gaussian regime; fainter pixels make the mean
heavy-tailed), 1 for correct noise, ~0 when the stored arc already holds the noise, ``zero_viol`` = pixels with ``arc <= 0`` where ``|d|`` exceeds
``zero_pixel_rounding_units`` spacings.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from udfs.stamps.pixels import StampInputError, StampLayout, annulus_mask, core_mask, hash_uniform, \
    pixel_array, radii

IDENTITY = ["task_id", "target_id", "pair_id", "is_control", "replicate", "seed", "config_hash",
            "code_version", "ra", "dec", "brickname"]
TRUTH = ["theta_e", "lens_e1", "lens_e2", "shear_g1", "shear_g2", "src_x", "src_y", "src_phi", "src_mode",
         "src_index", "src_z", "src_mag_g", "src_mag_r", "src_mag_z", "sersic_n", "sersic_re_arcsec",
         "sersic_q", "src_gini", "src_m20", "src_clumpiness", "src_hlr_arcsec"]
CONDITIONS = ["psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_z", "psfdepth_g", "psfdepth_r", "psfdepth_z"]
METRICS = ["magnification", "arc_flux_g", "arc_flux_r", "arc_flux_z", "arc_snr_g", "arc_snr_r", "arc_snr_z",
           "arc_snr", "core_flux_frac", "n_images", "gain_g", "gain_r", "gain_z"]
STATUS = ["ok", "fail_reason"]
PIXELS = ["image", "invvar", "arc"]
REQUIRED = ["task_id", "pair_id", "is_control", "ok", "fail_reason", "theta_e", "arc_snr", "core_flux_frac",
            "magnification", "arc_flux_g", "arc_flux_r", "arc_flux_z", "psf_fwhm_r", "image", "invvar", "arc"]
SCALARS = IDENTITY + TRUTH + CONDITIONS + METRICS + STATUS
#: float columns that must be finite on ok injected rows (truth that always applies and metrics)
FINITE_INJECTED = ["theta_e", "lens_e1", "lens_e2", "shear_g1", "shear_g2", "src_x", "src_y", "src_mag_r",
                   "magnification", "arc_flux_g", "arc_flux_r", "arc_flux_z", "arc_snr", "core_flux_frac"]
CHI2_MIN_ELECTRONS = 10.0
ROW_CHECKS = ["nonfinite_image", "nonfinite_invvar", "nonfinite_arc", "negative_invvar",
              "failed_with_values", "control_arc_nonzero", "arc_r50_arcsec"]


def read_stamp_rows(path: str, layout: StampLayout, open_input, *, with_pixels: bool = True) -> pd.DataFrame:
    """One stamps file as pandas: scalar columns present in the file, the row checks, and (for ok
    rows, ``with_pixels``) the ``image`` and ``arc`` pixel lists; ``split`` from a ``split=`` folder."""
    with open_input(path) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise StampInputError(f"{path}: missing column(s) {', '.join(missing)}")
        cols = [c for c in SCALARS + ["split"] if c in names] + PIXELS
        table = pf.read(columns=cols)
    df = table.drop_columns(PIXELS).to_pandas()
    for c in SCALARS:
        if c not in df:
            df[c] = None
    if "split" not in df:
        df["split"] = next((seg.split("=", 1)[1] for seg in path.split("/")[:-1] if seg.startswith("split=")), None)
    shape = (layout.n_bands, layout.npix, layout.npix)
    image = pixel_array(table.column("image"), shape)
    invvar = pixel_array(table.column("invvar"), shape)
    arc = pixel_array(table.column("arc"), shape)
    checks = row_checks(df["ok"].to_numpy(bool), df["is_control"].to_numpy(bool), image, invvar, arc,
                        layout.pixel_scale)
    for k, v in checks.items():
        df[k] = v
    if with_pixels:
        ok = df["ok"].to_numpy(bool)
        df["image"] = [image[i].ravel().astype(np.float32) if ok[i] else None for i in range(len(df))]
        df["arc"] = [arc[i].ravel().astype(np.float32) if ok[i] else None for i in range(len(df))]
    return df


def row_checks(ok: np.ndarray, is_control: np.ndarray, image: np.ndarray, invvar: np.ndarray,
               arc: np.ndarray, pixel_scale: float) -> dict[str, np.ndarray]:
    """Per-row pixel checks: non-finite counts (ok rows), negative invvar, failed rows that still
    hold values, controls with a non-zero arc, and the arc's half-light radius (arcsec, injected)."""
    axes = (1, 2, 3)
    n = len(ok)
    out = {
        "nonfinite_image": np.where(ok, (~np.isfinite(image)).sum(axis=axes), 0),
        "nonfinite_invvar": np.where(ok, (~np.isfinite(invvar)).sum(axis=axes), 0),
        "nonfinite_arc": np.where(ok, (~np.isfinite(arc)).sum(axis=axes), 0),
        "negative_invvar": np.where(ok, (invvar < 0).sum(axis=axes), 0),
        "failed_with_values": ~ok & (np.isfinite(image).any(axis=axes) | np.isfinite(arc).any(axis=axes)),
        "control_arc_nonzero": ok & is_control & (np.nan_to_num(arc) != 0).any(axis=axes),
    }
    r50 = np.full(n, np.nan)
    sel = np.flatnonzero(ok & ~is_control)
    if sel.size:
        r50[sel] = half_light_radius(arc[sel], pixel_scale)
    out["arc_r50_arcsec"] = r50
    return out


def half_light_radius(arcs: np.ndarray, pixel_scale: float) -> np.ndarray:
    """``(B,)`` radius (arcsec) about the stamp centre holding half the band-summed positive arc flux
    (the lensed size: for an Einstein ring it approaches theta_E); NaN for an arc without flux."""
    flux = np.clip(np.nan_to_num(arcs), 0, None).sum(axis=1).reshape(len(arcs), -1)
    r = radii(arcs.shape[-1]).ravel()
    order = np.argsort(r, kind="stable")
    cum = np.cumsum(flux[:, order], axis=1)
    total = cum[:, -1]
    idx = np.array([np.searchsorted(c, 0.5 * t) if t > 0 else -1 for c, t in zip(cum, total)])
    return np.where(idx >= 0, r[order][np.clip(idx, 0, None)] * pixel_scale, np.nan)


def flux_residuals(injected: np.ndarray, control: np.ndarray, arc: np.ndarray, gains: np.ndarray,
                   rounding_units: float) -> dict[str, np.ndarray]:
    """Per pair and band (``(B, n_bands)`` arrays): ``z_sum``, ``chi2_dof``, ``zero_viol`` (module doc)."""
    d = injected - control
    finite = np.isfinite(d) & np.isfinite(arc)
    spacing = np.spacing(np.abs(injected).astype(np.float32)).astype(np.float64) + \
        np.spacing(np.abs(np.nan_to_num(arc)).astype(np.float32)).astype(np.float64)
    g = np.asarray(gains, dtype=np.float64)[:, :, None, None]
    lit = finite & (arc > 0)
    var = np.where(lit, np.where(g > 0, np.clip(arc, 0, None) / np.where(g > 0, g, 1.0), np.nan) + spacing ** 2, 0.0)
    resid = np.where(lit, d - arc, 0.0)
    axes = (2, 3)
    n_lit = lit.sum(axis=axes)
    bright = lit & (np.clip(np.nan_to_num(arc), 0, None) * np.where(g > 0, g, 0.0) >= CHI2_MIN_ELECTRONS)
    n_bright = bright.sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        z_sum = resid.sum(axis=axes) / np.sqrt(var.sum(axis=axes))
        chi2 = np.where(bright, resid ** 2 / np.where(lit, var, 1.0), 0.0).sum(axis=axes) / n_bright
    dark = finite & (arc <= 0)
    zero_viol = (dark & (np.abs(np.where(dark, d, 0.0)) > rounding_units * spacing)).sum(axis=axes)
    return {"z_sum": np.where(n_lit > 0, z_sum, np.nan), "chi2_dof": np.where(n_bright > 0, chi2, np.nan),
            "zero_viol": zero_viol}


def pair_metrics(pdf: pd.DataFrame, layout: StampLayout, *, core_radius: float, annulus: tuple[float, float],
                 rounding_units: float, max_abs_sum_z: float, max_chi2_dof: float,
                 sample_fraction: float, seed: int) -> pd.DataFrame:
    """Rows of a full outer join of injected (``inj_*``) and control (``ctl_*``) rows on ``pair_id``
    -> one row per pair: completeness, flux accounting per band and, for the gate sample, the core
    and annulus pixels of both stamps (all bands, float32)."""
    n = len(pdf)
    shape = (layout.n_bands, layout.npix, layout.npix)
    complete = (pdf["inj_ok"].fillna(False).astype(bool) & pdf["ctl_ok"].fillna(False).astype(bool)).to_numpy()
    out = pd.DataFrame({"pair_id": pdf["pair_id"], "complete": complete,
                        "has_injected": pdf["inj_task_id"].notna().to_numpy(),
                        "has_control": pdf["ctl_task_id"].notna().to_numpy()})
    bands = layout.bands
    for b in bands:
        for k in ("z_sum", "chi2_dof"):
            out[f"{k}_{b}"] = np.nan
        out[f"zero_viol_{b}"] = 0
    out["flux_fail"] = None
    out["sampled"] = False
    for k in ("core_inj", "core_ctl", "ann_inj", "ann_ctl"):
        out[k] = None
    idx = np.flatnonzero(complete)
    if idx.size == 0:
        return out
    inj = pixel_array(pdf["inj_image"].iloc[idx].tolist(), shape)
    ctl = pixel_array(pdf["ctl_image"].iloc[idx].tolist(), shape)
    arc = pixel_array(pdf["inj_arc"].iloc[idx].tolist(), shape)
    gains = np.stack([pdf[f"inj_gain_{b}"].iloc[idx].astype(float).to_numpy() for b in bands], axis=1)
    res = flux_residuals(inj, ctl, arc, gains, rounding_units)
    for j, b in enumerate(bands):
        out.loc[idx, f"z_sum_{b}"] = res["z_sum"][:, j]
        out.loc[idx, f"chi2_dof_{b}"] = res["chi2_dof"][:, j]
        out.loc[idx, f"zero_viol_{b}"] = res["zero_viol"][:, j]
    with np.errstate(invalid="ignore"):
        fail = (np.abs(res["z_sum"]) > max_abs_sum_z) | (res["chi2_dof"] > max_chi2_dof) | \
               (res["zero_viol"] > 0) | ~np.isfinite(gains) | (gains <= 0)
    out["flux_fail"] = out["flux_fail"].astype(object)
    out.loc[idx, "flux_fail"] = fail.any(axis=1)
    keep = hash_uniform(pdf["pair_id"].iloc[idx].tolist(), seed) < sample_fraction
    core = core_mask(layout.npix, core_radius)
    ann = annulus_mask(layout.npix, *annulus)
    for j in np.flatnonzero(keep):
        i = idx[j]
        out.at[i, "sampled"] = True
        out.at[i, "core_inj"] = inj[j][:, core].ravel().astype(np.float32)
        out.at[i, "core_ctl"] = ctl[j][:, core].ravel().astype(np.float32)
        out.at[i, "ann_inj"] = inj[j][:, ann].ravel().astype(np.float32)
        out.at[i, "ann_ctl"] = ctl[j][:, ann].ravel().astype(np.float32)
    return out


def quantile_block(values: dict[str, list], probs) -> dict:
    """``{column: {"q0.5": v, ...}}`` from per-column lists aligned with ``probs`` (None stays None)."""
    return {col: (None if vals is None else {f"q{p:g}": (None if v is None else float(v))
                                             for p, v in zip(probs, vals)})
            for col, vals in values.items()}


def compare_reports(a: dict, b: dict, *, median_shift: float, rate_diff: float) -> dict:
    """Differences that matter between two reports (A = --stamps, B = --compare).

    Highlighted: a distribution whose median moved by more than ``median_shift`` x the mean of the
    two inter-quantile ranges q0.16..q0.84 (about 1 sigma either side), failure and flux-accounting
    rates that differ by more than ``rate_diff``, gates whose AUC or flag differ.
    """
    highlights, rows = [], []
    for section in ("injected", "morphology", "psf_depth_injected", "psf_depth_control"):
        da, db = a.get("distributions", {}).get(section, {}), b.get("distributions", {}).get(section, {})
        for col in sorted(set(da) & set(db)):
            qa, qb = da[col], db[col]
            if not qa or not qb or qa.get("q0.5") is None or qb.get("q0.5") is None:
                continue
            spread = [q.get("q0.84") - q.get("q0.16") for q in (qa, qb)
                      if q.get("q0.84") is not None and q.get("q0.16") is not None]
            width = float(np.mean(spread)) if spread else 0.0
            shift = qb["q0.5"] - qa["q0.5"]
            rel = shift / width if width > 0 else (0.0 if shift == 0 else float("inf"))
            row = {"section": section, "column": col, "median_a": qa["q0.5"], "median_b": qb["q0.5"],
                   "shift": shift, "shift_over_width": rel, "highlight": abs(rel) > median_shift}
            rows.append(row)
            if row["highlight"]:
                highlights.append(f"{section}.{col}: median {qa['q0.5']:.4g} -> {qb['q0.5']:.4g} "
                                  f"({rel:+.2f} x the 16-84% width)")
    rates = []
    for key in ("failure_rate_injected", "failure_rate_control", "flux_accounting_fail_rate"):
        ra, rb = a.get("rates", {}).get(key), b.get("rates", {}).get(key)
        if ra is None or rb is None:
            continue
        hl = abs(rb - ra) > rate_diff
        rates.append({"rate": key, "a": ra, "b": rb, "diff": rb - ra, "highlight": hl})
        if hl:
            highlights.append(f"{key}: {ra:.4g} -> {rb:.4g}")
    gates = []
    for g in ("core", "annulus"):
        ga, gb = a.get("gates", {}).get(g, {}), b.get("gates", {}).get(g, {})
        if ga.get("auc") is None or gb.get("auc") is None:
            continue
        hl = bool(ga.get("flagged")) != bool(gb.get("flagged")) or abs(gb["auc"] - ga["auc"]) > 0.05
        gates.append({"gate": g, "auc_a": ga["auc"], "auc_b": gb["auc"], "flagged_a": ga.get("flagged"),
                      "flagged_b": gb.get("flagged"), "highlight": hl})
        if hl:
            highlights.append(f"gate {g}: AUC {ga['auc']:.3f} -> {gb['auc']:.3f}"
                              f" (flagged {ga.get('flagged')} -> {gb.get('flagged')})")
    return {"distributions": rows, "rates": rates, "gates": gates, "highlights": highlights}
