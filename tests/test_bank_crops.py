"""The source bank's footprint-crop layout and its node-local memory-mapped copy (issue 13, item 4),
on the real sample bank (``bank_path``: the documented 16-row btk_ext26 build)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from udfs.config.provenance import REPO_ROOT
from udfs.sources import bank as bank_module
from udfs.sources.bank import BankError, Crops, load_bank, node_copy, read_bank, read_bank_info


@pytest.fixture
def local_dir(tmp_path, monkeypatch):
    """A fresh ``$SPARK_LOCAL_DIRS`` (two entries: the first is used) and an empty load_bank cache."""
    monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{tmp_path / 'local'},{tmp_path / 'other'}")
    load_bank.cache_clear()
    yield tmp_path / "local" / "source-bank-cache"
    load_bank.cache_clear()


def _write_earlier_layout(bank, path) -> None:
    """The bank as the earlier layout stored it: dataset ``images`` (N, S, S), no crops."""
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.stack([bank.image(i) for i in range(len(bank))]),
                         chunks=(4, 96, 96), compression="gzip", shuffle=True)
        for k, v in bank.attrs.items():
            if k != "image_size":
                f.attrs[k] = v
        for k, v in bank.meta.items():
            f[f"meta/{k}"] = v


def test_bank_stores_each_footprint_crop_once(bank_path):
    """The file holds ``pixels`` + ``crops`` (no squares); each crop is its image's tight nonzero
    bounding box, the crops together are the images, and they are ~1/10 of the squares' pixels."""
    bank = read_bank(bank_path)
    with h5py.File(bank_path, "r") as f:
        assert "images" not in f and f["pixels"].ndim == 1 and f.attrs["image_size"] == 96
        assert sorted(f["crops"]) == sorted(bank_module.CROP_COLUMNS)
    off, y0, x0, h, w = bank.crops.boxes.T
    assert off[0] == 0 and np.all(off[1:] == (off + h * w)[:-1]) and bank.crops.pixels.size == (h * w).sum()
    assert bank.crops.pixels.size < 0.12 * len(bank) * 96 * 96
    for i in range(len(bank)):
        img, crop = bank.image(i), bank.crops.crop(i)
        assert img.shape == (96, 96) and img[y0[i]:y0[i] + h[i], x0[i]:x0[i] + w[i]].tobytes() == crop.tobytes()
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
        assert np.count_nonzero(img) == np.count_nonzero(crop)
    with pytest.raises(BankError, match="source index 6 out of range: the bank holds 6 galaxies"):
        bank.image(6)


def test_earlier_layout_reads_to_the_same_crops(bank_path, tmp_path, local_dir):
    """A bank of the earlier layout (full squares) is cropped on reading, by read_bank and load_bank
    alike: same crops, meta and size; read_bank_info reads its size from the headers."""
    bank = read_bank(bank_path)
    old = tmp_path / "old.h5"
    _write_earlier_layout(bank, old)
    for got in (read_bank(str(old)), load_bank(str(old))):
        np.testing.assert_array_equal(got.crops.boxes, bank.crops.boxes)
        assert got.crops.pixels.tobytes() == bank.crops.pixels.tobytes()
        assert set(got.meta) == set(bank.meta) and np.array_equal(got.meta["ident"], bank.meta["ident"])
        np.testing.assert_array_equal(got.support_pix, bank.support_pix)
    info = read_bank_info(str(old))
    assert (info.size, info.image_size) == (len(bank), 96)


