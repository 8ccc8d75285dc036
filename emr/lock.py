"""Generate the hashed requirement files that bootstrap/install_deps.sh installs on every EMR node.

``python -m emr.lock`` (needs PyPI; run it after changing requirements.txt/constraints.txt) writes

* ``bootstrap/requirements-emr.txt``: the full runtime closure of requirements.txt, without
  pyspark (EMR provides Spark 3.5.2 and its pyspark) and the test-only moto and pytest, each at its
  constraints.txt version, with the sha256 of the file pip installs on EMR 7.5.0 (Amazon Linux 2023:
  CPython 3.11, x86_64, glibc 2.34, so manylinux tags up to 2_34);
* ``bootstrap/requirements-emr-build.txt``: pip and the build backends (setuptools, setuptools-scm,
  wheel) that the few sdist-only packages need, installed first so the main install can build them
  with ``--no-build-isolation`` (pip does not hash-check build dependencies it fetches itself).

pip resolves with ``--dry-run --report``: the hashes come from the index, nothing is downloaded
except the sdists' metadata.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from udfs.config.provenance import REPO_ROOT

RUNTIME_OUT = REPO_ROOT / "bootstrap" / "requirements-emr.txt"
BUILD_OUT = REPO_ROOT / "bootstrap" / "requirements-emr-build.txt"
EXCLUDED = {"pyspark", "moto", "pytest"}     # provided by EMR / needed only by the tests
BUILD_TOOLS = ["pip==24.3.1", "setuptools==71.1.0", "setuptools-scm==8.1.0", "wheel==0.45.1"]
INDEX = "https://pypi.org/simple"
PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in range(34, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
TARGET = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of a requirements file."""
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;#\\]+)", line)
        if m:
            pins[canonical(m.group(1))] = m.group(3)
    return pins


def _pip_report(args: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "install",
               "--dry-run", "--ignore-installed", "--quiet", "--index-url", INDEX,
               "--report", str(report), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip failed ({' '.join(cmd)}):\n{proc.stderr}")
        return json.loads(report.read_text())["install"]


def _hashed(items: list[dict]) -> dict[str, tuple[str, str, str]]:
    """``{canonical name: (name, version, sha256)}`` from a pip report."""
    return {canonical(i["metadata"]["name"]): (i["metadata"]["name"], i["metadata"]["version"],
                                                i["download_info"]["archive_info"]["hashes"]["sha256"])
            for i in items}


def resolve(requirements: list[str], constraints: Path) -> tuple[dict, list[str]]:
    """Resolve the closure (host platform), then take the hash of each pin's file for the EMR node
    platform. Returns the hashed pins and the names that are sdists."""
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "req.txt"
        req.write_text("\n".join(requirements) + "\n")
        closure = _pip_report(["--prefer-binary", "-r", str(req), "-c", str(constraints)])
        sdists = sorted(canonical(i["metadata"]["name"]) for i in closure
                        if not i["download_info"]["url"].endswith(".whl"))
        pins = Path(tmp) / "pins.txt"
        pins.write_text("\n".join(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in closure) + "\n")
        platform = [a for p in PLATFORMS for a in ("--platform", p)]
        binary = ["--only-binary=:all:"] + ([f"--no-binary={','.join(sdists)}"] if sdists else [])
        node = _pip_report(["--no-deps", *platform, *TARGET, *binary, "-r", str(pins)])
    return _hashed(node), sdists


def render(pins: dict, header: str) -> str:
    lines = [header.rstrip()]
    for key in sorted(pins):
        name, version, sha = pins[key]
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{sha}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    constraints = REPO_ROOT / "constraints.txt"
    wanted = [f"{n}=={v}" for n, v in read_pins(REPO_ROOT / "requirements.txt").items() if n not in EXCLUDED]
    runtime, sdists = resolve(wanted, constraints)
    pinned = read_pins(constraints)
    drift = [f"{n} {v} (constraints.txt: {pinned[k]})" for k, (n, v, _) in runtime.items()
             if k in pinned and pinned[k] != v]
    if drift:
        raise RuntimeError(f"resolved versions differ from constraints.txt: {', '.join(drift)}")
    build, _ = resolve(BUILD_TOOLS, constraints)
    note = ("# Generated by `python -m emr.lock` from requirements.txt + constraints.txt; do not edit.\n"
            "# Target: EMR 7.5.0 nodes (CPython 3.11, x86_64, glibc 2.34). Installed by bootstrap/install_deps.sh\n"
            "# with --require-hashes --no-deps.")
    RUNTIME_OUT.write_text(render(runtime, note + f"\n# Built from source (sdist only on PyPI): {', '.join(sdists)}"))
    BUILD_OUT.write_text(render(build, note + "\n# Installed first: pip and the build backends of the sdists."))
    print(f"wrote {RUNTIME_OUT} ({len(runtime)} packages) and {BUILD_OUT} ({len(build)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
