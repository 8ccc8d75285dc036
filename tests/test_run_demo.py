"""``make run`` over an earlier demo: the same code reruns in place, other code starts afresh."""
import json

from jobs.run_demo import _clear_other_code
from udfs.config.provenance import code_version


def _demo(root, version):
    (root / "manifest").mkdir(parents=True)
    (root / "manifest" / "part-00000.parquet").write_bytes(b"x")
    (root / "summary.json").write_text(json.dumps({"code_version": version}))


def test_a_demo_of_other_code_is_removed_and_anything_else_kept(tmp_path, capsys):
    _demo(tmp_path / "old", "0" * 40)
    _clear_other_code(tmp_path / "old")
    assert not (tmp_path / "old").exists()
    assert f"holds the demo of code {'0' * 40}; starting it afresh" in capsys.readouterr().out
    _demo(tmp_path / "same", code_version())
    _clear_other_code(tmp_path / "same")
    assert (tmp_path / "same" / "manifest" / "part-00000.parquet").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not a demo")
    _clear_other_code(tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").exists()
