"""Stage-4 cutouts on the real DR6 brick 0959p805 (g and z only, partial coverage), served from
local disk, the S3-API server and plain HTTP range requests (the same server, unsigned GETs)."""
import io

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from udfs.config.checker import ConfigError
from udfs.io import storage
from udfs.io.errors import InputError
from udfs.survey import coadd_files
from udfs.survey.coadd_cutouts import CutoutConfig, cut_brick
from udfs.survey.coadd_files import brick_file
from udfs.survey.sky_files import fits_fz_bytes

BRICK = "0959p805"
FILES = [f"legacysurvey-{BRICK}-{k}-{b}.fits.fz" for k in ("image", "invvar") for b in "gz"]


@pytest.fixture(scope="module")
def real_brick(data_root):
    return data_root / "legacysurvey" / "dr6_coadd_0959p805"


@pytest.fixture(scope="module")
def full(real_brick):
    """Whole decompressed images (the reference for section reads) and the brick's WCS."""
    out = {name: fits.getdata(real_brick / name, 1) for name in FILES}
    return out, WCS(fits.getheader(real_brick / FILES[0], 1))


def _nested(real_brick, root):
    """Symlink the flat sample files into the survey layout coadd/<bri>/<brick>/ under root."""
    folder = root / "coadd" / BRICK[:3] / BRICK
    folder.mkdir(parents=True)
    for name in FILES:
        (folder / name).symlink_to(real_brick / name)
    return str(root)


def _targets(wcs, pixels):
    ra, dec = wcs.all_pix2world(np.array([p[0] for p in pixels]), np.array([p[1] for p in pixels]), 0)
    return pd.DataFrame({"target_id": [f"t{i}" for i in range(len(pixels))], "ra": ra, "dec": dec,
                         "psf_fwhm_g": 1.5, "psf_fwhm_r": 1.4, "psf_fwhm_z": 1.3, "split": "train"})


def _coadd_base(real_brick, tmp_path, where: str, request, files) -> str:
    """The brick's ``files`` in the survey layout under a base that is a local folder, an ``s3://``
    bucket on the moto server, or that bucket over HTTP (``where``: local | s3 | http)."""
    if where == "local":
        return _nested(real_brick, tmp_path)
    bucket = request.getfixturevalue("s3_bucket")
    for name in files:
        storage.write_bytes(f"{bucket}/dr6/coadd/{BRICK[:3]}/{BRICK}/{name}", (real_brick / name).read_bytes())
    if where == "s3":
        return f"{bucket}/dr6"
    return request.getfixturevalue("s3_server") + "/" + bucket[len("s3://"):] + "/dr6"


@pytest.mark.parametrize("where", ["local", "s3", "http"])
def test_stamps_equal_full_image_sections_and_read_few_bytes(real_brick, full, tmp_path, where, request):
    images, wcs = full
    base = _coadd_base(real_brick, tmp_path, where, request, FILES)
    # g covers x < 883, y < 1888; z only the bottom ~37 rows; (3000, 3000) has no g coverage
    pixels = [(400.3, 480.8), (600.7, 1200.2), (300.2, 40.4), (20.0, 500.0), (-300.0, 50.0), (3000.0, 3000.0)]
    targets = _targets(wcs, pixels)
    cfg = CutoutConfig(bands="gz", min_good_frac=0.0, require_maskbits=False)
    out = cut_brick(base, BRICK, targets, cfg)

    assert list(out["target_id"]) == list(targets["target_id"])
    assert out["ok"].tolist() == [True, True, True, False, False, True]
    assert out["fail_reason"].tolist()[3:5] == ["stamp_crosses_edge", "off_image"]
    for i, (x, y) in enumerate(pixels[:3]):
        row = out.iloc[i]
        x0, y0 = int(np.floor(x - 31.5 + 0.5)), int(np.floor(y - 31.5 + 0.5))
        assert (row.stamp_x0, row.stamp_y0) == (x0, y0)
        # the target's WCS position lands at (31.5 + dx, 31.5 + dy) in the stamp, nothing rounded away
        assert row.dx_pix == pytest.approx(x - (x0 + 31.5), abs=1e-6)
        assert row.dy_pix == pytest.approx(y - (y0 + 31.5), abs=1e-6)
        img = row.image.reshape(2, 64, 64)
        ivar = row.invvar.reshape(2, 64, 64)
        for k, b in enumerate("gz"):
            ref_img = images[f"legacysurvey-{BRICK}-image-{b}.fits.fz"][y0:y0 + 64, x0:x0 + 64]
            ref_iv = images[f"legacysurvey-{BRICK}-invvar-{b}.fits.fz"][y0:y0 + 64, x0:x0 + 64]
            np.testing.assert_array_equal(img[k], ref_img)
            np.testing.assert_array_equal(ivar[k], ref_iv)
        assert row.maskbits is None and not row.has_maskbits
    assert out.iloc[2].good_frac < 0.1  # z barely covered: invvar 0 marks it, as in the survey
    # bytes: a stamp pays a few tiles (shared with stamps on the same tiles) and its share of the
    # headers and tile-table rows (tests/test_cutouts_bytes.py checks the split exactly)
    sizes = sum((real_brick / n).stat().st_size for n in FILES)
    assert (out["file_bytes"].iloc[:3] == sizes).all()
    assert out["bytes_read"].iloc[0] < 0.12 * sizes
    assert out["bytes_read"].iloc[1] < 0.03 * sizes
    assert out["bytes_read"].sum() < 0.2 * sizes

    # the brick has no r band and no maskbits file: flagged rows, never an exception
    grz = cut_brick(base, BRICK, targets.iloc[:2], CutoutConfig(require_maskbits=False))
    assert grz["fail_reason"].tolist() == ["missing_band:r"] * 2 and not grz["ok"].any()
    assert grz["image"].isna().all()
    strict = cut_brick(base, BRICK, targets.iloc[:1], CutoutConfig(bands="g"))
    assert strict["fail_reason"].tolist() == ["missing_maskbits"]