@pytest.mark.parametrize("case, message", [
    ("box_outside_square", "bad crops (crop 2: [1170, 80, 28, 32, 34]"),
    ("box_past_pixels", "bad crops (crop 5:"),
    ("no_crops_group", "dataset 'pixels' needs attribute 'image_size' and group 'crops'"),
    ("ragged_crops", "the 'crops' columns must be 1-D arrays of one length"),
])
def test_bad_crop_layout_is_refused_in_one_line(bank_path, tmp_path, case, message):
    path = tmp_path / "bad.h5"
    path.write_bytes(open(bank_path, "rb").read())
    with h5py.File(path, "r+") as f:
        if case == "box_outside_square":
            f["crops/y0"][2] = 80
        elif case == "box_past_pixels":
            f["crops/height"][5] += 1
        elif case == "no_crops_group":
            del f["crops"]
        else:
            data = f["crops/width"][:-1]
            del f["crops/width"]
            f["crops/width"] = data
    with pytest.raises(BankError) as err:
        read_bank(str(path))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_load_bank_maps_one_node_copy(bank_path, tmp_path, local_dir, monkeypatch):
    """load_bank writes the node copy once (uncompressed, under the first $SPARK_LOCAL_DIRS entry)
    and memory-maps its pixels read-only; a later worker reuses it without reading the bank; a
    rewritten bank gets a new copy."""
    bank = read_bank(bank_path)
    (tmp_path / "bank.h5").write_bytes(open(bank_path, "rb").read())
    bank_path = str(tmp_path / "bank.h5")
    mapped = load_bank(bank_path)
    (copy,) = [p for p in os.listdir(local_dir) if p.endswith(".h5")]
    assert str(local_dir / copy) in open("/proc/self/maps").read()  # the pixels are the file's pages
    assert not mapped.crops.pixels.flags.writeable and not mapped.crops.pixels.flags.owndata
    assert mapped.crops.pixels.tobytes() == bank.crops.pixels.tobytes()
    np.testing.assert_array_equal(mapped.crops.boxes, bank.crops.boxes)
    assert all(np.array_equal(mapped.meta[k], bank.meta[k], equal_nan=mapped.meta[k].dtype.kind == "f")
               for k in bank.meta)
    assert mapped.attrs == bank.attrs and mapped.pixel_scale == bank.pixel_scale
    with h5py.File(local_dir / copy, "r") as f:
        assert f["pixels"].chunks is None and f["pixels"].compression is None

    load_bank.cache_clear()
    monkeypatch.setattr(bank_module, "read_bank", lambda uri: pytest.fail("the node copy was rewritten"))
    assert load_bank(bank_path).crops.pixels.tobytes() == bank.crops.pixels.tobytes()
    monkeypatch.undo()
    monkeypatch.setenv("SPARK_LOCAL_DIRS", str(local_dir.parent))
    st = os.stat(bank_path)
    os.utime(bank_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # "rewritten": a new mtime
    assert node_copy(bank_path) != str(local_dir / copy)


RACER = """
import sys
from udfs.sources.bank import load_bank
bank = load_bank(sys.argv[1])
print(sum(float(bank.crops.crop(i).sum()) for i in range(len(bank))))
"""


def test_workers_racing_for_the_node_copy_share_one_file(bank_path, local_dir):
    """Four worker processes started together: one copy written, no temp file left, every worker
    sees the whole bank."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, bank_path], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert [float(o[0]) for o in outs] == pytest.approx([len(read_bank(bank_path))] * 4, abs=1e-4)
    names = sorted(os.listdir(local_dir))
    assert len(names) == 2 and names[0].endswith(".h5") and names[1] == names[0] + ".lock", names


def test_load_bank_from_s3(bank_path, s3_bucket, local_dir):
    from udfs.io import storage

    uri = f"{s3_bucket}/banks/bank.h5"
    storage.write_bytes(uri, open(bank_path, "rb").read())
    mapped = load_bank(uri)
    assert mapped.crops.pixels.tobytes() == read_bank(bank_path).crops.pixels.tobytes()
    assert json.loads(mapped.attrs["rejected_counts"]) == json.loads(read_bank(bank_path).attrs["rejected_counts"])
    with pytest.raises(BankError, match="missing.h5: not a readable HDF5 source bank"):
        load_bank(f"{s3_bucket}/banks/missing.h5")


def test_crops_from_squares_and_back():
    """Crops of hand-made squares: tight boxes, an all-zero image as an empty crop, squares back."""
    images = np.zeros((3, 8, 8), np.float32)
    images[0, 2:5, 3:4] = 1.0
    images[2, 0, 7] = -2.0
    crops = Crops.from_squares(images)
    assert crops.boxes.tolist() == [[0, 2, 3, 3, 1], [3, 0, 0, 0, 0], [3, 0, 7, 1, 1]]
    assert all(np.array_equal(crops.square(i), images[i]) for i in range(3))
    np.testing.assert_allclose(bank_module.support_radius(crops), bank_module.support_radius(images))
    with pytest.raises(BankError, match=r"images must be \(N, S, S\), got \(3, 8\)"):
        Crops.from_squares(images[0, :3])


def test_executors_of_a_node_share_the_application_folder(bank_path, tmp_path, monkeypatch):
    """A Python worker's $SPARK_LOCAL_DIRS is its executor's blockmgr-* folder: the copy goes one
    level up (YARN: the application's folder on the node), where every executor finds it."""
    for executor in ("blockmgr-1111", "blockmgr-2222/"):
        monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{tmp_path / 'app' / executor},{tmp_path / 'disk2'}")
        assert os.path.dirname(node_copy(bank_path)) == str(tmp_path / "app" / "source-bank-cache")
    assert len([p for p in os.listdir(tmp_path / "app" / "source-bank-cache") if p.endswith(".h5")]) == 1
