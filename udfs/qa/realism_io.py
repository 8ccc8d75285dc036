"""Realism inputs and outputs around :mod:`udfs.qa.realism` (pyarrow and pandas, no Spark): the
stage-4 cutouts of real lenses read on the driver (:func:`read_real`), the Spark task body that
measures a deterministic sample of ok injected stamps (:func:`stamps_task`), the linear probe's
call (:func:`probe`) and the rows of the neighbours picture (:func:`picture_rows`). Pixels leave
here in g, r, z order; the real cutouts' pixel scale is the coadds' 0.262"/pixel.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from udfs.io import storage
from udfs.io.datasets import DatasetError, check_columns, file_schema, list_dataset, schema_metadata
from udfs.qa import realism
from udfs.qa.linear_probe import grouped_auc
from udfs.schemas import cutouts as cutout_schema
from udfs.stamps.pixels import StampInputError, column_pixels, hash_uniform, pixel_array

REAL_COLUMNS = ["target_id", "ok", "dx_pix", "dy_pix", "image", "invvar", "psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_z"]


def read_real(uri: str) -> dict:
    """The ok rows of a stage-4 cutouts dataset of real lenses (pyarrow on the driver), pixels in
    g, r, z order: ``target_id``, ``image``, ``invvar`` ``(n, 3, N, N)``, ``psf_fwhm`` ``(n, 3)``,
    ``offsets`` ``(n, 2)``, ``npix``. Bad input raises :class:`DatasetError` naming the file/column."""
    files = list_dataset(uri, cutout_schema.WHAT, allow_file=True)
    first, parts = None, []
    for f in files:
        schema = file_schema(f)
        bands, npix = cutout_schema.stamp_geometry(f, schema_metadata(schema))
        if first is None:
            first = (bands, npix, f)
        elif (bands, npix) != first[:2]:
            raise DatasetError(f"{f}: band order {bands!r} / stamp size {npix} differ from {first[2]} "
                               f"({first[0]!r} / {first[1]})")
        if any(b not in bands for b in "grz"):
            raise DatasetError(f"{f}: band_order {bands!r} lacks g, r or z (the realism measurements need all three)")
        check_columns(f, schema, REAL_COLUMNS)
        with storage.open_input(f) as fh:
            t = pq.read_table(fh, columns=REAL_COLUMNS)
        ok = np.asarray(t.column("ok").to_numpy(zero_copy_only=False), dtype=object)
        idx = np.flatnonzero([bool(v) if v is not None else False for v in ok])
        t = t.take(idx)
        order = [bands.index(b) for b in "grz"]
        shape = (len(bands), npix, npix)
        cols = {}
        for c in ("image", "invvar"):
            try:
                cols[c] = pixel_array(t.column(c), shape)[:, order]
            except (StampInputError, TypeError, ValueError) as exc:
                raise DatasetError(f"{f}: column {c}: {exc}") from exc
        try:
            fwhm = np.column_stack([np.asarray(t.column(f"psf_fwhm_{b}").to_numpy(zero_copy_only=False), float)
                                    for b in "grz"]).reshape(len(idx), 3)
            offsets = np.column_stack([np.asarray(t.column(c).to_numpy(zero_copy_only=False), float)
                                       for c in ("dx_pix", "dy_pix")]).reshape(len(idx), 2)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{f}: psf_fwhm_g/r/z, dx_pix, dy_pix must be numbers ({exc})") from exc
        parts.append({"target_id": [str(v) for v in t.column("target_id").to_pylist()], **cols,
                      "psf_fwhm": fwhm, "offsets": offsets})
    real = {"target_id": sum((p["target_id"] for p in parts), []), "npix": first[1], "uri": uri}
    for k in ("image", "invvar", "psf_fwhm", "offsets"):
        real[k] = np.concatenate([p[k] for p in parts])
    if not real["target_id"]:
        raise DatasetError(f"{uri}: no ok rows in {cutout_schema.WHAT} (expected real lens cutouts)")
    order = np.argsort(real["target_id"], kind="stable")
    return {k: ([real[k][i] for i in order] if k == "target_id" else real[k][order] if isinstance(real[k], np.ndarray)
                else real[k]) for k in real}


def check_inputs(layout, real: dict, rcfg) -> None:
    """Fail before Spark: the stamps need g, r, z and both sides must hold the probe's pixels."""
    if any(b not in layout.bands for b in "grz"):
        raise StampInputError(f"--real: the stamps' band order {layout.bands!r} lacks g, r or z")
    small = min(layout.npix, real["npix"])
    if rcfg.probe_pix > small:
        raise DatasetError(f"{real['uri']}: realism.probe_pix {rcfg.probe_pix} exceeds the {small}-px stamps")


STAMP_COLUMNS = ["task_id", "target_id", "is_control", "ok", "dx_pix", "dy_pix", "image", "invvar",
                 "psf_fwhm_g", "psf_fwhm_r", "psf_fwhm_z"]


