"""Stage 1 across files: the per-file Spark task body, the merged funnel, its invariants, the report.

Per file, :func:`file_selector` yields one row (``PER_FILE_DDL``): the file's path, its catalogue
error (or null), its funnel as JSON and its targets as an Arrow IPC stream. The driver merges the
funnels (:func:`merge_funnels`), and :func:`funnel_report` builds ``_funnel.json`` and checks, before
anything is written, that the funnel adds up (input rows - rows removed per cut == rows the tasks
emitted; duplicates of a ``target_id`` across files are the last step) and that no HEALPix cell
carries two split labels.
"""
from __future__ import annotations

import json

import pyarrow as pa

from udfs.schemas.targets import TARGET_SCHEMA
from udfs.survey.tractor_catalog import CatalogError, read_catalog
from udfs.targets import lrg_cuts
from udfs.targets.lrg_targets import PSF_CUT, select_targets
from udfs.targets.splits import realised_fractions

PER_FILE_DDL = "path string, error string, funnel string, targets binary"
DUPLICATE_CUT = "duplicate_target_id"
QUALITY_CUTS = ("q_brick_primary", "q_type", "q_maskbits", "q_nobs")
TOTALS = ("data_releases", "photsys_applied", "psf_fwhm_sources")


def file_selector(raw_config: dict, chash: str, version: str, photo_z_dir: str | None = None):
    """mapInPandas body over a ``path`` column: one :data:`PER_FILE_DDL` row per catalogue file;
    ``photo_z_dir``: the folder of the catalogues' photo-z companion files, if any."""
    def run(batches):
        cfg = lrg_cuts.parse_config(raw_config)
        for batch in batches:
            for path in batch["path"]:
                yield _select_file(path, cfg, chash, version, photo_z_dir)
    return run


def _select_file(path: str, cfg: lrg_cuts.SelectionConfig, chash: str, version: str, photo_z_dir: str | None):
    import pandas as pd

    from udfs.targets.host_properties import photo_z_file

    try:
        targets, steps, stats = select_targets(read_catalog(path), cfg, config_hash=chash, code_version=version,
                                               photo_z=photo_z_file(photo_z_dir, path))
    except CatalogError as exc:
        return pd.DataFrame({"path": [path], "error": [str(exc)], "funnel": [None], "targets": [None]})
    table = pa.Table.from_pandas(targets, schema=TARGET_SCHEMA, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, TARGET_SCHEMA) as writer:
        writer.write_table(table)
    funnel = {"steps": steps, **stats, "emitted": len(targets)}
    return pd.DataFrame({"path": [path], "error": [None], "funnel": [json.dumps(funnel)],
                         "targets": [sink.getvalue().to_pybytes()]})


def explode_targets(batches):
    """mapInPandas body over the ``targets`` column: the Arrow streams back to target rows."""
    for batch in batches:
        for blob in batch["targets"]:
            if blob is not None:
                yield pa.ipc.open_stream(pa.py_buffer(blob)).read_all().to_pandas()


def failed_files_error(errors: list[str], n_files: int) -> CatalogError:
    """One error naming every failed file (one ``error:`` line each) and the count."""
    lines = errors + [f"{len(errors)} of {n_files} input files failed; nothing written"]
    return CatalogError("\nerror: ".join(lines))


def cut_order(cfg: lrg_cuts.SelectionConfig) -> list[str]:
    """The order of the cuts in the funnel: the LRG cut, the quality cuts, the PSF availability."""
    return list(lrg_cuts.LRG_CUTS) + list(QUALITY_CUTS) + [f"q_mag_{b}" for b in sorted(cfg.mag_limits)] + [PSF_CUT]


def merge_funnels(funnels: list[dict], order: list[str]) -> tuple[list[tuple[str, int]], dict]:
    """Sum the per-file funnels: ``[(cut, removed)]`` in ``order`` (unknown cuts last, sorted), and the
    per-key totals of :data:`TOTALS`."""
    removed: dict[str, int] = {}
    totals: dict[str, dict[str, int]] = {key: {} for key in TOTALS}
    for fn in funnels:
        for name, n in fn["steps"]:
            removed[name] = removed.get(name, 0) + n
        for key in totals:
            for k, v in fn[key].items():
                totals[key][k] = totals[key].get(k, 0) + v
    names = [c for c in order if c in removed] + sorted(c for c in removed if c not in order)
    return [(c, removed[c]) for c in names], totals


