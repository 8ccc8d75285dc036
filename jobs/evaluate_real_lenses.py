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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.cli import InputError
from udfs.io import storage
from udfs.targets.anchors import crossmatch_to_lenscat, footprint_check, lenscat_table
from udfs.config.provenance import code_version, config_hash
from udfs.qa.recall import evaluate, split_refs
from udfs.config.validation import ConfigError, load_config


def parse_args(argv):
    p = argparse.ArgumentParser(prog="jobs.evaluate_real_lenses", description=__doc__.split("\n")[0])
    p.add_argument("--anchors", required=True, help="jobs.build_anchors output (local or s3://)")
    p.add_argument("--scores", required=True, help="Parquet file or dataset with target_id, score")
    p.add_argument("--output", required=True, help="output folder (local or s3://)")
    p.add_argument("--cutouts", help="jobs.make_cutouts output for the anchors (footprint check)")
    p.add_argument("--config", default="conf/validation.yaml", help="validation config (default conf/validation.yaml)")
    p.add_argument("--radius", type=float, default=1.0, help="anchor position tolerance, arcsec (default 1)")
    p.add_argument("--strict", action="store_true", help="exit 1 when an anchor fails a position check")
    return p.parse_args(argv)


def read_table(uri: str, columns: list[str], what: str) -> pd.DataFrame:
    """A Parquet file or dataset (hive ``col=value`` folders restored as strings) as pandas."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        raise InputError(f"{uri}: not found (expected the {what})")
    if kind == pafs.FileType.File:
        files = [uri]
    else:
        info = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = sorted(i.path for i in info if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
        files = ["s3://" + f for f in files] if storage.is_s3(uri) else files
    if not files:
        raise InputError(f"{uri}: no Parquet files found (expected the {what})")
    frames = []
    for f in files:
        with storage.open_input(f) as fh:
            names = pq.read_schema(fh).names
            parts = dict(seg.split("=", 1) for seg in f[len(uri):].split("/")[:-1] if "=" in seg)
            missing = [c for c in columns if c not in names and c not in parts]
            if missing:
                raise InputError(f"{f}: missing column(s) {', '.join(missing)}")
            df = pq.read_table(fh, columns=[c for c in columns if c in names]).to_pandas()
        for k, v in parts.items():
            if k in columns:
                df[k] = v
        frames.append(df[columns])
    return pd.concat(frames, ignore_index=True)


def _groups(pos: pd.DataFrame, bins) -> list[tuple[str, str, np.ndarray]]:
    """(kind, group, mask) for reference, grading and theta_E bins."""
    out = []
    refs = [split_refs(r) for r in pos["ref"]]
    for ref in sorted({r for rs in refs for r in rs}):
        out.append(("ref", ref, np.array([ref in rs for rs in refs])))
    for g in sorted(pos["grading"].dropna().unique()):
        out.append(("grading", str(g), (pos["grading"] == g).to_numpy()))
    theta = pd.to_numeric(pos["theta_e"], errors="coerce").to_numpy(dtype=float)
    for lo, hi in zip(bins[:-1], bins[1:]):
        out.append(("theta_e", f"[{lo:g}, {hi:g})", (theta >= lo) & (theta < hi)))
    out.append(("theta_e", "unknown", ~np.isfinite(theta)))
    return out


def run(args) -> dict:
    from jobs.spark import parquet_bytes, write_json
    from udfs.qa import plots

    try:
        full_cfg = load_config(args.config)
    except ConfigError as exc:
        raise InputError(str(exc)) from exc
    cfg = full_cfg.recall
    anchors = read_table(args.anchors, ["target_id", "ra", "dec", "split", "name", "grading", "ref", "theta_e",
                                        "catalog", "catalog_row"], "jobs.build_anchors output")
    scores = read_table(args.scores, ["target_id", "score"], "scores (target_id, score)")
    dup = scores["target_id"].duplicated()
    if dup.any():
        raise InputError(f"{args.scores}: target_id {scores.loc[dup, 'target_id'].iloc[0]!r} has more than one score")
    if not np.isfinite(scores["score"].to_numpy(dtype=float)).all():
        raise InputError(f"{args.scores}: {int((~np.isfinite(scores['score'].to_numpy(dtype=float))).sum())} "
                         "score(s) are null or not finite")
    unknown = sorted(set(anchors["split"]) - {"anchor", "negative"})
    if unknown:
        raise InputError(f"{args.anchors}: unexpected split value(s) {unknown} (expected anchor/negative)")

    pos_all = anchors[anchors["split"] == "anchor"].reset_index(drop=True)
    cat, version = lenscat_table()
    if len(pos_all) and set(pos_all["catalog"]) != {version}:
        raise InputError(f"{args.anchors}: anchors were built from {sorted(set(pos_all['catalog']))}, "
                         f"installed is {version}: catalog_row would not match")
    checks = crossmatch_to_lenscat(pos_all, cat, args.radius)
    checks["problem"] = np.where(checks["ok"], "", "far_from_lenscat")
    if args.cutouts:
        cut = read_table(args.cutouts, ["target_id", "ok", "fail_reason", "dx_pix", "dy_pix", "ra", "dec"],
                         "jobs.make_cutouts output")
        fp = footprint_check(pos_all, cut, args.radius)
        checks = checks.merge(fp[["target_id", "on_stamp", "cutout_sep_arcsec", "dx_pix", "dy_pix", "problem"]]
                              .rename(columns={"problem": "cutout_problem"}), on="target_id", how="left")
        checks["problem"] = [";".join(p for p in (a, b) if p) for a, b in zip(checks["problem"], checks["cutout_problem"])]
        checks = checks.drop(columns=["cutout_problem"])
    good_ids = set(checks.loc[checks["problem"] == "", "target_id"])

    scored = anchors.merge(scores, on="target_id", how="left")
    pos = scored[(scored["split"] == "anchor") & scored["target_id"].isin(good_ids) & scored["score"].notna()]
    neg = scored[(scored["split"] == "negative") & scored["score"].notna()]
    kw = dict(thresholds=cfg.thresholds, fprs=cfg.fprs, min_per_fpr=cfg.min_negatives_per_fpr,
              n_boot=cfg.bootstrap_count, seed=cfg.bootstrap_seed, confidence=cfg.confidence)
    overall = evaluate(pos["score"].to_numpy(float), neg["score"].to_numpy(float), **kw)
    rows, groups = [], {}
    for kind, name, mask in _groups(pos.reset_index(drop=True), cfg.theta_e_bins):
        if not mask.any():
            continue
        res = evaluate(pos["score"].to_numpy(float)[mask], neg["score"].to_numpy(float), **kw)
        groups.setdefault(kind, {})[name] = res
        for r in res["at_threshold"]:
            rows.append({"kind": kind, "group": name, "n_positives": res["n_positives"], "point": "threshold",
                         "threshold": r["threshold"], "fpr": r["fpr"], "supported": True, "recall": r["recall"],
                         "ci_lo": r["recall_ci"][0], "ci_hi": r["recall_ci"][1]})
        for r in res["at_fpr"]:
            rows.append({"kind": kind, "group": name, "n_positives": res["n_positives"], "point": "fpr",
                         "threshold": r.get("threshold"), "fpr": r["fpr"], "supported": r["supported"],
                         "recall": r.get("recall"), "ci_lo": (r.get("recall_ci") or [None])[0],
                         "ci_hi": (r.get("recall_ci") or [None, None])[1]})
    problems = checks[checks["problem"] != ""]
    summary = {
        "anchors": args.anchors, "scores": args.scores, "cutouts": args.cutouts,
        "counts": {"anchors": int(len(pos_all)), "anchors_failing_checks": int(len(problems)),
                   "anchors_scored_and_checked": int(len(pos)),
                   "anchors_without_score": int(scored[(scored["split"] == "anchor") & scored["score"].isna()].shape[0]),
                   "negatives": int((anchors["split"] == "negative").sum()), "negatives_scored": int(len(neg)),
                   "scores_without_target": int((~scores["target_id"].isin(anchors["target_id"])).sum())},
        "position_check": {"radius_arcsec": args.radius, "lenscat": version, "checked": int(len(checks)),
                           "passed": int(len(checks) - len(problems)),
                           "max_sep_arcsec": float(checks["sep_arcsec"].max()) if len(checks) else None,
                           "failures": problems.head(50).replace({np.nan: None}).to_dict(orient="records")},
        "recall": overall, "by_group": groups,
        "rules": {"fixed_fpr": f"supported when negatives >= {cfg.min_negatives_per_fpr:g} / FPR",
                  "bootstrap": f"{cfg.bootstrap_count} replicates, seed {cfg.bootstrap_seed}, "
                               f"{cfg.confidence:g} percentile interval"},
        "provenance": {"code_version": code_version(), "config_hash": config_hash(full_cfg.as_dict())},
    }
    storage.write_bytes(storage.join(args.output, "recall_by_group.parquet"),
                        parquet_bytes(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)))
    storage.write_bytes(storage.join(args.output, "anchor_checks.parquet"),
                        parquet_bytes(pa.Table.from_pandas(checks, preserve_index=False)))
    lines = {f"t={r['threshold']:g}": r["threshold"] for r in overall["at_threshold"]}
    lines.update({f"FPR {r['fpr']:g}": r["threshold"] for r in overall["at_fpr"] if r["supported"]})
    storage.write_bytes(storage.join(args.output, "score_distributions.png"), plots.score_distributions(
        {"anchors": pos["score"].to_numpy(float), "negatives": neg["score"].to_numpy(float)}, lines,
        cfg.histogram_bins, "scores of real lenses and hard negatives"))
    write_json(storage.join(args.output, "recall.json"), summary)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        s = run(args)
    except (InputError, FileNotFoundError) as exc:
        print(f"jobs.evaluate_real_lenses: error: {exc}", file=sys.stderr)
        return 2
    r = s["recall"]
    parts = [f"recall {x['recall']:.3f} at score >= {x['threshold']:g}" for x in r["at_threshold"]]
    parts += [f"recall {x['recall']:.3f} at FPR {x['fpr']:g}" if x["supported"] else f"FPR {x['fpr']:g} unsupported"
              for x in r["at_fpr"]]
    pc = s["position_check"]
    print(f"real lenses: {r['n_positives']} anchors vs {r['n_negatives']} negatives: {'; '.join(parts)}; "
          f"position check {pc['passed']}/{pc['checked']} -> {args.output}")
    for f in pc["failures"]:
        print(f"  FLAG anchor {f['target_id']}: {f['problem']} (sep {f['sep_arcsec']:.2f}\")")
    return 1 if (args.strict and pc["failures"]) else 0


if __name__ == "__main__":
    sys.exit(main())