def task_ddl() -> str:
    """Spark DDL of the rows :func:`stamps_task` yields."""
    return ", ".join(["task_id string", "target_id string", "arc_pixels bigint"]
                     + [f"{m} double" for m in realism.MEASUREMENTS] + ["probe array<float>", "image array<float>",
                                                                 "error string"])


def stamps_task(batches, *, layout, fraction: float, seed: int, params: dict, probe_pix: int, open_input):
    """``mapInPandas`` over batches of ``path``: each stamps file's ok injected rows with
    ``hash_uniform(task_id, seed) < fraction``, measured (:func:`udfs.qa.realism.measure_stamps`), with their probe
    pixels and image in g, r, z order. A file without the columns yields one row whose ``error`` names it (the
    driver raises it as :class:`StampInputError`); ``error`` is null on every other row."""
    shape = (layout.n_bands, layout.npix, layout.npix)
    cols = [c.split(" ")[0] for c in task_ddl().split(", ")]
    for batch in batches:
        for path in batch["path"]:
            with open_input(path) as f:
                pf = pq.ParquetFile(f)
                missing = [c for c in STAMP_COLUMNS if c not in pf.schema_arrow.names]
                table = None if missing else pf.read(columns=STAMP_COLUMNS)
            if missing:
                yield pd.DataFrame({c: [None] for c in cols}).assign(
                    error=[f"{path}: missing column(s) {', '.join(missing)}"])
                continue
            sc = table.drop_columns(["image", "invvar"]).to_pandas()
            keep = (sc["ok"].fillna(False).to_numpy(bool) & ~sc["is_control"].fillna(True).to_numpy(bool))
            keep &= hash_uniform(sc["task_id"].astype(str).tolist(), seed) < fraction
            idx = np.flatnonzero(keep)
            if not idx.size:
                continue
            order = [layout.bands.index(b) for b in "grz"]  # pixels out in g, r, z order
            picked = table.take(idx)
            image, invvar = (column_pixels(picked, c, shape)[:, order] for c in ("image", "invvar"))
            sub = sc.iloc[idx].reset_index(drop=True)
            fwhm = sub[[f"psf_fwhm_{b}" for b in "grz"]].to_numpy(np.float64)
            m = realism.measure_stamps(image, invvar, layout.pixel_scale, fwhm, bands="grz",
                               offsets=sub[["dx_pix", "dy_pix"]].to_numpy(np.float64), **params)
            df = pd.DataFrame({"task_id": sub["task_id"].astype(str), "target_id": sub["target_id"].astype(str),
                               **m})
            df["probe"] = list(realism.probe_pixels(image, probe_pix).astype(np.float32))
            df["image"] = [im.ravel().astype(np.float32) for im in image]
            df["error"] = None
            yield df[cols]


def probe(inj_probe, inj_targets, real: dict, rcfg) -> dict:
    """:func:`udfs.qa.linear_probe.grouped_auc` of the injections' probe pixels (label 1) vs the
    real lenses' (0), groups = targets; refused (a dict saying why) when no injection was measured."""
    if not len(inj_probe):
        return {"auc": None, "refused": True, "note": "not measurable: no ok injected stamps measured"}
    x = np.concatenate([np.stack([np.asarray(p, np.float64) for p in inj_probe]),
                        realism.probe_pixels(real["image"], rcfg.probe_pix)])
    y = np.r_[np.ones(len(inj_probe), int), np.zeros(len(real["target_id"]), int)]
    groups = [f"injected:{t}" for t in inj_targets] + [f"real:{t}" for t in real["target_id"]]
    out = grouped_auc(x, y, groups, folds=rcfg.probe_folds, c=rcfg.probe_c, n_permutations=rcfg.probe_permutations,
                      seed=rcfg.seed, confidence=rcfg.probe_confidence, min_groups=rcfg.probe_min_groups,
                      group_label="targets", null="between")
    out["pixels"] = f"central {rcfg.probe_pix}x{rcfg.probe_pix} px of g, r, z"
    return out


def _label(name: str, m: dict, i: int) -> str:
    return (f"{name[:22]}\nratio {m['arc_host_flux_ratio_r'][i]:.3f} "
            f"R {m['arc_radius_arcsec'][i]:.2f}\" g-r {m['arc_g_r'][i]:.2f}")


def picture_rows(picks, images: dict, task_ids: list, inj: dict, real: dict, real_m: dict) -> list[dict]:
    """Rows of :func:`udfs.qa.plots.neighbours`: real lens ``i`` and the injections ``picks[i]``
    (indices into ``task_ids``; ``images`` by task_id), labelled with ratio, radius and g-r."""
    return [{"real": real["image"][i], "real_label": "real " + _label(real["target_id"][i], real_m, i),
             "neighbours": [{"image": images[task_ids[j]], "label": _label(task_ids[j], inj, j)} for j in row]}
            for i, row in enumerate(picks)]
