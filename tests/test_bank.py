"""COSMOS source bank (stage 2) on the real btk_ext26 sample: selection, images, colours, errors, determinism."""
from __future__ import annotations

import astropy.units as u
import galsim
import numpy as np
import pytest

from jobs import cosmos_source_loader
from udfs.sources import colours, sed
from udfs.sources.bank import read_bank

from tests.conftest import BANK_ARGS as ARGS  # the documented test build

COSMOLOGY = "Planck18"
EXPECTED_SELECTED = 6
EXPECTED_REJECTED = {"mag_out_of_range": 8, "exceeds_bank_stamp": 1, "sersic_fit_failed": 1}


@pytest.fixture(scope="session")
def bank(bank_path):
    return read_bank(bank_path)


def test_selected_count_matches_documented_selection(bank):
    import json

    assert len(bank) == EXPECTED_SELECTED
    counts = {k: v for k, v in json.loads(bank.attrs["rejected_counts"]).items() if v}
    assert counts == EXPECTED_REJECTED
    assert bank.attrs["n_considered"] == 16
    assert np.all((bank.meta["mag_f814w"] >= 17.0) & (bank.meta["mag_f814w"] <= 25.2))
    assert np.all(bank.meta["sel_noise_variance_ratio"] <= 0.05)
    assert bank.attrs["catalog_name"] == "real_galaxy_catalog_26_extension_example.fits"
    assert bank.pixel_scale == 0.03
    for col in ("ident", "mag_f814w", "zphot", "g_r", "r_z", "colour_source", "sersic_n", "sersic_hlr_arcsec",
                "sersic_q", "sersic_phi_rad", "hlr_arcsec", "gini", "m20", "clumpiness"):
        assert bank.meta[col].shape == (len(bank),), col
        if bank.meta[col].dtype.kind == "f":
            assert np.all(np.isfinite(bank.meta[col])), col


def test_images_unit_flux_centred_and_noise_free_outside_footprint(bank):
    images = np.stack([bank.image(i) for i in range(len(bank))])
    n, s, _ = images.shape
    assert images.dtype == np.float32 and s == 96
    np.testing.assert_allclose(images.sum(axis=(1, 2), dtype=np.float64), 1.0, atol=1e-5)
    ys, xs = np.indices((s, s))
    c = (s - 1) / 2.0
    for img in images.astype(np.float64):
        cx, cy = (img * xs).sum(), (img * ys).sum()
        assert abs(cx - c) < 0.02 and abs(cy - c) < 0.02, (cx, cy)
        # HST noise is kept only on the galaxy's footprint: the border of the stamp is exactly zero.
        assert np.all(img[:3] == 0) and np.all(img[-3:] == 0) and np.all(img[:, :3] == 0)


def test_bank_matches_direct_galsim_rendering(bank, btk):
    """Same galaxy through GalSim directly (RealGalaxy * Gaussian(0.12"), 0.03"/pix, same offset):
    identical on the footprint to float32 precision (tolerance 1e-6 of unit flux per pixel), and
    the same adaptive-moment size (HSM) within 1%."""
    rgc = galsim.RealGalaxyCatalog("real_galaxy_catalog_26_extension_example.fits", dir=btk)
    for k in (0, len(bank) - 1):
        idx = int(bank.meta["catalog_index"][k])
        direct = galsim.Convolve(galsim.RealGalaxy(rgc, index=idx), galsim.Gaussian(fwhm=0.12)).drawImage(
            nx=96, ny=96, scale=0.03,
            offset=(bank.meta["offset_x_pix"][k], bank.meta["offset_y_pix"][k])).array.astype(np.float64)
        mask = bank.image(k) != 0
        direct_unit = direct / direct[mask].sum()
        np.testing.assert_allclose(bank.image(k)[mask], direct_unit[mask], atol=1e-6)
        s_bank = galsim.Image(bank.image(k).astype(np.float64), scale=0.03).FindAdaptiveMom().moments_sigma
        s_direct = galsim.Image(np.where(mask, direct_unit, 0.0), scale=0.03).FindAdaptiveMom().moments_sigma
        assert abs(s_bank / s_direct - 1) < 0.01
    rgc.close()


