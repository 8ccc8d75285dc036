"""The house rules of the code base, checked on the tree itself (README "Layout").

- udfs/ holds packages only; imports between them flow one way (LAYERS), never upward, no cycles;
  udfs never imports jobs or emr, and physics packages never import Spark.
- no file over 350 lines, no function over 60 lines outside numba kernels;
- one ``class ConfigError`` and one root of bad-input errors (udfs.io.errors.InputError);
- every job's ``main`` goes through the one exit-2 wrapper (jobs.cli.job_main).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from udfs.config.provenance import REPO_ROOT

# Lower layers first: a package may import its own layer or any layer before it.
LAYERS = [("io",), ("config",), ("survey",), ("schemas",), ("targets", "sources"), ("lensing",),
          ("stamps",), ("qa",)]
RANK = {pkg: i for i, group in enumerate(LAYERS) for pkg in group}
CODE = sorted(p for top in ("udfs", "jobs", "emr", "tests") for p in (REPO_ROOT / top).rglob("*.py"))
PRODUCT = [p for p in CODE if p.parts[len(REPO_ROOT.parts)] != "tests"]


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "udfs" and len(parts) > 1 and parts[1] in RANK else None


def test_udfs_has_packages_only_and_every_package_has_a_layer():
    root = REPO_ROOT / "udfs"
    assert sorted(p.name for p in root.glob("*.py")) == ["__init__.py"]
    packages = {p.parent.name for p in root.glob("*/__init__.py")}
    assert packages == set(RANK), "a new udfs package needs a place in LAYERS"


@pytest.mark.parametrize("path", [p for p in CODE if "udfs" in p.parts], ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_udfs_imports_flow_one_way(path):
    own = path.relative_to(REPO_ROOT / "udfs").parts[0]
    for module in _imports(path):
        assert not module.startswith(("jobs", "emr", "tests")), f"{path}: imports {module}"
        pkg = _package(module)
        if pkg is not None and own in RANK:
            assert RANK[pkg] <= RANK[own], f"{path}: {own} imports upward from {pkg} ({module})"
        if own in ("lensing", "sources", "survey", "targets", "schemas", "io", "config"):
            assert not module.startswith("pyspark"), f"{path}: Spark in a physics/data package"


def test_no_import_cycles_between_modules():
    names = {p: ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
             for p in PRODUCT}
    known = set(names.values())
    graph = {names[p]: {m for m in _imports(p) if m in known and m != names[p]} for p in PRODUCT}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_files_and_functions_stay_short():
    long_files, long_funcs = [], []
    for path in CODE:
        src = path.read_text()
        if src.count("\n") > 350:
            long_files.append(f"{path.relative_to(REPO_ROOT)}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                numba = any("jit" in ast.unparse(d) for d in node.decorator_list)
                n = node.end_lineno - node.lineno + 1
                if n > 60 and not numba:
                    long_funcs.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long_files and not long_funcs, "\n".join(long_files + long_funcs)


def test_one_config_error_and_one_input_error_root():
    classes = {}
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append((path, [ast.unparse(b) for b in node.bases]))
    assert [p.relative_to(REPO_ROOT).as_posix() for p, _ in classes["ConfigError"]] == ["udfs/config/checker.py"]
    assert len(classes["InputError"]) == 1
    from udfs.config.checker import ConfigError
    from udfs.io.errors import InputError
    assert issubclass(ConfigError, InputError) and not issubclass(InputError, ValueError)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "jobs").glob("*.py")), ids=lambda p: p.name)
def test_every_job_main_uses_the_one_exit_2_wrapper(path):
    tree = ast.parse(path.read_text())
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    for main in mains:
        assert any(ast.unparse(d) == "job_main" for d in main.decorator_list), f"{path.name}: main lacks @job_main"
        for node in ast.walk(main):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = ast.unparse(node.type)
                assert "ValueError" not in caught, f"{path.name}: main turns {caught} into bad input"
