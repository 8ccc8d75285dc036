"""jobs.make_cutouts and jobs.make_sample_sky end to end in local-mode Spark."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from jobs import make_cutouts, make_sample_sky
from jobs.spark import dataset_files
from udfs.io.parquet_files import parquet_bytes
from udfs.io import storage
from udfs.schemas import cutouts

BRICK = "0959p805"


def _write_targets(uri, df):
    storage.write_bytes(storage.join(uri, "part-00000.parquet"),
                        parquet_bytes(pa.Table.from_pandas(df, preserve_index=False)))


def _read(uri):
    tables = [pq.read_table(storage.open_input(f)) for f in dataset_files(uri)]
    return pa.concat_tables(tables), pq.read_schema(storage.open_input(dataset_files(uri)[0]))


def test_make_cutouts_on_s3(spark, s3_bucket, data_root):
    real = data_root / "legacysurvey" / "dr6_coadd_0959p805"
    for kind in ("image", "invvar"):
        name = f"legacysurvey-{BRICK}-{kind}-g.fits.fz"
        storage.write_bytes(f"{s3_bucket}/coadds/coadd/095/{BRICK}/{name}", (real / name).read_bytes())
    wcs = WCS(fits.getheader(real / f"legacysurvey-{BRICK}-image-g.fits.fz", 1))
    pix = [(400.3, 480.8), (600.7, 1200.2), (3000.0, 3000.0), (-300.0, 50.0)]
    ra, dec = wcs.all_pix2world([p[0] for p in pix], [p[1] for p in pix], 0)
    targets = pd.DataFrame({"target_id": ["a", "b", "c", "d"], "ra": ra, "dec": dec, "brickname": BRICK,
                            "split": ["train", "val", "test", "train"], "psf_fwhm_g": 1.5,
                            "psf_fwhm_r": 1.4, "psf_fwhm_z": 1.3, "healpix": 7})
    _write_targets(f"{s3_bucket}/targets", targets)
    out = f"{s3_bucket}/cutouts"
    rc = make_cutouts.main(["--targets", f"{s3_bucket}/targets", "--coadd-base", f"{s3_bucket}/coadds",
                            "--output", out, "--bands", "g", "--allow-missing-maskbits", "--n-buckets", "2"])
    assert rc == 0
    table, schema = _read(out)
    assert schema.field("image").type == pa.list_(pa.float32(), 64 * 64)
    assert schema.field("maskbits").type == pa.list_(pa.int32(), 64 * 64)
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert json.loads(meta["image_shape"]) == [1, 64, 64] and meta["band_order"] == "g"
    assert schema.equals(cutouts.cutout_schema("g", 64), check_metadata=False)
    assert [schema.field(n).metadata for n in schema.names] == \
        [f.metadata for f in cutouts.cutout_schema("g", 64)]  # the units of the one definition
    assert cutouts.layout_metadata("g", 64).items() <= meta.items()
    assert cutouts.stamp_geometry("x", meta) == ("g", 64)
    df = table.to_pandas().set_index("target_id").sort_index()
    assert df["ok"].tolist() == [True, True, False, False]
    assert df["fail_reason"].tolist()[2:] == ["low_coverage:g", "off_image"]
    assert df["split"].tolist() == ["train", "val", "test", "train"]
    # failed rows: every pixel item is null in Arrow (pyarrow 17 Parquet stores no null fixed-size
    # lists), never a zero; good rows hold no null item
    ids = table.column("target_id").to_pylist()
    for name in ("image", "invvar", "maskbits"):
        col = table.column(name).combine_chunks()
        for i, tid in enumerate(ids):
            nulls = col[i].values.null_count
            assert nulls == (64 * 64 if tid in ("c", "d") or name == "maskbits" else 0), (name, tid)
    full = fits.getdata(real / f"legacysurvey-{BRICK}-image-g.fits.fz", 1)
    a = df.loc["a"]
    np.testing.assert_array_equal(np.asarray(a["image"]).reshape(64, 64),
                                  full[a.stamp_y0:a.stamp_y0 + 64, a.stamp_x0:a.stamp_x0 + 64])
    assert set(df["code_version"]) == {meta["code_version"]}
    summary = json.loads(storage.read_bytes(f"{out}/_summary.json"))
    assert (summary["n_targets"], summary["n_ok"]) == (4, 2)
    assert summary["fail_reasons"] == {"low_coverage:g": 1, "off_image": 1}
    assert summary["read_fraction_of_whole_files"] < 0.1


def test_bad_input_exits_2_naming_file_and_column(tmp_path, capsys):
    targets = pd.DataFrame({"target_id": ["a"], "ra": [1.0], "dec": [2.0], "brickname": [BRICK],
                            "split": ["train"], "psf_fwhm_g": [1.0], "psf_fwhm_z": [1.0]})
    _write_targets(str(tmp_path / "targets"), targets)
    rc = make_cutouts.main(["--targets", str(tmp_path / "targets"), "--coadd-base", str(tmp_path),
                            "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "part-00000.parquet" in err and "psf_fwhm_r" in err and "Traceback" not in err
    rc = make_cutouts.main(["--targets", str(tmp_path / "targets"), "--coadd-base", str(tmp_path),
                            "--output", str(tmp_path / "out"), "--stamp-size", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--stamp-size: 0" in err and "Traceback" not in err


def test_sample_sky_then_cutouts_for_a_sweep_lrg(spark, tmp_path, data_root):
    """The demo path: an LRG whose brick has no Tractor file is rendered from the sweep rows."""
    ls = data_root / "legacysurvey"
    from udfs.survey.sample_sky import read_catalog

    sweep = read_catalog(str(ls / "dr8_sweeps" / "sweep-330m005-340p000.fits"))
    lrg = sweep[(sweep.brickname == "3381m017") & (sweep.objid == 99)].iloc[0]
    targets = pd.DataFrame({"target_id": ["8000-x-99"], "ra": [lrg.ra], "dec": [lrg.dec],
                            "brickname": ["3381m017"], "split": ["train"], "psf_fwhm_g": [1.4],
                            "psf_fwhm_r": [1.0], "psf_fwhm_z": [0.9]})
    _write_targets(str(tmp_path / "targets"), targets)
    sky = str(tmp_path / "sky")
    assert make_sample_sky.main(["--targets", str(tmp_path / "targets"), "--catalogs", str(ls / "dr8_tractor"),
                                 str(ls / "dr8_sweeps"), "--output", sky]) == 0
    info = json.loads(storage.read_bytes(f"{sky}/sample_sky.json"))
    assert [b["brickname"] for b in info["bricks"]] == ["3381m017"] and info["bricks"][0]["n_sources"] >= 1
    assert make_cutouts.main(["--targets", str(tmp_path / "targets"), "--coadd-base", sky,
                              "--output", str(tmp_path / "cutouts"), "--n-buckets", "1"]) == 0
    assert make_cutouts.main(["--targets", str(tmp_path / "targets"), "--coadd-base", sky,
                              "--output", str(tmp_path / "again"), "--n-buckets", "1"]) == 0
    assert [open(f, "rb").read() for f in dataset_files(str(tmp_path / "cutouts"))] == \
        [open(f, "rb").read() for f in dataset_files(str(tmp_path / "again"))]  # byte-identical rerun
    row = _read(str(tmp_path / "cutouts"))[0].to_pandas().iloc[0]
    assert row["ok"] and row["has_maskbits"] and row["bands"] == "grz"
    img = np.asarray(row["image"]).reshape(3, 64, 64)
    yy, xx = np.mgrid[:64, :64]
    ap = np.hypot(xx - 31.5 - row["dx_pix"], yy - 31.5 - row["dy_pix"]) < 20
    assert img[2][ap].sum() == pytest.approx(lrg.flux_z, rel=0.1)  # DEV wings beyond 5.2" make it ~5% low
