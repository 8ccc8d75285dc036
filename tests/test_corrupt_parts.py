"""A truncated Parquet part of an input dataset is found on the driver, before any Spark task:
one line naming the file, exit 2, for the jobs that read datasets through Spark and for stage 5."""
import os
import shutil

from jobs import build_manifest, inject_stamps
from jobs.spark import dataset_files
from udfs.config.provenance import REPO_ROOT


def _truncated_copy(src: str, dst) -> str:
    shutil.copytree(src, dst)
    victim = sorted(f for f in dataset_files(str(dst)))[-1]
    os.chmod(victim, 0o644)
    os.truncate(victim, os.path.getsize(victim) // 2)
    return victim


def test_truncated_targets_part_is_one_line(pipeline_inputs, tmp_path, capsys):
    victim = _truncated_copy(str(pipeline_inputs["dir"] / "targets"), tmp_path / "targets")
    rc = build_manifest.main(["--targets", str(tmp_path / "targets"), "--config",
                              str(REPO_ROOT / "conf" / "demo_injection_priors.yaml"), "--output", str(tmp_path / "m"),
                              "--bank", pipeline_inputs["bank"]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and victim in err and "not a readable Parquet file" in err, err


def test_truncated_cutouts_part_stops_stage_5_in_one_line(pipeline_inputs, tmp_path, capsys):
    victim = _truncated_copy(pipeline_inputs["cutouts"], tmp_path / "cutouts")
    rc = inject_stamps.main(["--manifest", pipeline_inputs["manifest"], "--cutouts", str(tmp_path / "cutouts"),
                             "--bank", pipeline_inputs["bank"], "--output", str(tmp_path / "stamps")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and victim in err and "Traceback" not in err, err
    assert not (tmp_path / "stamps").exists()
