"""The sample-data fallback: every pinned file downloaded from its origin and checked (sha256).

The origin is served from a loopback HTTP server laid out like the raw-file host
(``<repo>/<commit>/<path>``), built from ../shared/data itself.
"""
import functools
import http.server
import threading

import pytest
import yaml

from udfs.io import sample_data


@pytest.fixture
def origin(tmp_path, data_root):
    """A loopback server holding every pinned file at its origin path."""
    root = tmp_path / "origin"
    sources = yaml.safe_load(sample_data.MANIFEST.read_text())["sources"]
    for folder, src in sources.items():
        for name, (prefix, _sha) in src["files"].items():
            target = root / src["repo"] / src["commit"] / f"{prefix}{name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(data_root / folder / name)
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
