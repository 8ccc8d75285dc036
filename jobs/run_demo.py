"""The local demo (``make run``): every stage in local-mode Spark on the real sample data.

    python -m jobs.run_demo [--output out/demo] [--bank-galaxies 60]

1. LRG selection on the real DR8 sweeps and DR8/DR9 Tractor files (``conf/demo_lrg_selection.yaml``),
   then the real deflectors of the Stein et al. (2021) lens lists added as hosts (``conf/lens_hosts.yaml``:
   real positions, types, photometry and redshifts, documented sizes): the demo's many backgrounds;
2. the COSMOS source bank from 60 of the real ``btk_ext26`` galaxies (``conf/bank.yaml``);
3. the injection manifest (``conf/demo_injection_priors.yaml``);
4. a rendered stand-in sky in the exact coadd format for the selected LRGs' bricks (``conf/demo_sky.yaml``),
   its sources drawn with real PSFEx models at their positions on per-band pseudo-CCDs and its noise with
   the real z coadd's texture (real coadds are not available offline; see the README), then cutouts read
   from it as from real coadds, each with its PSF stacked from the sky's CCD table and PSFEx files as
   from the survey's, and its measured noise texture;
5. injection with the production settings (``conf/injection.yaml``: the cutouts' PSFs, textured arc noise);
6. validation: report, shortcut gates and pictures, including the gallery.

Outputs under ``--output``: ``targets/`` (the LRGs), ``hosts/`` (LRGs and lens hosts: what stages 3-4
read), ``lens_hosts-tractor.fits``, ``bank.h5``, ``manifest/``, ``sky/``, ``cutouts/``,
``stamps/`` (the training Parquet dataset), ``validation/``, ``gallery.png`` and ``summary.json``.
Stages whose output exists are rerun (each is deterministic, so the bytes are the same); a finished
demo of other code (its ``summary.json`` names another code version) is removed first.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from jobs.cli import job_main
from udfs.config.provenance import REPO_ROOT, code_version
from udfs.config.sample_data import data_root

CONF = REPO_ROOT / "conf"


def _stage(name: str, func, argv: list[str]) -> None:
    print(f"\n=== {name}: python -m {func.__module__} {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    rc = func(argv)
    if rc != 0:
        raise SystemExit(f"stage {name} failed with exit code {rc}")
    print(f"=== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)


def _summary(out: Path, gallery: list[Path], wall_s: float) -> dict:
    """What ``summary.json`` says: where the outputs are, stamp counts and failure rates by label."""
    stamps = json.loads((out / "stamps" / "_summary.json").read_text())
    cut = json.loads((out / "cutouts" / "_summary.json").read_text())
    sky = json.loads((out / "sky" / "sample_sky.json").read_text())
    summary = {
        "code_version": code_version(), "wall_s": round(wall_s, 1),
        "stamps": str(out / "stamps"), "report": str(out / "validation" / "report.json"),
        "gallery": str(out / "gallery.png") if gallery else None,
        "n_stamps": stamps["n_stamps"], "n_ok": stamps["n_ok"],
        "by_label": {k: {"n": v["n"], "failure_rate": v["failure_rate"]} for k, v in stamps["by_label"].items()},
        "note": "cutouts come from a rendered stand-in sky (real catalogue rows, catalogue depth), not real coadds",
        "psf_source_counts": cut["psf_source_counts"], "noise_source_counts": cut["noise_source_counts"],
        "cutout_noise_corr_median": cut["noise_corr_median"],
        "stamp_psf_source_counts": stamps["psf_source_counts"],
        "sky": {b["brickname"]: {"psf_source": b["psf_source"], "noise_neighbour_correlation":
                                 b["noise_neighbour_correlation"]} for b in sky["bricks"]},
    }
    return summary


def _clear_other_code(out: Path) -> None:
    """Start afresh where ``out`` holds a finished demo of other code: its stages' outputs carry the
    code version in their rows, so stage 3 would rightly refuse its manifest folder as one of other
    targets. A folder without the demo's ``summary.json`` is left alone."""
    previous = out / "summary.json"
    if not previous.is_file():
        return
    version = json.loads(previous.read_text()).get("code_version")
    if version is not None and version != code_version():
        print(f"{out}: holds the demo of code {version}; starting it afresh for {code_version()}")
        shutil.rmtree(out)