def test_flagged_rows_for_nan_coverage_unreadable_and_psf(real_brick, full, tmp_path):
    images, wcs = full
    folder = tmp_path / "coadd" / BRICK[:3] / BRICK
    folder.mkdir(parents=True)
    hdr = fits.getheader(real_brick / FILES[0], 1)
    img = images[FILES[0]].copy()
    img[400:560, 300:460] = np.nan  # a hole of non-finite pixels
    (folder / FILES[0]).write_bytes(fits_fz_bytes(img, hdr, 7))
    (folder / FILES[2]).symlink_to(real_brick / FILES[2])  # invvar-g
    targets = _targets(wcs, [(380.0, 480.0), (450.0, 570.0), (3000.0, 3000.0), (600.7, 1200.2)])
    targets.loc[3, "psf_fwhm_g"] = 0.0
    out = cut_brick(str(tmp_path), BRICK, targets, CutoutConfig(bands="g", require_maskbits=False))
    assert out["fail_reason"].tolist() == ["all_nan:g", None, "low_coverage:g", "bad_psf:g"]
    partly = out.iloc[1]  # stamp half in the hole: NaNs become image 0 with invvar 0, never "good"
    stamp_img, stamp_iv = partly.image.reshape(64, 64), partly.invvar.reshape(64, 64)
    assert np.isfinite(stamp_img).all() and partly.ok
    hole = np.isnan(img[partly.stamp_y0:partly.stamp_y0 + 64, partly.stamp_x0:partly.stamp_x0 + 64])
    assert hole.any() and (stamp_iv[hole] == 0).all() and (stamp_img[hole] == 0).all()

    (folder / FILES[0]).write_bytes(b"SIMPLE  = this is not a FITS file" * 200)
    bad = cut_brick(str(tmp_path), BRICK, targets.iloc[:1], CutoutConfig(bands="g", require_maskbits=False))
    assert bad["fail_reason"].tolist() == ["unreadable:image-g"]


class _Flaky(io.RawIOBase):
    """A file whose first ``fails`` reads raise, like a dropped connection."""
    failures = 0

    def __init__(self, path, fails):
        self.f, self.fails = open(path, "rb"), fails

    def seekable(self):
        return True

    def seek(self, o, w=0):
        return self.f.seek(o, w)

    def read(self, n=-1):
        if _Flaky.failures < self.fails:
            _Flaky.failures += 1
            raise OSError("connection reset")
        return self.f.read(n)


def test_remote_errors_are_retried_then_reported(real_brick, full, tmp_path, monkeypatch):
    _, wcs = full
    base = _nested(real_brick, tmp_path)
    targets = _targets(wcs, [(400.3, 480.8)])
    monkeypatch.setattr(coadd_files, "_open_raw", lambda uri, size: _Flaky(uri, fails=3))
    _Flaky.failures = 0
    out = cut_brick(base, BRICK, targets, CutoutConfig(bands="g", require_maskbits=False, retries=3, backoff_s=0.001))
    assert out["ok"].tolist() == [True] and _Flaky.failures == 3
    _Flaky.failures = 0
    out = cut_brick(base, BRICK, targets, CutoutConfig(bands="g", require_maskbits=False, retries=1, backoff_s=0.001))
    assert out["fail_reason"].tolist() == ["read_error:image-g"]


def test_brick_file_layouts():
    assert brick_file("s3://b/dr10", "0959p805", "image", "g") == \
        "s3://b/dr10/coadd/095/0959p805/legacysurvey-0959p805-image-g.fits.fz"
    assert brick_file("https://h/dr10/", "0959p805", "maskbits") == \
        "https://h/dr10/coadd/095/0959p805/legacysurvey-0959p805-maskbits.fits.fz"
    assert brick_file("/d", "0959p805", "invvar", "z", layout="flat") == "/d/legacysurvey-0959p805-invvar-z.fits.fz"



@pytest.mark.parametrize("change, flag", [
    (dict(bands="gx"), "--bands"), (dict(bands="gg"), "--bands"), (dict(bands=""), "--bands"),
    (dict(stamp_size=2), "--stamp-size"), (dict(min_good_frac=1.5), "--min-good-frac"),
    (dict(layout="tree"), "--layout"), (dict(retries=-1), "--retries"),
])
def test_bad_cutout_settings_are_input_errors_naming_the_flag(change, flag):
    with pytest.raises(ConfigError, match=f"^{flag}: ") as err:
        CutoutConfig(**change).validate()
    assert isinstance(err.value, InputError)
    CutoutConfig(bands="griz").validate()  # DR10 south coadds carry i