def split_cells(cells: list[tuple[int, str, int]]) -> tuple[dict[str, int], int, int]:
    """``cells``: (healpix, split, rows) per occupied (cell, split). Returns the rows per split, the
    number of occupied cells and the number of cells with more than one split label."""
    counts: dict[str, int] = {}
    labels_per_cell: dict[int, int] = {}
    for cell, split, n in cells:
        counts[split] = counts.get(split, 0) + n
        labels_per_cell[cell] = labels_per_cell.get(cell, 0) + 1
    return counts, len(labels_per_cell), sum(1 for v in labels_per_cell.values() if v > 1)


def funnel_cuts(funnels: list[dict], cfg: lrg_cuts.SelectionConfig, n_out: int) -> tuple[list[dict], dict]:
    """The merged funnel ``[{cut, removed, remaining}]`` ending with the duplicates step, and the
    totals; raises RuntimeError when the per-file counts and the emitted rows disagree."""
    steps, totals = merge_funnels(funnels, cut_order(cfg))
    n_in = sum(f["input_rows"] for f in funnels)
    emitted = sum(f["emitted"] for f in funnels)
    if n_in - sum(n for _, n in steps) != emitted or not 0 <= n_out <= emitted:
        raise RuntimeError(f"funnel does not add up: {n_in} in, {steps}, {emitted} emitted, {n_out} unique")
    steps.append((DUPLICATE_CUT, emitted - n_out))
    remaining, cuts = n_in, []
    for name, n in steps:
        remaining -= n
        cuts.append({"cut": name, "removed": n, "remaining": remaining})
    return cuts, totals


def funnel_report(funnels: list[dict], cells: list[tuple[int, str, int]], cfg: lrg_cuts.SelectionConfig, *,
                  n_files: int, chash: str, version: str, output: str) -> dict:
    """``_funnel.json`` without its ``files`` (added once written); raises RuntimeError if an invariant
    fails (see the module doc)."""
    counts, n_cells, mixed = split_cells(cells)
    n_out = sum(counts.values())
    cuts, totals = funnel_cuts(funnels, cfg, n_out)
    if mixed:
        raise RuntimeError(f"{mixed} HEALPix cells carry more than one split label")
    names = list(cfg.split_fractions)
    return {
        "input_files": n_files, "input_rows": sum(f["input_rows"] for f in funnels), "selected": n_out,
        "cuts": cuts, **totals,
        "healpix": {"nside": cfg.healpix_nside, "order": "nested", "occupied_cells": n_cells,
                    "cells_in_more_than_one_split": mixed},
        "splits": {"seed": cfg.split_seed, "requested": cfg.split_fractions,
                   "realised": realised_fractions(counts, names),
                   "counts": {k: counts.get(k, 0) for k in names}},
        "cut_version": cfg.cut_version, "config_hash": chash, "code_version": version,
        "config": cfg.raw, "output": output,
    }


def report_lines(report: dict, cfg: lrg_cuts.SelectionConfig) -> list[str]:
    """What the job prints: the funnel table and the split fractions."""
    lines = [f"LRG selection ({cfg.cut_version}, config {report['config_hash']}): {report['input_files']} files, "
             f"{report['input_rows']} rows"]
    lines += [f"  {c['cut']:<24s} removed {c['removed']:>10d}   remaining {c['remaining']:>10d}"
              for c in report["cuts"]]
    realised = ", ".join(f"{k} {v:.4f} (asked {cfg.split_fractions[k]:.4f})"
                         for k, v in report["splits"]["realised"].items())
    lines.append(f"selected {report['selected']} targets in {report['healpix']['occupied_cells']} HEALPix cells "
                 f"(nside {cfg.healpix_nside}); splits: {realised}")
    return lines
