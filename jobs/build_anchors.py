"""Real-lens anchors (lenscat) and hard negatives (real position lists) as stage-1 target rows.

    python -m jobs.build_anchors --output DIR [--config conf/anchors.yaml] [--negatives NAME=PATH ...]

Selects lenscat entries by grading, type, reference and footprint (:mod:`udfs.targets.anchors`), takes the
hard negatives from the configured lists (plus ``--negatives NAME=PATH``, columns ``ra``/``dec``),
drops negatives near any lenscat entry, and writes a Parquet dataset of
:data:`udfs.schemas.anchors.ANCHOR_SCHEMA` (the stage-1 targets columns plus lenscat's; split
``anchor`` / ``negative``) that ``jobs.make_cutouts --targets DIR`` reads like any targets,
plus ``DIR/_anchors.json``: counts, the lenscat cross-match of every written anchor (each must lie
within ``check_radius_arcsec`` of its entry, else exit 2 and nothing is reported as good), and the
cross-check against independent lists. ``target_id``: ``lenscat:<row>:<name>`` (row in the pinned
lenscat version's catalogue) or ``neg:<list>:<row>``.
"""
from __future__ import annotations

import argparse
import sys

from jobs.cli import job_main
from udfs.config.provenance import REPO_ROOT, code_version, config_hash
from udfs.io import storage
from udfs.schemas.anchors import ANCHOR_SCHEMA
from udfs.targets.anchor_config import load_config
from udfs.targets.anchors import AnchorError, anchor_table, build_anchors, extra_negatives, position_error

DEFAULT_CONFIG = str(REPO_ROOT / "conf" / "anchors.yaml")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.build_anchors", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="output targets dataset folder (local or s3://)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="anchor config (default: %(default)s)")
    p.add_argument("--negatives", action="append", default=[], metavar="NAME=PATH",
                   help="extra hard-negative list with ra/dec columns (csv/tsv/Parquet file or dataset)")
    return p.parse_args(argv)


@job_main
def main(argv=None) -> int:
    from pyspark.sql.pandas.types import from_arrow_schema

    from jobs.spark import get_spark, write_json, write_parquet
    from udfs.io.publish import publishing

    args = parse_args(argv)
    storage.check_writable(args.output, folder=True)  # before any input is read
    cfg = load_config(args.config)
    extra = extra_negatives(args.negatives)
    chash = config_hash({"anchors": cfg.raw, "extra_negatives": [(p.name, p.path) for p in extra]})
    rows, summary = build_anchors(cfg, extra, chash, code_version())
    error = position_error(summary)
    if error is not None:  # the diagnosis is written, the dataset is not
        write_json(storage.join(args.output, "_anchors.json"), summary)
        raise error
    if rows.empty:
        raise AnchorError(f"{args.config}: the selection gives no anchor and no negative (check lenscat/footprint)")
    df = get_spark("build_anchors").createDataFrame(anchor_table(rows).to_pandas(),
                                                    schema=from_arrow_schema(ANCHOR_SCHEMA))
    with publishing(args.output, job="jobs.build_anchors", config_hash=chash) as output:
        files = write_parquet(df, args.output, key=["target_id"], n_buckets=cfg.n_buckets, arrow_schema=ANCHOR_SCHEMA)
        summary.update(output=args.output, files=files, config_hash=chash, code_version=code_version())
        write_json(storage.join(args.output, "_anchors.json"), summary)
        output.commit([f["path"] for f in files])
    pc = summary["position_check"]
    print(f"anchors: {summary['anchors']} from {summary['lenscat']} ({pc['within_radius']}/{pc['checked']} within "
          f"{pc['radius_arcsec']}\" of lenscat), {summary['n_negatives']} negatives -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
