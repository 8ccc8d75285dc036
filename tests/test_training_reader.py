"""The training reader on a real stage-5 dataset: every ok stamp of a split once, its pixels and
labels as stored, truth aligned with the rows, streaming in bounded batches, seeded shuffles;
the PyTorch wrapper when torch is installed."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import inject_stamps
from jobs.spark import dataset_files
from udfs.io.datasets import DatasetError
from udfs.stamps.training_reader import iter_batches, torch_dataset


@pytest.fixture(scope="module")
def stamps(pipeline_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reader") / "stamps"
    inputs = pipeline_inputs
    assert inject_stamps.main(["--manifest", inputs["manifest"], "--cutouts", inputs["cutouts"],
                               "--bank", inputs["bank"], "--output", str(out)]) == 0
    return str(out)


def _float32(value: bytes) -> np.ndarray:
    return np.ascontiguousarray(np.frombuffer(value, np.uint8).reshape(4, -1).T).view("<f4").ravel()


def _stored(uri: str, split: str) -> dict:
    """task_id -> (image (3, 64, 64), label) straight from the files (the byte planes of
    udfs.io.pixel_codec undone in NumPy)."""
    out = {}
    for f in dataset_files(f"{uri}/split={split}"):
        t = pq.read_table(f, columns=["task_id", "ok", "is_control", "image"]).to_pylist()
        for r in t:
            if r["ok"]:
                out[r["task_id"]] = (_float32(r["image"]).reshape(3, 64, 64), int(not r["is_control"]))
    return out


def test_batches_hold_every_ok_stamp_once_with_its_pixels_label_and_truth(stamps):
    want = _stored(stamps, "train")
    seen = {}
    for b in iter_batches(stamps, "train", batch_size=7):
        assert b.image.dtype == np.float32 and b.image.shape[1:] == (3, 64, 64) and len(b) <= 7
        assert b.label.dtype == np.int64 and set(b.truth) >= {"task_id", "theta_e", "magnification"}
        for j, tid in enumerate(b.truth["task_id"]):
            assert tid not in seen
            seen[tid] = (b.image[j], b.label[j], b.truth["theta_e"][j])
    assert set(seen) == set(want) and len(want) > 10
    for tid, (image, label, theta_e) in seen.items():
        np.testing.assert_array_equal(image, want[tid][0])
        assert label == want[tid][1]
        assert np.isnan(theta_e) == (label == 0)  # controls have no lens truth
    assert {1, 0} == {v[1] for v in seen.values()}


def test_shuffle_is_seeded_and_keeps_the_rows(stamps):
    def order(seed, buffer):
        return [t for b in iter_batches(stamps, "train", batch_size=5, shuffle_buffer=buffer, seed=seed)
                for t in b.truth["task_id"]]
    plain, a, again, other = order(0, 0), order(1, 16), order(1, 16), order(2, 16)
    assert a == again and a != other and a != plain
    assert sorted(a) == sorted(plain) == sorted(other)


def test_failed_rows_are_skipped_and_counted(stamps, tmp_path):
    src = dataset_files(f"{stamps}/split=train")[0]
    t = pq.read_table(src)
    ok = np.array(t.column("ok").to_pylist())
    ok[0] = False
    (tmp_path / "split=train").mkdir()
    pq.write_table(t.set_column(t.schema.get_field_index("ok"), "ok", pa.array(ok)), tmp_path / "split=train" / "part-00000.parquet")
    batches = iter_batches(str(tmp_path), "train", batch_size=1000)
    assert sum(len(b) for b in batches) == t.num_rows - 1 and batches.skipped == 1


def test_bad_requests_are_clear_errors(stamps):
    with pytest.raises(DatasetError, match="no stamps files for split 'holdout'"):
        iter_batches(stamps, "holdout")
    with pytest.raises(DatasetError, match="no column 'nope'"):
        iter_batches(stamps, "train", truth=("task_id", "nope"))


def test_torch_iterable_dataset(stamps):
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(torch_dataset(stamps, "train", batch_size=4), batch_size=None)
    image, label, truth = next(iter(loader))
    assert image.dtype == torch.float32 and tuple(image.shape[1:]) == (3, 64, 64) and label.dtype == torch.int64
    assert len(truth["task_id"]) == len(label)
