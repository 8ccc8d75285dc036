"""The single-stamp command: output layout, header truth, determinism, noise, clear errors; the bank
metadata reader the drivers use."""
import numpy as np
import pytest
from astropy.io import fits

from jobs.cosmos_lens_injector import main
from tests.lensing_fixtures import tan_header, write_cube_cutout, write_test_bank
from udfs.lensing.arc_metrics import arc_snr, core_flux_fraction
from udfs.survey.shot_noise import add_poisson_noise
from udfs.lensing.arcs import nanomaggies
from udfs.sources import bank as bank_module
from udfs.sources.bank import BankError, read_bank, read_bank_info


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, data_root):
    d = tmp_path_factory.mktemp("cli")
    write_test_bank(d / "bank.h5", data_root / "cosmos" / "btk_ext26")
    write_cube_cutout(d / "cube.fits")
    return d


def run(inputs, out, *extra):
    return main(["--source", str(inputs / "bank.h5"), "--cutout", str(inputs / "cube.fits"),
                 "--output", str(out), "--theta-e", "1.5", *extra])


def test_example_command_writes_injected_cube_arcs_and_truth(inputs, tmp_path):
    out = tmp_path / "out.fits"
    assert run(inputs, out, "--src-index", "2", "--src-mag-r", "22", "--psf-fwhm", "1.2") == 0
    with fits.open(out) as h, fits.open(inputs / "cube.fits") as src:
        assert [x.name for x in h] == ["PRIMARY", "INVVAR", "ARC_G", "ARC_R", "ARC_Z"]
        hdr = h[0].header
        for key in ("THETA_E", "LENS_E1", "SHEAR_G1", "SRC_X", "SRC_PHI", "SRC_IDX", "SRCMAG_G",
                    "MAGNIF", "NIMAGES", "ARCSNR", "COREFRAC", "SEED", "CODEVER", "PSFFWHMR"):
            assert key in hdr, key
        assert hdr["SRC_IDX"] == 2 and hdr["THETA_E"] == 1.5
        assert hdr["SRCMAG_G"] == pytest.approx(22 + 0.3 + 0.1 * 2)  # r + the bank's g-r of row 2
        arcs = np.stack([h[f"ARC_{b}"].data for b in "GRZ"])
        added = h[0].data - src[0].data
        # finite; slightly negative only where the HST noise of the fixture bank images dips
        assert np.isfinite(arcs).all() and arcs.min() > -0.01 * arcs.max()
        # injected - original = the arc plus its own Poisson noise: same flux to a few sigma
        assert added.sum(axis=(1, 2)) == pytest.approx(arcs.sum(axis=(1, 2)), rel=0.1)
        # the arc keeps the magnification: its r flux is source flux x magnification (PSF on stamp)
        assert arcs[1].sum() == pytest.approx(nanomaggies(22.0) * hdr["MAGNIF"], rel=0.01)
        assert hdr["ARCFLUXR"] == pytest.approx(float(arcs[1].sum()), rel=1e-5)
        np.testing.assert_array_equal(h["INVVAR"].data, src["INVVAR"].data)


def test_same_seed_is_byte_identical_and_seed_changes_noise(inputs, tmp_path):
    a, b, c = tmp_path / "a.fits", tmp_path / "b.fits", tmp_path / "c.fits"
    assert run(inputs, a, "--seed", "7") == 0
    assert run(inputs, b, "--seed", "7") == 0
    assert run(inputs, c, "--seed", "8") == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_no_noise_adds_exactly_the_arc_and_sersic_mode_uses_the_twin(inputs, tmp_path):
    out = tmp_path / "s.fits"
    assert run(inputs, out, "--no-noise", "--src-mode", "sersic", "--src-index", "1",
               "--psf-model", "moffat", "--moffat-beta", "3", "--psf-fwhm-g", "1.4",
               "--psf-fwhm-r", "1.2", "--psf-fwhm-z", "1.1") == 0
    with fits.open(out) as h, fits.open(inputs / "cube.fits") as src:
        added = h[0].data - src[0].data
        arcs = np.stack([h[f"ARC_{b}"].data for b in "GRZ"])
        np.testing.assert_allclose(added, arcs, atol=1e-5)
        assert h[0].header["SERSIC_N"] == 1.0 and h[0].header["SERSICRE"] == 0.3
        assert h[0].header["SRC_PHI"] == pytest.approx(0.4)  # twin angle + --src-phi 0
        assert h[0].header["PSFBETA"] == 3


