"""The sample-data fallback: every pinned file downloaded from its origin and checked (sha256).

The origin is served from a loopback HTTP server laid out like the raw-file host
(``<repo>/<commit>/<path>``), built from ../shared/data itself.
"""
import functools
import http.server
import threading

import pytest

from udfs.config import sample_data
from udfs.config.checker import ConfigError


@pytest.fixture
def origin(tmp_path, data_root):
    """A loopback server holding every pinned file at its origin path."""
    root = tmp_path / "origin"
    for src in sample_data.load_manifest():
        for pin in src.files:
            target = root / src.repo / src.commit / f"{pin.prefix}{pin.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(data_root / src.folder / pin.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_reproduces_the_shared_data(origin, tmp_path, data_root):
    _, url = origin
    dest = sample_data.download(tmp_path / "cache", base_url=url)
    for path in sorted(data_root.rglob("*")):
        if path.is_file() and path.name not in ("README.md", "SHA256SUMS"):
            assert (dest / path.relative_to(data_root)).read_bytes() == path.read_bytes(), path


def test_a_corrupted_origin_file_is_refused_naming_it(origin, tmp_path):
    root, url = origin
    bad = next(root.rglob("sweep-310m005-320p000.fits"))
    bad.unlink()
    bad.write_bytes(b"not the pinned file")
    with pytest.raises(RuntimeError, match=r"sweep-310m005-320p000.fits: sha256 .* does not match the pinned"):
        sample_data.download(tmp_path / "cache", base_url=url)


def test_a_bad_pin_is_a_config_error_naming_file_and_key(tmp_path):
    bad = tmp_path / "sample_data.yaml"
    bad.write_text("sources:\n  cosmos/x:\n    repo: a/b\n    commit: c0ffee\n"
                   "    files:\n      f.fits: [data/, not-a-sha]\n")
    with pytest.raises(ConfigError, match=r"sample_data.yaml: sources.cosmos/x.files.f.fits: expected a 64-hex"):
        sample_data.load_manifest(str(bad))
    bad.write_text("sources:\n  cosmos/x:\n    repo: a/b\n    files: {}\n")
    with pytest.raises(ConfigError, match=r"sources.cosmos/x.commit: missing required key"):
        sample_data.load_manifest(str(bad))


def test_data_root_is_located_only_for_the_placeholder(monkeypatch, tmp_path):
    from udfs.config import sample_data as config_sample_data

    def no_sample_data():
        raise AssertionError("data_root() called for a production path")

    monkeypatch.setattr(config_sample_data, "data_root", no_sample_data)
    assert config_sample_data.expand_data_root("s3://bucket/psfex/z.fits") == "s3://bucket/psfex/z.fits"
    monkeypatch.setattr(config_sample_data, "data_root", lambda: tmp_path)
    assert config_sample_data.expand_data_root("{data_root}/psfex/z.fits") == f"{tmp_path}/psfex/z.fits"
