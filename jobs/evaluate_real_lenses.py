"""Recall on real known lenses (anchors) against real hard negatives, given a model's scores.

    python -m jobs.evaluate_real_lenses --anchors ANCHORS --scores SCORES --output DIR
        [--cutouts CUTOUTS] [--config conf/validation.yaml] [--strict]

ANCHORS: the dataset written by ``jobs.build_anchors`` (split ``anchor`` / ``negative``); SCORES: a
Parquet file or dataset with ``target_id``, ``score`` (one per stamp); CUTOUTS (optional): the
``jobs.make_cutouts`` output for ANCHORS. Position checks first: every anchor is cross-matched back
to lenscat (astropy SkyCoord; it must lie within ``--radius`` arcsec, default 1, of its entry) and,
with ``--cutouts``, must sit on its cutout (ok, within half a pixel of the stamp centre). Anchors
failing a check are reported and left out of the recall. Then recall at the configured thresholds
and fixed FPRs with bootstrap intervals (:mod:`udfs.qa.recall`), overall and split by reference,
grading and theta_E (where known). Writes ``DIR/recall.json``, ``DIR/recall_by_group.parquet``,
``DIR/anchor_checks.parquet`` and ``DIR/score_distributions.png``. The tables are small (one score
per stamp), so they are read on the driver with pyarrow through :mod:`udfs.io.storage`.
Exit 2 on bad input; with ``--strict`` exit 1 when an anchor fails a position check.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd
import pyarrow as pa

from jobs.cli import job_main
from udfs.config.provenance import REPO_ROOT, code_version, config_hash
from udfs.config.validation import load_config
from udfs.io import storage
from udfs.io.datasets import read_columns
from udfs.qa.recall import (ScoreTableError, anchor_checks, check_scores, real_lens_report,
                            summary_lines, threshold_lines)
from udfs.schemas.anchors import EVALUATION_COLUMNS
from udfs.targets.anchors import lenscat_table

DEFAULT_CONFIG = str(REPO_ROOT / "conf" / "validation.yaml")
CUTOUT_COLUMNS = ["target_id", "ok", "fail_reason", "dx_pix", "dy_pix", "ra", "dec"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.evaluate_real_lenses", description=__doc__.split("\n")[0])
    p.add_argument("--anchors", required=True, help="jobs.build_anchors output (local or s3://)")
    p.add_argument("--scores", required=True, help="Parquet file or dataset with target_id, score")
    p.add_argument("--output", required=True, help="output folder (local or s3://)")
    p.add_argument("--cutouts", help="jobs.make_cutouts output for the anchors (footprint check)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="validation config (default: %(default)s)")
    p.add_argument("--radius", type=float, default=1.0, help="anchor position tolerance, arcsec (default 1)")
    p.add_argument("--strict", action="store_true", help="exit 1 when an anchor fails a position check")
    return p.parse_args(argv)


@job_main
def main(argv=None) -> int:
    from jobs.spark import write_json
    from udfs.io.parquet_files import parquet_bytes
    from udfs.io.publish import publishing
    from udfs.qa import plots

    args = parse_args(argv)
    storage.check_writable(args.output, folder=True)  # before any input is read
    full_cfg = load_config(args.config)
    cfg = full_cfg.recall
    anchors = read_columns(args.anchors, "the jobs.build_anchors output", EVALUATION_COLUMNS, allow_file=True)
    scores = read_columns(args.scores, "the scores (target_id, score)", ["target_id", "score"], allow_file=True)
    check_scores(scores, "target_id", args.scores)
    unknown = sorted(set(anchors["split"]) - {"anchor", "negative"})
    if unknown:
        raise ScoreTableError(f"{args.anchors}: unexpected split value(s) {unknown} (expected anchor/negative)")
    cutouts = read_columns(args.cutouts, "the jobs.make_cutouts output", CUTOUT_COLUMNS,
                           allow_file=True) if args.cutouts else None
    cat, version = lenscat_table()
    checks = anchor_checks(anchors[anchors["split"] == "anchor"].reset_index(drop=True), cat, version,
                           args.radius, cutouts, args.anchors)
    report = real_lens_report(anchors, scores, checks, cfg)
    summary = report["summary"]
    chash = config_hash(full_cfg.as_dict())
    summary.update(anchors=args.anchors, scores=args.scores, cutouts=args.cutouts,
                   provenance={"code_version": code_version(), "config_hash": chash})
    summary["position_check"].update(radius_arcsec=args.radius, lenscat=version)
    with publishing(args.output, job="jobs.evaluate_real_lenses", config_hash=chash) as output:
        tables = [storage.join(args.output, f) for f in ("recall_by_group.parquet", "anchor_checks.parquet")]
        storage.write_bytes(tables[0], parquet_bytes(pa.Table.from_pandas(pd.DataFrame(report["rows"]),
                                                                          preserve_index=False)))
        storage.write_bytes(tables[1], parquet_bytes(pa.Table.from_pandas(checks, preserve_index=False)))
        storage.write_bytes(storage.join(args.output, "score_distributions.png"), plots.score_distributions(
            {"anchors": report["pos"], "negatives": report["neg"]}, threshold_lines(summary["recall"]),
            cfg.histogram_bins, "scores of real lenses and hard negatives"))
        write_json(storage.join(args.output, "recall.json"), summary)
        output.commit(tables)
    print("\n".join(summary_lines(summary, args.output)))
    return 1 if (args.strict and summary["position_check"]["failures"]) else 0


if __name__ == "__main__":
    sys.exit(main())