@job_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="jobs.run_demo", description=__doc__.split("\n")[0])
    ap.add_argument("--output", default=str(REPO_ROOT / "out" / "demo"), help="output folder")
    ap.add_argument("--bank-galaxies", type=int, default=60,
                    help="catalogue rows the bank considers (default 60 of btk_ext26's 100: ~25 galaxies, "
                         "keeping the demo under 4 minutes; the bank renders ~3 s per galaxy per core)")
    args = ap.parse_args(argv)

    from jobs import (build_lens_hosts, build_manifest, cosmos_source_loader, inject_stamps, make_cutouts,
                      make_sample_sky, select_lrgs, validate_cosmos_injection)
    from jobs.spark import get_spark
    from udfs.stamps.manifest import resolve_manifest
    from udfs.survey.sky_config import load_sky_config

    data = data_root()
    ls = data / "legacysurvey"
    out = Path(args.output).resolve()
    _clear_other_code(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    get_spark("lensinj-demo")  # one local session shared by every stage
    catalogues = [str(ls / "dr8_sweeps"), str(ls / "dr8_tractor"), str(ls / "dr9_tractor")]
    _stage("1 LRG selection", select_lrgs.main,
           ["--input", *catalogues, "--output", str(out / "targets"),
            "--config", str(CONF / "demo_lrg_selection.yaml")])
    targets = str(out / "hosts")
    _stage("1b lens hosts", build_lens_hosts.main,
           ["--with-targets", str(out / "targets"), "--output", targets,
            "--catalog", str(out / "lens_hosts-tractor.fits"), "--config", str(CONF / "lens_hosts.yaml")])
    _stage("2 source bank", cosmos_source_loader.main,
           ["--cosmos-dir", str(data / "cosmos" / "btk_ext26"), "--output", str(out / "bank.h5"),
            "--max-galaxies", str(args.bank_galaxies), "--seed", "0"])
    priors = CONF / "demo_injection_priors.yaml"
    _stage("3 manifest", build_manifest.main,
           ["--targets", targets, "--config", str(priors), "--output",
            str(out / "manifest"), "--bank", str(out / "bank.h5")])
    manifest = resolve_manifest(str(out / "manifest"))  # where stage 3 wrote (its _manifest.json)
    injection = CONF / "injection.yaml"
    sky = load_sky_config(str(CONF / "demo_sky.yaml"))
    _stage("4a sample sky (rendered stand-in for coadds)", make_sample_sky.main,
           ["--targets", targets, "--catalogs", str(ls / "dr8_tractor"), str(ls / "dr9_tractor"),
            str(ls / "dr8_sweeps"), str(out / "lens_hosts-tractor.fits"), "--output", str(out / "sky"), *sky.argv()])
    _stage("4b cutouts", make_cutouts.main,
           ["--targets", targets, "--coadd-base", str(out / "sky"), "--output", str(out / "cutouts")])
    _stage("5 injection", inject_stamps.main,
           ["--manifest", manifest, "--cutouts", str(out / "cutouts"), "--bank", str(out / "bank.h5"),
            "--output", str(out / "stamps"), "--config", str(injection)])
    _stage("6 validation", validate_cosmos_injection.main,
           ["--stamps", str(out / "stamps"), "--output", str(out / "validation" / "report.json")])
    gallery = sorted((out / "validation").glob("*gallery*.png"))
    if gallery:
        shutil.copyfile(gallery[0], out / "gallery.png")
    summary = _summary(out, gallery, time.perf_counter() - t0)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print("\n" + json.dumps(summary, indent=2, sort_keys=True))
    print(f"\nstamps:  {summary['stamps']}\nreport:  {summary['report']}\n"
          f"gallery: {summary['gallery']}\nsummary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