def test_ra_dec_moves_the_lens_centre(inputs, tmp_path):
    out = tmp_path / "radec.fits"
    # 10 pixels east of the centre: RA larger, and with CD1_1 < 0 that is -x
    ra = 150.0 + 10 * 0.262 / 3600 / np.cos(np.radians(2.2))
    assert run(inputs, out, "--no-noise", "--ra", f"{ra:.10f}", "--dec", "2.2") == 0
    hdr = fits.getheader(out)
    assert hdr["LENS_X"] == pytest.approx(-10 * 0.262, abs=0.01)
    assert hdr["LENS_Y"] == pytest.approx(0.0, abs=0.01)


def test_per_band_layout_round_trips(inputs, tmp_path):
    path = tmp_path / "perband.fits"
    hdus = [fits.PrimaryHDU()]
    for b in "grz":
        hdus.append(fits.ImageHDU(np.zeros((48, 48), np.float32), header=tan_header(48), name=f"IMAGE_{b.upper()}"))
        hdus.append(fits.ImageHDU(np.full((48, 48), 100, np.float32), header=tan_header(48), name=f"INVVAR_{b.upper()}"))
    fits.HDUList(hdus).writeto(path)
    out = tmp_path / "perband_out.fits"
    assert main(["--source", str(inputs / "bank.h5"), "--cutout", str(path), "--output", str(out),
                 "--theta-e", "1.0", "--no-noise"]) == 0
    with fits.open(out) as h:
        np.testing.assert_allclose(h["IMAGE_R"].data, h["ARC_R"].data, atol=1e-7)
        assert h["IMAGE_R"].data.sum() > 0


def test_missing_band_in_a_real_legacy_survey_brick(inputs, tmp_path, data_root, capsys):
    """The real DR6 brick 0959p805 has g and z but no r: a cutout of it names the missing band."""
    brick = data_root / "legacysurvey" / "dr6_coadd_0959p805"
    hdus = [fits.PrimaryHDU()]
    for b in "gz":
        with fits.open(brick / f"legacysurvey-0959p805-image-{b}.fits.fz") as h:
            sec = h[1].section[1800:1864, 1800:1864]
            hdr = h[1].header
        hdus.append(fits.ImageHDU(sec.astype(np.float32), name=f"IMAGE_{b.upper()}",
                                  header=fits.Header([c for c in hdr.cards if c.keyword.startswith(("CTYPE", "CRVAL", "CD", "CUNIT"))])))
    path = tmp_path / "real_gz.fits"
    fits.HDUList(hdus).writeto(path)
    out = tmp_path / "never.fits"
    err = main(["--source", str(inputs / "bank.h5"), "--cutout", str(path), "--output", str(out),
                "--theta-e", "1.0"])
    assert err == 2 and not out.exists()
    assert "real_gz.fits: missing band(s) r (file has IMAGE_ HDUs for gz)" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--theta-e", "0"], "--theta-e must be > 0"),
    (["--theta-e", "-1"], "--theta-e must be > 0"),
    (["--src-index", "99"], "source index 99 out of range: the bank holds 6"),
    (["--ra", "150.0"], "--ra and --dec go together"),
    (["--psf-fwhm", "0"], "PSF FWHM must be a positive number"),
    (["--lens-e1", "0.8", "--lens-e2", "0.8"], "lens ellipticity |e| = sqrt(e1^2 + e2^2) must be < 1"),
    (["--src-mode", "sersic", "--sersic-n", "7"], "Sersic needs 0.3 <= n <= 6.2"),
])
def test_bad_parameters_are_clear_errors(inputs, tmp_path, capsys, extra, message):
    assert run(inputs, tmp_path / "x.fits", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.fits").exists()


def test_nan_only_missing_band_no_invvar_and_unknown_option(inputs, tmp_path, capsys):
    nan = tmp_path / "nan.fits"
    write_cube_cutout(nan, nan_band="r")
    assert main(["--source", str(inputs / "bank.h5"), "--cutout", str(nan), "--output",
                 str(tmp_path / "o.fits"), "--theta-e", "1"]) == 2
    assert "band r has no finite pixel" in capsys.readouterr().err
    gz = tmp_path / "gz.fits"
    write_cube_cutout(gz, bands="gz")
    assert main(["--source", str(inputs / "bank.h5"), "--cutout", str(gz), "--output",
                 str(tmp_path / "o.fits"), "--theta-e", "1"]) == 2
    assert "missing band(s) r (BANDS = 'gz')" in capsys.readouterr().err
    noiv = tmp_path / "noiv.fits"
    write_cube_cutout(noiv, invvar=False)
    assert main(["--source", str(inputs / "bank.h5"), "--cutout", str(noiv), "--output",
                 str(tmp_path / "o.fits"), "--theta-e", "1"]) == 2
    assert "no invvar" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run(inputs, tmp_path / "o.fits", "--lens-q", "0.5")
    assert exc.value.code == 2
    assert "unrecognized arguments: --lens-q" in capsys.readouterr().err


def test_poisson_noise_is_zero_off_the_arc_and_has_the_right_variance():
    rng = np.random.default_rng(0)
    arc = np.zeros((200, 200))
    arc[50:150, 50:150] = 2.0   # nanomaggies
    gain = 40.0
    noisy = add_poisson_noise(arc, gain, rng)
    assert np.all(noisy[arc == 0] == 0)
    on = noisy[arc > 0]
    assert on.mean() == pytest.approx(2.0, rel=0.01)
    assert on.var() == pytest.approx(2.0 / gain, rel=0.05)
    again = add_poisson_noise(arc, gain, np.random.default_rng(0))
    np.testing.assert_array_equal(noisy, again)


def test_arc_snr_does_not_depend_on_stamp_size_and_core_fraction_is_local():
    yy, xx = np.indices((96, 96)) - 47.5
    arc = np.exp(-0.5 * ((np.hypot(xx, yy) - 10) / 1.5) ** 2)  # a ring of radius 10 px
    small = arc[16:80, 16:80]
    iv = 50.0
    snr_big = arc_snr(arc[None, None], np.full((1, 1, 96, 96), iv))[0, 0]
    snr_small = arc_snr(small[None, None], np.full((1, 1, 64, 64), iv))[0, 0]
    assert snr_small == pytest.approx(snr_big, rel=1e-6)
    assert snr_big == pytest.approx(np.sqrt((arc ** 2).sum() * iv), rel=1e-3)
    # masked pixels (invvar 0) add nothing
    masked = np.full((1, 1, 96, 96), iv)
    masked[..., :48] = 0
    assert arc_snr(arc[None, None], masked)[0, 0] == pytest.approx(snr_big / np.sqrt(2), rel=1e-3)
    # the ring at 10 px = 2.6" lies outside a 1" core; a blob at the centre lies inside
    assert core_flux_fraction(arc[None, None], [0.0], [0.0], 0.262, 1.0)[0] < 0.01
    blob = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 0.5)
    assert core_flux_fraction(blob[None, None], [0.0], [0.0], 0.262, 1.0)[0] > 0.99


