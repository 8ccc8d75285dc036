"""Per-row and per-pair checks of the stage-5 stamps dataset: the stage-6 Spark task bodies.

Everything here is NumPy/pandas on one file or one batch of pairs (no Spark): ``jobs.
validate_cosmos_injection`` runs :func:`read_task` and :func:`pairs_task` with ``mapInPandas`` and
aggregates; :mod:`udfs.qa.report_sections` turns the aggregates into the report. Columns come from
:mod:`udfs.schemas.stamps`. Conventions: images and arcs in nanomaggies, invvar in
nanomaggies^-2, ``gain_<band>`` in electrons per nanomaggy, radii from the stamp centre.

Flux accounting (per pair, per band). The injected image is ``cutout + Poisson(arc * gain) / gain``
stored as float32, the control is the same cutout, and ``arc`` is the noiseless arc. So
``d = injected - control`` must equal ``arc`` within the arc's shot noise where ``arc > 0``
(variance ``arc / gain``) and equal the arc where ``arc <= 0`` (0, or the negative wing of a
measured PSF: no photons, no noise), up to rounding (one spacing of each stored value,
``numpy.spacing``: float32 for the images, float16 for the arc since issue 13). Reported: ``z_sum`` = summed residual over its sigma,
``chi2_dof`` = mean squared per-pixel residual in sigma units over the pixels where the arc
holds >= ``CHI2_MIN_ELECTRONS`` electrons (Gaussian regime; fainter pixels make the mean
heavy-tailed; NaN with fewer than ``CHI2_MIN_PIXELS`` of them: a compact arc's few, texture-correlated
pixels give a mean that exceeds 2 by chance in several % of correct stamps), 1 for correct noise, ~0 when the stored arc already holds the noise,
``zero_viol`` = pixels with ``arc <= 0`` where ``|d - arc|`` exceeds ``zero_pixel_rounding_units`` spacings.
Textured arc noise (``noise_kernel_sum_<b>`` != 1, the coadd's texture given to the arc's photons)
spreads each pixel's noise over its 3x3 neighbours: the summed residual then covers the arc grown by
one pixel, with its variance times ``sum(k)^2``, and the zero check applies beyond that reach.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import ndimage
import pyarrow.parquet as pq

from udfs.io.datasets import partition_values
from udfs.qa.lens_population import aperture_flux
from udfs.schemas import stamps as schema
from udfs.stamps.pixels import StampInputError, StampLayout, annulus_mask, column_pixels, core_mask, \
    hash_uniform, pixel_array, radii, stamp_layout

#: the stamp columns stage 6 needs in every file (a missing one is a bad dataset, named by file)
REQUIRED = ["task_id", "pair_id", "is_control", "ok", "fail_reason", "theta_e", "arc_snr", "core_flux_frac",
            "magnification", "arc_flux_g", "arc_flux_r", "arc_flux_z", "psf_fwhm_r", "image", "invvar", "arc"]
#: scalar columns read (``split`` included: from the file or its ``split=`` folder), name -> Arrow type
SCALAR_TYPES = {name: typ for name, typ, _ in schema.scalar_fields() + schema.PROVENANCE_FIELDS}
SCALARS = list(SCALAR_TYPES)
PIXELS = schema.FLOAT_PIXELS
#: float columns that must be finite on ok injected rows (truth that always applies and metrics)
FINITE_INJECTED = ["theta_e", "lens_e1", "lens_e2", "shear_g1", "shear_g2", "src_x", "src_y", "src_mag_r",
                   "magnification", "arc_flux_g", "arc_flux_r", "arc_flux_z", "arc_snr", "core_flux_frac"]
CHI2_MIN_ELECTRONS = 10.0
CHI2_MIN_PIXELS = 25   # fewer such pixels: their mean squared residual is too noisy to test (NaN)
#: per-row checks (:func:`row_checks`) and their Spark types
ROW_CHECKS = {"nonfinite_image": "bigint", "nonfinite_invvar": "bigint", "nonfinite_arc": "bigint",
              "negative_invvar": "bigint", "failed_with_values": "boolean", "control_arc_nonzero": "boolean",
              "arc_r50_arcsec": "double", "aperture_flux_r": "double"}
ERROR = "error"  # the read task's column holding a StampInputError message (rows of a bad file)
_SPARK = {pa.string(): "string", pa.bool_(): "boolean", pa.float64(): "double"}
assert set(REQUIRED) <= set(SCALARS) | set(PIXELS)


def _spark_type(typ: pa.DataType) -> str:
    return "bigint" if pa.types.is_integer(typ) else _SPARK[typ]


def row_ddl() -> str:
    """Spark DDL of the rows :func:`read_task` yields: scalars, row checks, ok-row pixels, error."""
    cols = [f"{c} {_spark_type(t)}" for c, t in SCALAR_TYPES.items()]
    cols += [f"{c} {t}" for c, t in ROW_CHECKS.items()]
    return ", ".join(cols + ["image array<float>", "arc array<float>", f"{ERROR} string"])


def read_stamp_rows(root: str, path: str, layout: StampLayout, open_input, *,
                    with_pixels: bool = True) -> pd.DataFrame:
    """One stamps file of the dataset at ``root`` as pandas: its scalar columns (absent ones null,
    integers as nullable Int64), the row checks, and (for ok rows, ``with_pixels``) the ``image``
    and ``arc`` pixel lists; ``split`` from a ``split=`` folder when the file has no such column."""
    with open_input(path) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        missing = [c for c in REQUIRED if c not in names]
        if missing:
            raise StampInputError(f"{path}: missing column(s) {', '.join(missing)}")
        try:
            table = pf.read(columns=[c for c in SCALARS if c in names] + PIXELS)
        except (pa.ArrowException, OSError) as exc:
            raise StampInputError(f"{path}: cannot read its Parquet data ({' '.join(str(exc).split())})") from exc
    df = table.drop_columns(PIXELS).to_pandas()
    for c in SCALARS:
        if c not in df:
            df[c] = None
    if "split" not in table.column_names:
        df["split"] = partition_values(root, path).get("split")
    for c, typ in SCALAR_TYPES.items():
        if pa.types.is_integer(typ):
            df[c] = df[c].astype("Int64")
    shape = (layout.n_bands, layout.npix, layout.npix)
    image, invvar, arc = (column_pixels(table, c, shape) for c in PIXELS)
    checks = row_checks(df["ok"].to_numpy(bool), df["is_control"].to_numpy(bool), image, invvar, arc,
                        layout.pixel_scale, layout.bands.index("r") if "r" in layout.bands else None)
    for k, v in checks.items():
        df[k] = v
    if with_pixels:
        ok = df["ok"].to_numpy(bool)
        df["image"] = [image[i].ravel().astype(np.float32) if ok[i] else None for i in range(len(df))]
        df["arc"] = [arc[i].ravel().astype(np.float32) if ok[i] else None for i in range(len(df))]
    return df


def read_task(batches, *, root: str, layout: StampLayout, first_file: str, open_input):
    """The stage-6 read task (``mapInPandas`` over batches of ``path``): each file's rows
    (:func:`read_stamp_rows`, columns of :func:`row_ddl`), checked against the driver's ``layout``.

    A file that breaks the stamps layout yields one row whose ``error`` holds the
    :class:`StampInputError` message (all else null): the driver raises it, naming the file.
    """
    cols = SCALARS + list(ROW_CHECKS) + ["image", "arc", ERROR]
    for batch in batches:
        for path in batch["path"]:
            try:
                with open_input(path) as f:
                    file_layout = stamp_layout(pq.read_schema(f), path)
                if file_layout != layout:
                    raise StampInputError(f"{path}: layout {file_layout} differs from {first_file}: {layout}")
                df = read_stamp_rows(root, path, layout, open_input)
                df[ERROR] = None
            except StampInputError as exc:
                df = pd.DataFrame({c: [None] for c in cols}).assign(**{ERROR: [str(exc)]})
            yield df[cols]


def pair_ddl(bands: str) -> str:
    """Spark DDL of the rows :func:`pairs_task` yields (one per pair_id, with its ``target_id``)."""
    per_band = ", ".join(f"z_sum_{b} double, chi2_dof_{b} double, zero_viol_{b} bigint" for b in bands)
    return ("pair_id string, target_id string, complete boolean, has_injected boolean, has_control boolean, "
            + per_band +
            ", flux_fail boolean, sampled boolean, core_inj array<float>, core_ctl array<float>, "
            "ann_inj array<float>, ann_ctl array<float>")


def pairs_task(batches, *, layout: StampLayout, **kw):
    """The stage-6 pair task (``mapInPandas`` over the injected/control full outer join):
    :func:`pair_metrics` per batch, columns of :func:`pair_ddl`."""
    cols = [f.split(" ")[0] for f in pair_ddl(layout.bands).split(", ")]
    for pdf in batches:
        yield pair_metrics(pdf.reset_index(drop=True), layout, **kw)[cols]


def row_checks(ok: np.ndarray, is_control: np.ndarray, image: np.ndarray, invvar: np.ndarray,
               arc: np.ndarray, pixel_scale: float, r_index: int | None = None) -> dict[str, np.ndarray]:
    """Per-row pixel checks: non-finite counts (ok rows), negative invvar, failed rows that still
    hold values, controls with a non-zero arc, the arc's half-light radius (arcsec, injected) and
    the r flux within 4" of the centre (``aperture_flux_r``, nanomaggies; on a control: the host's,
    :mod:`udfs.qa.lens_population`)."""
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
    aperture = np.full(n, np.nan)
    if r_index is not None and ok.any():
        aperture[ok] = aperture_flux(image[ok], r_index, pixel_scale)
    out["aperture_flux_r"] = aperture
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
                   rounding_units: float, kernel_sums: np.ndarray | None = None,
                   arc_dtype: str = "float32") -> dict[str, np.ndarray]:
    """Per pair and band (``(B, n_bands)`` arrays): ``z_sum``, ``chi2_dof``, ``zero_viol`` (module doc).

    ``kernel_sums`` (``(B, n_bands)``, the stamps' ``noise_kernel_sum_<b>``; NaN or None = white):
    textured arc noise ``k (*) n`` (a 3x3 kernel) reaches one pixel beyond the arc, and its sum over
    that region is ``sum(k)`` times the white sum, so there the residual is summed over the arc grown
    by one pixel with variance ``sum(k)^2 * sum(arc) / gain``, and only pixels beyond that reach must be 0.
    ``arc_dtype``: how the arc was stored (its spacing is the arc's rounding unit; float16 since issue 13)."""
    d = injected - control
    finite = np.isfinite(d) & np.isfinite(arc)
    spacing = np.spacing(np.abs(injected).astype(np.float32)).astype(np.float64) + \
        np.spacing(np.abs(np.nan_to_num(arc)).astype(arc_dtype)).astype(np.float64)
    g = np.asarray(gains, dtype=np.float64)[:, :, None, None]
    ksum = np.ones(g.shape) if kernel_sums is None else np.asarray(kernel_sums, dtype=np.float64)[:, :, None, None]
    ksum = np.where(np.isfinite(ksum), ksum, 1.0)
    lit = finite & (arc > 0)
    textured = np.abs(ksum - 1.0) > 1e-9
    reach = np.where(textured, ndimage.maximum_filter(lit, size=(1, 1, 3, 3)), lit) & finite
    shot = np.where(lit, np.where(g > 0, np.clip(arc, 0, None) / np.where(g > 0, g, 1.0), np.nan), 0.0)
    axes = (2, 3)
    var_sum = (ksum[:, :, 0, 0] ** 2) * shot.sum(axis=axes) + np.where(reach, spacing ** 2, 0.0).sum(axis=axes)
    resid = np.where(reach, d - np.where(lit, arc, 0.0), 0.0)
    n_lit = lit.sum(axis=axes)
    bright = lit & (np.clip(np.nan_to_num(arc), 0, None) * np.where(g > 0, g, 0.0) >= CHI2_MIN_ELECTRONS)
    n_bright = bright.sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        z_sum = resid.sum(axis=axes) / np.sqrt(var_sum)
        var = np.where(lit, shot + spacing ** 2, 1.0)
        chi2 = np.where(bright, resid ** 2 / var, 0.0).sum(axis=axes) / n_bright
    dark = finite & ~reach   # no photons reach here: d is the arc itself (0, or a PSF's negative wing)
    zero_viol = (dark & (np.abs(np.where(dark, d - arc, 0.0)) > rounding_units * spacing)).sum(axis=axes)
    return {"z_sum": np.where(n_lit > 0, z_sum, np.nan), "chi2_dof": np.where(n_bright >= CHI2_MIN_PIXELS, chi2, np.nan),
            "zero_viol": zero_viol}


def pair_metrics(pdf: pd.DataFrame, layout: StampLayout, *, core_radius: float, annulus: tuple[float, float],
                 rounding_units: float, max_abs_sum_z: float, max_chi2_dof: float,
                 sample_fraction: float, seed: int) -> pd.DataFrame:
    """Rows of a full outer join of injected (``inj_*``) and control (``ctl_*``) rows on ``pair_id``
    -> one row per pair: its ``target_id`` (the background the shortcut gates group by; null when
    the join carries none), completeness, flux accounting per band and, for the gate sample, the
    core and annulus pixels of both stamps (all bands, float32)."""
    shape = (layout.n_bands, layout.npix, layout.npix)
    complete = (pdf["inj_ok"].fillna(False).astype(bool) & pdf["ctl_ok"].fillna(False).astype(bool)).to_numpy()
    target = pdf["target_id"] if "target_id" in pdf else pd.Series([None] * len(pdf), dtype=object)
    out = pd.DataFrame({"pair_id": pdf["pair_id"], "target_id": target, "complete": complete,
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
    ksums = np.stack([pd.to_numeric(pdf[f"inj_noise_kernel_sum_{b}"], errors="coerce").iloc[idx].to_numpy(float)
                      if f"inj_noise_kernel_sum_{b}" in pdf else np.full(len(idx), np.nan) for b in bands], axis=1)
    res = flux_residuals(inj, ctl, arc, gains, rounding_units, ksums, layout.arc_dtype)
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
