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


def _corrupt_pages(src: str, dst) -> str:
    """Copy a dataset, then overwrite the first column chunk of its last part (page headers and
    data) with 0xff bytes: the footer still reads, the data does not."""
    import pyarrow.parquet as pq

    shutil.copytree(src, dst)
    victim = sorted(dataset_files(str(dst)))[-1]
    os.chmod(victim, 0o644)
    chunk = pq.read_metadata(victim).row_group(0).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    with open(victim, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * chunk.total_compressed_size)
    pq.read_schema(victim)  # the footer is sound
    return victim


def test_corrupt_pages_behind_a_sound_footer_are_one_line(pipeline_inputs, tmp_path, capsys):
    """Found only by the task that reads the part: stage 3 (jobs.spark.read_parquet), stage 5
    (the co-located bucket reader) and stage 6 (its own stamps reader) each stop with one line."""
    from jobs import validate_cosmos_injection

    victim = _corrupt_pages(str(pipeline_inputs["dir"] / "targets"), tmp_path / "targets")
    rc = build_manifest.main(["--targets", str(tmp_path / "targets"), "--config",
                              str(REPO_ROOT / "conf" / "demo_injection_priors.yaml"), "--output", str(tmp_path / "m"),
                              "--bank", pipeline_inputs["bank"]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.splitlines() == [err] and f"error: {victim}: cannot read its Parquet data" in err, err

    victim = _corrupt_pages(pipeline_inputs["cutouts"], tmp_path / "cutouts")
    rc = inject_stamps.main(["--manifest", pipeline_inputs["manifest"], "--cutouts", str(tmp_path / "cutouts"),
                             "--bank", pipeline_inputs["bank"], "--output", str(tmp_path / "stamps")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.splitlines() == [err] and f"error: {victim}: cannot read its Parquet data" in err, err

    assert inject_stamps.main(["--manifest", pipeline_inputs["manifest"], "--cutouts", pipeline_inputs["cutouts"],
                               "--bank", pipeline_inputs["bank"], "--output", str(tmp_path / "good")]) == 0
    victim = _corrupt_pages(str(tmp_path / "good"), tmp_path / "bad")
    capsys.readouterr()
    rc = validate_cosmos_injection.main(["--stamps", str(tmp_path / "bad"), "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.splitlines() == [err] and f"error: {victim}: cannot read its Parquet data" in err, err
