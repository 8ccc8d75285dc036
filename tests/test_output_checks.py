"""Every job checks its output location before it reads any input: an output that is an existing
file (or folder, for file outputs), under a file, or in an S3 bucket that does not exist is one
line naming the output, exit 2, no traceback; a writable location passes and leaves nothing behind."""
import pytest

from udfs.io import storage
from udfs.io.errors import InputError

# (job, its required arguments besides --output, output kind); inputs point nowhere on purpose:
# the output check must come first
JOBS = [
    ("select_lrgs", ["--input", "/nonexistent/sweeps"], "folder"),
    ("cosmos_source_loader", ["--cosmos-dir", "/nonexistent/cosmos"], "file"),
    ("build_manifest", ["--targets", "/nonexistent/targets", "--config", "/nonexistent/priors.yaml"], "folder"),
    ("make_cutouts", ["--targets", "/nonexistent/targets", "--coadd-base", "/nonexistent/coadds"], "folder"),
    ("inject_stamps", ["--manifest", "/nonexistent/m", "--cutouts", "/nonexistent/c", "--bank", "/nonexistent/b.h5"],
     "folder"),
    ("validate_cosmos_injection", ["--stamps", "/nonexistent/stamps"], "file"),
    ("make_sample_sky", ["--targets", "/nonexistent/targets", "--catalogs", "/nonexistent/cat"], "folder"),
    ("build_lens_hosts", ["--with-targets", "/nonexistent/targets", "--catalog", "/nonexistent/hosts.fits"], "folder"),
    ("completeness", ["--stamps", "/nonexistent/stamps", "--scores", "/nonexistent/scores.parquet"], "folder"),
    ("evaluate_real_lenses", ["--anchors", "/nonexistent/anchors", "--scores", "/nonexistent/scores.parquet"], "folder"),
    ("build_anchors", [], "folder"),
    ("cosmos_lens_injector", ["--source", "/nonexistent/b.h5", "--cutout", "/nonexistent/c.fits",
                              "--theta-e", "1.5"], "file"),
]


def _main(name):
    import importlib
    return importlib.import_module(f"jobs.{name}").main


@pytest.mark.parametrize("name,args,kind", JOBS, ids=[j[0] for j in JOBS])
def test_unwritable_output_is_one_line_before_any_input_is_read(name, args, kind, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad = blocker / "out" if kind == "file" else blocker  # folder outputs: the file itself
    rc = _main(name)([*args, "--output", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(bad) in err and "Traceback" not in err, err
    assert "nonexistent" not in err  # the output was checked first (build_anchors: before its catalogues)


def test_missing_s3_bucket_is_one_line(s3_bucket, capsys):
    from jobs import select_lrgs

    out = "s3://no-such-bucket-lensinj/targets"
    assert select_lrgs.main(["--input", "/nonexistent/sweeps", "--output", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {out}: the output bucket 'no-such-bucket-lensinj' does not exist"


def test_writable_outputs_pass_and_leave_nothing(s3_bucket, tmp_path):
    storage.check_writable(f"{s3_bucket}/new/dataset", folder=True)
    storage.check_writable(f"{s3_bucket}/new/report.json", folder=False)
    storage.check_writable(str(tmp_path / "deep" / "new" / "dataset"), folder=True)
    assert storage.glob(f"{s3_bucket}/new/*") == [] and not (tmp_path / "deep").exists()
    with pytest.raises(InputError, match="existing folder, expected a file"):
        storage.check_writable(str(tmp_path), folder=False)
    with pytest.raises(InputError, match="HTTP"):
        storage.check_writable("https://example.invalid/out", folder=True)