def test_hsc_colours_transformed_to_decam(bank, btk):
    """Bank colours = catalogue HSC colours + small filter terms (|DECam - HSC| < 0.15 mag), and the
    transformation itself reproduces speclite DECam colours of a two-template SED not in the fit basis
    within 0.02 mag."""
    from astropy.table import Table

    fits_tab = Table.read(f"{btk}/real_galaxy_catalog_26_extension_example_fits.fits")
    idx = bank.meta["catalog_index"]
    assert set(bank.meta["colour_source"].astype(str)) == {"hsc_photometry"}
    hsc_gr = np.asarray(fits_tab["HSC_g"][idx] - fits_tab["HSC_r"][idx])
    hsc_rz = np.asarray(fits_tab["HSC_r"][idx] - fits_tab["HSC_z"][idx])
    assert np.all(np.abs(bank.meta["g_r"] - hsc_gr) < 0.15)
    assert np.all(np.abs(bank.meta["r_z"] - hsc_rz) < 0.15)
    np.testing.assert_allclose(bank.meta["zphot"], np.asarray(fits_tab["ZPHOT"][idx]), rtol=1e-6)

    import speclite.filters

    z = 0.9
    w1, f1 = colours.redshifted("CWW_Sbc_ext", z)
    w2, f2 = colours.redshifted("CWW_Im_ext", z)
    flam = 0.5 * f1 / np.median(f1) + 0.5 * np.interp(w1, w2, f2) / np.median(f2)
    unit = u.erg / (u.cm ** 2 * u.s * u.Angstrom)
    hsc = speclite.filters.load_filters(*colours.HSC_FILTERS).get_ab_magnitudes(flam * unit, w1 * u.Angstrom)
    dec = speclite.filters.load_filters(*colours.DECAM_FILTERS).get_ab_magnitudes(flam * unit, w1 * u.Angstrom)
    hsc_mags = np.array([[hsc[n][0] for n in hsc.colnames]])
    coeff = sed.fit_sed(hsc_mags, colours.HSC_FILTERS, z, COSMOLOGY)
    got = sed.anchored_decam(hsc_mags, colours.HSC_FILTERS, coeff, z, COSMOLOGY)[0][0]
    want = np.array([dec[n][0] for n in dec.colnames])
    np.testing.assert_allclose(got[0] - got[1], want[0] - want[1], atol=0.02)
    np.testing.assert_allclose(got[1] - got[2], want[1] - want[2], atol=0.02)


