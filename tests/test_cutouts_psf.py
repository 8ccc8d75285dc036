"""Stage 4 on the real testcase6 patch: the survey's PSF at each target and the stamp's noise texture."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from jobs import make_cutouts
from jobs.spark import dataset_files
from udfs.io.parquet_files import parquet_bytes
from udfs.io import storage
from udfs.survey import psf_stack as ps
from udfs.survey.noise_texture import texture_of_coadd

BRICK = "1102p240"


@pytest.fixture(scope="module")
def patch(data_root):
    ls = data_root / "legacysurvey"
    if not (ls / "dr9_ccds_testcase6").exists():
        pytest.skip("real testcase6 patch not present")
    return {"coadd": ls / "coadd_1102p240_z", "ccds": ls / "dr9_ccds_testcase6" / "survey-ccds-1.fits.gz",
            "calib": ls / "dr9_ccds_testcase6" / "calib"}


def _targets(tmp_path, patch):
    """Three targets on the 100x100 real z coadd: its centre (a galaxy fills the stamp) and two
    emptier corners; stamps of 48 px."""
    wcs = WCS(fits.getheader(patch["coadd"] / f"legacysurvey-{BRICK}-image-z.fits.fz", 1))
    ra, dec = wcs.all_pix2world([49.5, 24.0, 75.2], [49.5, 24.0, 75.4], 0)
    df = pd.DataFrame({"target_id": ["centre", "corner0", "corner1"], "ra": ra, "dec": dec, "brickname": BRICK,
                       "split": "train", "psf_fwhm_z": 1.3})
    uri = str(tmp_path / "targets")
    storage.write_bytes(storage.join(uri, "part-00000.parquet"),
                        parquet_bytes(pa.Table.from_pandas(df, preserve_index=False)))
    return uri, df


def _run(tmp_path, patch, name, *extra):
    targets, df = _targets(tmp_path, patch)
    out = str(tmp_path / name)
    rc = make_cutouts.main(["--targets", targets, "--coadd-base", str(patch["coadd"]), "--layout", "flat",
                            "--bands", "z", "--stamp-size", "48", "--allow-missing-maskbits",
                            "--output", out, "--n-buckets", "1", *extra])
    assert rc == 0
    rows = pq.read_table(dataset_files(out)[0]).to_pandas().set_index("target_id").sort_index()
    summary = json.loads(storage.read_bytes(storage.join(out, "_summary.json")))
    return rows, summary, df


def test_stage4_stores_the_ccd_psfex_stack_at_each_target(spark, tmp_path, patch):
    rows, summary, df = _run(tmp_path, patch, "cut", "--ccds", str(patch["ccds"]),
                             "--calib-base", str(patch["calib"]))
    assert rows["ok"].all()
    for tid, row in rows.iterrows():
        k = int(row["psf_size"])
        kernel = np.asarray(row["psf"], np.float32).reshape(1, k, k)[0]
        assert k % 2 == 1 and abs(kernel.sum(dtype=np.float64) - 1) < 1e-5
        assert list(row["psf_source"]) == ["psfex_stack:2 ccds"]
        ra, dec = df.set_index("target_id").loc[tid, ["ra", "dec"]]
        ref, _, _ = ps.psf_at_target(str(patch["ccds"]), str(patch["calib"]), ra, dec, "z")
        np.testing.assert_allclose(kernel, ref, atol=1e-7)   # the stack at this target, stored as is
        wide = ps.crop_to_fraction(ref, 0.99999)
        assert ps.flux_beyond(wide, 2 * ps.fwhm_pixels(wide)) > 0.04   # DECam wings, not a Gaussian's 1e-5
    a, b = (np.asarray(rows.loc[t, "psf"]) for t in ("corner0", "corner1"))
    assert not np.array_equal(a, b), "the PSF is evaluated at each target, not once per brick"
    counts = summary["psf_source_counts"]["z"]
    assert counts == {"psfex_stack": 3} and summary["psf_fallback_reasons"] == {}
    brick = summary["psf_by_brick"][BRICK]
    files = [f for f in brick["psf_files"]]
    assert any(f.endswith("survey-ccds-1.fits.gz") for f in files)
    assert sum(f.endswith("-psfex.fits") for f in files) == 2        # the two z exposures' models, once each
    assert brick["psf_bytes_read"] == int(rows["psf_bytes_read"].sum()) > 0
    assert rows["psf_bytes_read"].min() < rows["psf_bytes_read"].max()  # the first target pays the files


def test_stage4_noise_texture_per_stamp_and_brick_median(spark, tmp_path, patch):
    rows, summary, _ = _run(tmp_path, patch, "cut_tex", "--ccds", str(patch["ccds"]),
                            "--calib-base", str(patch["calib"]))
    coadd = patch["coadd"]
    image = fits.getdata(coadd / f"legacysurvey-{BRICK}-image-z.fits.fz").astype(float)
    invvar = fits.getdata(coadd / f"legacysurvey-{BRICK}-invvar-z.fits.fz").astype(float)
    for tid in ("corner0", "corner1"):
        row = rows.loc[tid]
        assert row["noise_source"][0].startswith("measured:")
        x0, y0 = int(row["stamp_x0"]), int(row["stamp_y0"])
        own = texture_of_coadd(image[y0:y0 + 48, x0:x0 + 48], invvar[y0:y0 + 48, x0:x0 + 48])
        assert abs(row["noise_corr_z"] - own.neighbour) < 1e-5     # the stamp's own pixels, as read by stage 4
        assert 0.05 < row["noise_corr_z"] < 0.35, "a resampled coadd's noise is correlated"
        kernel = np.asarray(row["noise_kernel"], float).reshape(3, 3)
        assert abs(np.sum(kernel ** 2) - 1) < 1e-5
    centre = rows.loc["centre"]
    assert centre["noise_source"][0].startswith("brick_median:2 stamps; white:only "), centre["noise_source"]
    median = np.median([np.asarray(rows.loc[t, "noise_rho"]).reshape(3, 3) for t in ("corner0", "corner1")], 0)
    np.testing.assert_allclose(np.asarray(centre["noise_rho"]).reshape(3, 3), median, atol=1e-6)
    assert summary["noise_source_counts"]["z"] == {"brick_median": 1, "measured": 2}
    print(f"\nnoise_corr_z per stamp {rows['noise_corr_z'].round(3).to_dict()}")


def test_stage4_falls_back_to_moffat_and_says_why(spark, tmp_path, patch):
    # the brick's own -ccds.fits (DR3-era) is beside this coadd, but no calib/psfex under it
    rows, summary, _ = _run(tmp_path, patch, "cut_fallback")
    for _, row in rows.iterrows():
        src = row["psf_source"][0]
        assert src.startswith("moffat:fwhm=psfsize,beta=3.10 (default); no stack: ")
        assert src.endswith("/calib/psfex/decam/CP20150108/c4d_150110_053718_ooi_z_v1-S4-psfex.fits: PSFEx file not found")
        k = int(row["psf_size"])
        kernel = np.asarray(row["psf"], float).reshape(k, k)
        fwhm = ps.fwhm_pixels(kernel) * 0.262
        assert abs(fwhm / 1.3 - 1) < 0.03                       # the target's PSFSIZE
    assert summary["psf_source_counts"]["z"] == {"moffat (fallback)": 3}
    assert len(summary["psf_fallback_reasons"]) == 1


def test_stage4_gaussian_only_when_asked(spark, tmp_path, patch):
    rows, summary, _ = _run(tmp_path, patch, "cut_gauss", "--psf-model", "gaussian")
    assert all(r[0] == "gaussian:fwhm=psfsize (configured)" for r in rows["psf_source"])
    assert summary["psf_source_counts"]["z"] == {"gaussian": 3}


def test_stage4_missing_psf_inputs_named_in_one_line(tmp_path, patch, capsys):
    targets, _ = _targets(tmp_path, patch)
    rc = make_cutouts.main(["--targets", targets, "--coadd-base", str(patch["coadd"]), "--layout", "flat",
                            "--bands", "z", "--output", str(tmp_path / "x"), "--ccds", str(tmp_path / "none.fits")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: --ccds {tmp_path / 'none.fits'}: not found"]