def test_a_bug_keeps_its_traceback(inputs, tmp_path, monkeypatch):
    """Only bad input exits 2: an error of the code itself propagates."""
    import jobs.cosmos_lens_injector as cli

    def broken(*a, **k):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(cli, "render_arcs", broken)
    with pytest.raises(ValueError, match="a bug"):
        run(inputs, tmp_path / "x.fits")


class _CountingFile:
    """A file object that counts the bytes read through it."""

    def __init__(self, f, counter):
        self._f, self._counter = f, counter

    def read(self, *args):
        data = self._f.read(*args)
        self._counter.append(len(data))
        return data

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self._counter.append(n)
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_bank_info_reads_sizes_and_attributes_without_the_images(inputs, tmp_path, monkeypatch):
    import h5py

    path = tmp_path / "big_bank.h5"
    with h5py.File(inputs / "bank.h5", "r") as src, h5py.File(path, "w") as dst:
        images = np.tile(src["images"][...], (40, 1, 1))  # 240 images, 3.9 MB
        dst.create_dataset("images", data=images)
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        src.copy("meta", dst)
    full = read_bank(str(path))
    read = []
    real_open = bank_module.storage.open_input
    monkeypatch.setattr(bank_module.storage, "open_input", lambda uri: _CountingFile(real_open(uri), read))
    info = read_bank_info(str(path))
    assert (info.size, info.image_size, info.pixel_scale) == (len(full), full.image_size, full.pixel_scale)
    assert info.attrs == full.attrs and set(info.meta_columns) == set(full.meta)
    assert 0 < sum(read) < images.nbytes / 50  # HDF5 headers only, never the pixels
    with pytest.raises(BankError, match="bank meta lacks column 'gini'"):
        info.check_meta(["g_r", "gini"])
    with pytest.raises(BankError, match="not-a-bank.h5: not a readable HDF5 source bank"):
        (tmp_path / "not-a-bank.h5").write_bytes(b"plain text")
        read_bank_info(str(tmp_path / "not-a-bank.h5"))
    with pytest.raises(BankError, match="missing.h5: not a readable HDF5 source bank"):
        read_bank_info(str(tmp_path / "missing.h5"))
