"""bootstrap/install_deps.sh: shellcheck-clean, strict, hash-checked, and failing fast.

The failure paths run the real script with stand-ins for the node's ``aws`` (copies from a local
folder) and ``sudo`` (runs the command), and pip pointed at a local wheel folder (no network)."""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from udfs.config.provenance import REPO_ROOT

SCRIPT = REPO_ROOT / "bootstrap" / "install_deps.sh"


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (`apt-get install -y shellcheck`; .ci/run installs it)")
    proc = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_script_is_strict_and_hash_checked():
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text.splitlines()[:12] or "\nset -euo pipefail\n" in text
    assert "|| true" not in text
    installs = [line for line in text.splitlines() if " install " in line and "pip" in line]
    assert len(installs) == 2 and all("--require-hashes" in line and "--no-deps" in line for line in installs)
    assert "pip[@]}\" check" in text and "freeze --all" in text


def _wheel(folder, name="lensinjprobe", version="1.0"):
    """A minimal valid pure-Python wheel; returns its sha256."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": b"VALUE = 1\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name_, data in files.items():
            z.writestr(name_, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def node(tmp_path):
    """A fake node: bin/ with aws and sudo stand-ins, boot/ holding the files the script fetches."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "aws").write_text('#!/usr/bin/env bash\n# aws s3 cp [--only-show-errors] SRC DST\n'
                              'set -euo pipefail\nsrc=${@: -2:1}; dst=${@: -1}\ncp "$src" "$dst"\n')
    (bin_ / "sudo").write_text('#!/usr/bin/env bash\nexec "$@"\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    sha = _wheel(wheels)
    boot = tmp_path / "boot"
    boot.mkdir()
    env = {"PATH": f"{bin_}:{os.environ['PATH']}", "HOME": str(tmp_path), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(wheels), "PIP_CONFIG_FILE": os.devnull}
    return {"tmp": tmp_path, "boot": boot, "sha": sha, "env": env}


def _run(node, python=sys.executable):
    venv, cache = node["tmp"] / "venv", node["tmp"] / "mnt" / "lensinj" / "numba-cache"
    return subprocess.run(["bash", str(SCRIPT), str(node["boot"]), python, str(venv), str(cache)],
                          env=node["env"], capture_output=True, text=True, timeout=180)


def test_usage_error_without_arguments():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode != 0 and "usage:" in proc.stderr and "got 0 arguments" in proc.stderr


def test_wrong_python_fails_fast(node):
    fake = node["tmp"] / "python3.9"
    fake.write_text("#!/usr/bin/env bash\necho 3.9\n")
    fake.chmod(0o755)
    proc = _run(node, python=str(fake))
    assert proc.returncode != 0 and "is Python 3.9; the pins need 3.11" in proc.stderr


def test_missing_requirements_file_fails_fast(node):
    proc = _run(node)
    assert proc.returncode != 0
    assert "FATAL: command failed" in proc.stderr and "requirements-emr-build.txt" in proc.stderr
    assert "bootstrap done" not in proc.stderr


def test_hash_mismatch_fails_before_anything_is_used(node):
    """A tampered or re-built wheel (hash differs from the lock) stops the bootstrap."""
    wrong = "0" * 64
    (node["boot"] / "requirements-emr-build.txt").write_text(f"lensinjprobe==1.0 --hash=sha256:{wrong}\n")
    (node["boot"] / "requirements-emr.txt").write_text(f"lensinjprobe==1.0 --hash=sha256:{node['sha']}\n")
    proc = _run(node)
    assert proc.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in proc.stderr
    assert "installing runtime dependencies" not in proc.stderr and "bootstrap done" not in proc.stderr


def test_missing_dependency_fails_the_import_check(node):
    """Hashes match but the environment lacks the pipeline's packages: the import check stops it."""
    line = f"lensinjprobe==1.0 --hash=sha256:{node['sha']}\n"
    (node["boot"] / "requirements-emr-build.txt").write_text(line)
    (node["boot"] / "requirements-emr.txt").write_text(line)
    proc = _run(node)
    assert proc.returncode != 0
    assert "installing runtime dependencies (hashes required)" in proc.stderr
    assert "No module named 'numpy'" in proc.stderr and "bootstrap done" not in proc.stderr