@pytest.mark.parametrize("sample, missing", [
    ("galsim_23.5_example_noimages", "real_galaxy_images.fits: file missing (GAL_FILENAME"),
    ("paltas_23.5_trimmed_nopsf", "real_galaxy_PSF_images_23.5_n1.fits: file missing (PSF_FILENAME"),
])
def test_broken_samples_fail_clearly(data_root, tmp_path, capsys, sample, missing):
    out = tmp_path / "bank.h5"
    rc = cosmos_source_loader.main(["--cosmos-dir", str(data_root / "cosmos" / sample), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert missing in err and "Traceback" not in err
    assert not out.exists()


def test_rerun_is_byte_identical(bank_path, btk, tmp_path):
    again = tmp_path / "again.h5"
    assert cosmos_source_loader.main(["--cosmos-dir", btk, "--output", str(again), *ARGS]) == 0
    assert again.read_bytes() == open(bank_path, "rb").read()


def test_job_writes_s3_output(btk, s3_bucket, capsys):
    """--output s3://... goes through udfs.io.storage; a selection that rejects every row still writes a
    valid (empty) bank with the rejection counts. (No rendering: the catalogue cuts reject all rows.)"""
    import json

    uri = f"{s3_bucket}/banks/bank.h5"
    rc = cosmos_source_loader.main(["--cosmos-dir", btk, "--output", uri, "--max-galaxies", "5", "--seed", "2",
                                    "--mag-min", "17.0", "--mag-max", "17.5"])
    assert rc == 0
    assert "considered 5, selected 0" in capsys.readouterr().out
    empty = read_bank(uri)
    assert len(empty) == 0 and empty.image_size == 96 and empty.crops.pixels.size == 0
    assert json.loads(empty.attrs["rejected_counts"])["mag_out_of_range"] == 5


@pytest.mark.parametrize("n_sersic,template_name", [(1.0, "CWW_Scd_ext"), (2.0, "CWW_Sbc_ext"), (4.0, "CWW_E_ext")])
@pytest.mark.parametrize("z", [0.3, 1.2])
def test_template_colours_without_photometry(n_sersic, template_name, z):
    """No catalogue photometry: the colours are GalSim's CWW template (by Sersic index, as GalSim's
    COSMOSCatalog assigns them) redshifted to the photo-z, through speclite's DECam curves; checked
    against GalSim's own SED redshifting and integration."""
    import speclite.filters

    name = colours.template_for_sersic_n(n_sersic)
    assert name == template_name
    coeff = sed.fit_sed([[22.0]], (sed.ACS_F814W,), z, COSMOLOGY, template=[name])   # the F814W-only route
    g, r, zb = sed.magnitudes_at(coeff, np.array([z]), COSMOLOGY)[0]
    gr, rz = g - r, r - zb
    galsim_sed = galsim.SED(f"{template_name}.sed", wave_type="Ang", flux_type="flambda").atRedshift(z)
    mags = []
    for band in "grz":
        curve = speclite.filters.load_filter(f"decam2014-{band}")
        bp = galsim.Bandpass(galsim.LookupTable(curve.wavelength, curve.response, interpolant="linear"),
                             wave_type="Ang").withZeropoint("AB")
        mags.append(galsim_sed.calculateMagnitude(bp))
    assert gr == pytest.approx(mags[0] - mags[1], abs=0.02)
    assert rz == pytest.approx(mags[1] - mags[2], abs=0.02)


def test_s3_catalogue_is_staged_once_per_process(btk, s3_bucket, monkeypatch):
    """An s3:// COSMOS directory is copied to local disk once per Python process (every bank task of a
    Spark worker reuses the copy); a changed remote listing is copied afresh."""
    import os

    from udfs.io import storage
    from udfs.sources import cosmos_catalog

    uri = f"{s3_bucket}/cosmos"
    names = sorted(f for f in os.listdir(btk) if f.endswith(".fits"))
    for name in names:
        storage.write_bytes(f"{uri}/{name}", open(os.path.join(btk, name), "rb").read())
    copied = []
    real_read = storage.read_bytes
    monkeypatch.setattr(cosmos_catalog.storage, "read_bytes", lambda u: copied.append(u) or real_read(u))
    monkeypatch.setattr(cosmos_catalog, "_STAGED", {})

    first = cosmos_catalog.staged_directory(uri)
    assert len(copied) == len(names) and sorted(os.listdir(first)) == names
    assert len(cosmos_catalog.open_catalog(first)) == len(cosmos_catalog.open_catalog(btk))
    assert cosmos_catalog.staged_directory(uri) == first
    assert len(copied) == len(names), "the second call copied again"

    storage.write_bytes(f"{uri}/{names[0]}", open(os.path.join(btk, names[0]), "rb").read() + b"\0" * 2880)
    again = cosmos_catalog.staged_directory(uri)
    assert len(copied) == 2 * len(names) and again != first and not os.path.exists(first)


def test_bank_config_error_names_file_and_key(btk, tmp_path, capsys):
    import yaml

    from udfs.config.provenance import REPO_ROOT

    raw = yaml.safe_load((REPO_ROOT / "conf" / "bank.yaml").read_text())
    raw["render"]["stamp_size"] = 95
    bad = tmp_path / "bank.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = tmp_path / "bank.h5"
    rc = cosmos_source_loader.main(["--cosmos-dir", btk, "--output", str(out), "--config", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{bad}: render.stamp_size: must be even" in err and "Traceback" not in err
    assert not out.exists()


def test_bank_carries_absolute_sed_and_decam_mags(bank):
    """New photometry columns: DECam mags at zphot consistent with g_r/r_z, sed_coeff (N, 4) whose
    r at zphot is mag_r (to 1e-6), catalogue route labels, no match separations."""
    from udfs.sources import sed

    n = len(bank)
    assert bank.meta["sed_coeff"].shape == (n, 4) and np.all(bank.meta["sed_coeff"] >= 0)
    np.testing.assert_allclose(bank.meta["g_r"], bank.meta["mag_g"] - bank.meta["mag_r"], atol=1e-12)
    np.testing.assert_allclose(bank.meta["r_z"], bank.meta["mag_r"] - bank.meta["mag_z"], atol=1e-12)
    at = sed.magnitudes_at(bank.meta["sed_coeff"], bank.meta["zphot"], "Planck18")
    np.testing.assert_allclose(at[:, 1], bank.meta["mag_r"], atol=1e-6)
    assert np.all(np.abs(bank.meta["mag_r"] - bank.meta["mag_f814w"]) < 1.5)   # r - I of galaxies
    assert set(bank.meta["zphot_source"].astype(str)) == {"catalogue"}
    assert np.all(np.isnan(bank.meta["phot_sep_arcsec"]))


def _photometry_file(btk, path, drop=(3, 11, 40), seed=5):
    """An external catalogue made from btk_ext26 (default conf/bank.yaml column names): rows
    shuffled, positions jittered by 0.1-0.25", photo-z + 0.05 and r - 0.02 (to tell it from the
    catalogue's own), ``drop`` rows removed, a far decoy added. Returns the true jitters (arcsec)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from astropy.table import Table

    from udfs.config import bank as bank_config
    from udfs.config.provenance import REPO_ROOT

    pc = bank_config.load(str(REPO_ROOT / "conf" / "bank.yaml")).photometry
    main = Table.read(f"{btk}/real_galaxy_catalog_26_extension_example.fits")
    comp = Table.read(f"{btk}/real_galaxy_catalog_26_extension_example_fits.fits")
    rng = np.random.default_rng(seed)
    n = len(main)
    jitter, angle = rng.uniform(0.1, 0.25, n), rng.uniform(0, 2 * np.pi, n)
    dec = np.asarray(main["DEC"], float) + jitter * np.sin(angle) / 3600
    ra = np.asarray(main["RA"], float) + jitter * np.cos(angle) / 3600 / np.cos(np.radians(dec))
    cols = {pc.ra_column: ra, pc.dec_column: dec, pc.zphot_column: np.asarray(comp["ZPHOT"], float) + 0.05}
    for (filt, col), band in zip(pc.mag_columns, "grizy"):
        cols[col] = np.asarray(comp[f"HSC_{band}"], float) - (0.02 if band == "r" else 0.0)
    keep = rng.permutation(np.setdiff1d(np.arange(n), drop))
    cols = {k: np.append(v[keep], v[0] + (1.0 if k == pc.ra_column else 0.0)) for k, v in cols.items()}
    table = pa.table(cols)
    if str(path).endswith(".parquet"):
        pq.write_table(table, path)
    elif str(path).endswith(".csv"):
        pacsv.write_csv(table, path)
    else:
        Table({k: table.column(k).to_numpy() for k in table.column_names}).write(path)
    return jitter


@pytest.mark.parametrize("ext", ["fits", "csv", "parquet"])
def test_cross_match_finds_own_rows_and_labels_unmatched(btk, tmp_path, ext):
    """Every kept galaxy matches its own (shuffled, jittered) row: separation = the applied jitter
    (to 1 mas, all < 0.3"), its photo-z and magnitudes are the file's; the 3 dropped ones are
    unmatched (NaN), keep the catalogue route and zphot, and are counted; the decoy matches nothing."""
    from udfs.config import bank as bank_config
    from udfs.config.provenance import REPO_ROOT
    from udfs.sources import bank_photometry
    from udfs.sources.cosmos_catalog import open_catalog

    cfg = bank_config.load(str(REPO_ROOT / "conf" / "bank.yaml"))
    path = str(tmp_path / f"phot.{ext}")
    jitter = _photometry_file(btk, path)
    cat = open_catalog(btk)
    m = bank_photometry.match_catalog(path, cfg.photometry, cat)
    dropped = np.zeros(len(cat), bool)
    dropped[[3, 11, 40]] = True
    assert np.all(np.isnan(m.sep_arcsec[dropped])) and not m.usable[dropped].any()
    np.testing.assert_allclose(m.sep_arcsec[~dropped], jitter[~dropped], atol=1e-3)
    assert np.all(m.sep_arcsec[~dropped] < 0.3) and m.usable[~dropped].all()
    np.testing.assert_allclose(m.zphot[~dropped], cat.zphot()[~dropped] + 0.05, rtol=1e-6)
    np.testing.assert_allclose(m.mags[~dropped], cat.hsc_mags()[~dropped] - [0, 0.02, 0, 0, 0], atol=1e-5)

    idx = np.arange(len(cat))
    meta = {"catalog_index": idx, "zphot": cat.zphot(), "sersic_n": np.ones(len(cat)),
            "mag_f814w": np.asarray(cat.main["MAG"], float)}
    cols = bank_photometry.sed_columns(meta, cat, m, cfg.cosmology)
    assert set(cols["colour_source"][~dropped]) == {"external_photometry"}
    assert set(cols["colour_source"][dropped]) == {"hsc_photometry"}
    assert set(cols["zphot_source"][~dropped]) == {f"phot.{ext}"} and set(cols["zphot_source"][dropped]) == {"catalogue"}
    np.testing.assert_allclose(cols["zphot"][dropped], cat.zphot()[dropped])
    np.testing.assert_allclose(cols["zphot"][~dropped], cat.zphot()[~dropped] + 0.05, rtol=1e-6)
    counts = bank_photometry.counts(cols, m)
    assert (counts["matched"], counts["unmatched"], counts["used"]) == (97, 3, 97)
    assert counts["median_sep_arcsec"] == pytest.approx(np.median(jitter[~dropped]), abs=1e-3)


def test_job_with_photometry_writes_matched_columns(btk, bank, tmp_path, capsys):
    """End to end: --photometry labels and counts the bank's galaxies; the summary line says so."""
    import json

    phot = tmp_path / "phot.parquet"
    _photometry_file(btk, phot, drop=tuple(int(i) for i in bank.meta["catalog_index"][:2]))
    out = tmp_path / "bank.h5"
    assert cosmos_source_loader.main(["--cosmos-dir", btk, "--output", str(out), "--photometry", str(phot),
                                      *ARGS]) == 0
    n = len(bank)
    assert f"matched {n - 2}/{n} within 0.5\"" in capsys.readouterr().out
    got = read_bank(str(out))
    np.testing.assert_array_equal(got.meta["ident"], bank.meta["ident"])   # +0.05 in z keeps the selection
    src = got.meta["colour_source"].astype(str)
    assert list(src[:2]) == ["hsc_photometry"] * 2 and set(src[2:]) == {"external_photometry"}
    assert np.all(np.isnan(got.meta["phot_sep_arcsec"][:2])) and np.all(got.meta["phot_sep_arcsec"][2:] < 0.3)
    np.testing.assert_allclose(got.meta["zphot"][2:], bank.meta["zphot"][2:] + 0.05, rtol=1e-6)
    counts = json.loads(got.attrs["photometry_counts"])
    assert (counts["file"], counts["matched"], counts["unmatched"]) == ("phot.parquet", n - 2, 2)


@pytest.mark.parametrize("case", ["unreadable", "missing_column"])
def test_bad_photometry_file_exits_2_with_one_line(btk, tmp_path, capsys, case):
    if case == "unreadable":
        phot = tmp_path / "phot.fits"
        phot.write_bytes(b"not a FITS file at all")
        want = f"{phot}: cannot read the photometry catalogue"
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        phot = tmp_path / "phot.parquet"
        pq.write_table(pa.table({"ALPHA_J2000": [150.0], "DELTA_J2000": [2.0], "lp_zBEST": [1.0]}), phot)
        want = f"{phot}: no column 'HSC_g_MAG'"
    out = tmp_path / "bank.h5"
    rc = cosmos_source_loader.main(["--cosmos-dir", btk, "--output", str(out), "--photometry", str(phot)])
    err = capsys.readouterr().err
    assert rc == 2 and want in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
