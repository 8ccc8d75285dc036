"""Cutout byte accounting on the real DR6 brick 0959p805: a brick group fetches each byte once, the
rows' ``bytes_read`` sum to what the storage really served, and each row pays its share of what it
used (headers and table rows split among the rows that opened the file, a tile among the stamps on
it), checked against an independent model of the files' layout read with astropy."""
from fractions import Fraction

import numpy as np
import pytest
from astropy.io import fits

from udfs.io.range_reader import RangeCache, merge_ranges, split_shared
from udfs.survey import coadd_files
from udfs.survey.coadd_cutouts import CutoutConfig, cut_brick
from tests.test_cutouts import BRICK, _coadd_base, _targets, full, real_brick  # noqa: F401 - fixtures

G_FILES = [f"legacysurvey-{BRICK}-{k}-g.fits.fz" for k in ("image", "invvar")]
# two stamps on the same pixels, one overlapping them, one alone, one off the image, one bad PSF
PIXELS = [(400.3, 480.8), (400.3, 480.8), (430.0, 500.0), (700.0, 1500.0), (-300.0, 50.0), (600.0, 900.0)]


class _Served:
    """The raw file under a CountingFile, logging every range it really returns."""
    log: list = []

    def __init__(self, raw, uri):
        self.raw, self.uri, self.pos = raw, uri, 0

    def seek(self, pos, whence=0):
        self.pos = self.raw.seek(pos, whence)
        return self.pos

    def read(self, n=-1):
        data = self.raw.read(n)
        _Served.log.append((self.uri.rsplit("-", 2)[-2], self.pos, self.pos + len(data)))
        self.pos += len(data)
        return data

    def close(self):
        self.raw.close()


def _layout(path):
    """Independent model of one file: header end, table row size, tile grid, heap ranges per tile."""
    with fits.open(path, disable_image_compression=True) as hdul:
        t = hdul[1]
        hdr, raw, dat = t.header, np.asarray(t.data.view(np.ndarray)), t.fileinfo()["datLoc"]
        desc = raw["COMPRESSED_DATA"].astype(np.int64)
        if "GZIP_COMPRESSED_DATA" in raw.dtype.names:
            gz = raw["GZIP_COMPRESSED_DATA"].astype(np.int64)
            desc = np.where((desc[:, 0] == 0)[:, None], gz, desc)
        heap = dat + hdr.get("THEAP", hdr["NAXIS1"] * hdr["NAXIS2"])
        return {"dat": dat, "row": hdr["NAXIS1"], "ntx": -(-hdr["ZNAXIS1"] // hdr["ZTILE1"]),
                "tile": hdr["ZTILE1"], "start": heap + desc[:, 1], "end": heap + desc[:, 1] + desc[:, 0]}


def _items(lay, x0, y0, n=64):
    """The byte ranges a stamp needs from one file: its tiles' table rows and heap entries."""
    t = lay["tile"]
    tiles = [j * lay["ntx"] + i for j in range(y0 // t, (y0 + n - 1) // t + 1)
             for i in range(x0 // t, (x0 + n - 1) // t + 1)]
    rows = [(lay["dat"] + r * lay["row"], lay["dat"] + (r + 1) * lay["row"]) for r in tiles]
    return rows + [(int(lay["start"][r]), int(lay["end"][r])) for r in tiles]


def _union(ranges):
    return sum(b - a for a, b in merge_ranges(ranges))


@pytest.mark.parametrize("where", ["local", "http"])
def test_group_bytes_are_fetched_once_and_split_among_their_users(real_brick, full, tmp_path, where,
                                                                  request, monkeypatch):
    images, wcs = full
    base = _coadd_base(real_brick, tmp_path, where, request, G_FILES)
    open_raw = coadd_files._open_raw
    monkeypatch.setattr(coadd_files, "_open_raw", lambda uri, size: _Served(open_raw(uri, size), uri))
    _Served.log = []
    targets = _targets(wcs, PIXELS)
    targets.loc[5, "psf_fwhm_g"] = float("nan")
    out = cut_brick(base, BRICK, targets, CutoutConfig(bands="g", min_good_frac=0.0, require_maskbits=False))
    assert out["ok"].tolist() == [True] * 4 + [False] * 2
    assert out["fail_reason"].tolist()[4:] == ["off_image", "bad_psf:g"]
    for row in out.iloc[:4].itertuples():  # the stamps: astropy's whole-file decompression, bit for bit
        sl = np.s_[row.stamp_y0:row.stamp_y0 + 64, row.stamp_x0:row.stamp_x0 + 64]
        np.testing.assert_array_equal(row.image.reshape(64, 64), images[f"legacysurvey-{BRICK}-image-g.fits.fz"][sl])
        np.testing.assert_array_equal(row.invvar.reshape(64, 64), images[f"legacysurvey-{BRICK}-invvar-g.fits.fz"][sl])

    served = {k: [(a, b) for f, a, b in _Served.log if f == k] for k in ("image", "invvar")}
    for ranges in served.values():  # no byte fetched twice, nothing read ahead
        assert sum(b - a for a, b in ranges) == _union(ranges)
    # the group's rows pay exactly what the storage served
    assert out["bytes_read"].sum() == sum(b - a for r in served.values() for a, b in r)

    expected = [Fraction(0)] * len(out)
    for kind, ranges in served.items():
        lay = _layout(real_brick / f"legacysurvey-{BRICK}-{kind}-g.fits.fz")
        users = {(0, lay["dat"]): [0, 1, 2, 3, 4]}  # headers: every row that opened the file
        for i, row in enumerate(out.iloc[:4].itertuples()):
            for item in _items(lay, row.stamp_x0, row.stamp_y0):
                users.setdefault(item, []).append(i)
        # what was served is exactly the headers and the stamps' tile-table rows and tiles
        assert merge_ranges(ranges) == merge_ranges(users)
        for (a, b), who in users.items():
            for i in who:
                expected[i] += Fraction(b - a, len(who))
    paid = out["bytes_read"].to_numpy()
    assert np.abs(paid - np.array([float(e) for e in expected])).max() <= 40  # integer rounding only
    assert abs(paid[0] - paid[1]) <= 40 and paid[3] > 2 * paid[0] and paid[5] == 0
    assert 0 < paid[4] < paid[0]  # the off-image row shares the headers it read, no tiles


def test_split_shared_sums_to_the_union_and_splits_by_users():
    claims = [[(0, 10), (0, 10)], [(5, 20)], [], [(5, 8), (30, 31)]]
    paid = split_shared(claims)
    assert paid.sum() == 21 and paid[2] == 0
    # [0,5): user 0; [5,8): users 0,1,3; [8,10): 0,1; [10,20): 1; [30,31): 3
    assert paid.tolist() == [5 + 1 + 1, 1 + 1 + 10, 0, 1 + 1]
    assert split_shared([]).tolist() == [] and split_shared([[]]).tolist() == [0]


def test_range_cache_and_merge_never_add_bytes():
    cache = RangeCache()
    assert cache.gaps(0, 10) == [(0, 10)]
    cache.put(2, b"abc")
    cache.put(7, b"xy")
    assert cache.gaps(0, 10) == [(0, 2), (5, 7), (9, 10)] and cache.gaps(2, 5) == []
    assert cache.get(3, 5) == b"bc" and cache.nbytes == 5
    with pytest.raises(RuntimeError):
        cache.get(0, 4)
    assert merge_ranges([(5, 7), (0, 2), (2, 4), (9, 9)]) == [(0, 4), (5, 7)]
