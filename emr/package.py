"""Package the exact committed code: ``git archive`` of HEAD, so the zip is the code at the SHA.

The zip holds ``jobs/``, ``udfs/`` and ``conf/`` at its root (spark-submit ``--py-files`` puts it on
``sys.path``). Working-tree changes are never shipped: a dirty tree is refused unless forced, and a
forced launch still ships HEAD.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from udfs.io.errors import InputError

PACKAGED_PATHS = ("jobs", "udfs", "conf")


class DirtyTreeError(InputError):
    """The working tree differs from HEAD and --force was not given (exit 2: commit or --force)."""


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              check=True).stdout
    except FileNotFoundError as exc:
        raise RuntimeError("git is not installed; the launcher packages code with `git archive`") from exc
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {exc.stderr.strip()}") from exc


def head_sha(repo: Path) -> str:
    """Full 40-hex SHA of HEAD."""
    return _git(repo, "rev-parse", "HEAD").strip()


def dirty_paths(repo: Path) -> list[str]:
    """Paths whose working-tree state differs from HEAD (modified, staged, deleted or untracked)."""
    out = _git(repo, "status", "--porcelain", "--untracked-files=normal")
    return [line[3:] for line in out.splitlines() if line.strip()]


def check_clean(repo: Path, force: bool) -> list[str]:
    """Raise :class:`DirtyTreeError` on a dirty tree unless ``force``; return the dirty paths."""
    dirty = dirty_paths(repo)
    if dirty and not force:
        shown = ", ".join(dirty[:8]) + (f" and {len(dirty) - 8} more" if len(dirty) > 8 else "")
        raise DirtyTreeError(
            f"working tree of {repo} has uncommitted changes ({shown}); commit them, or pass --force "
            f"to launch HEAD {head_sha(repo)[:12]} without them")
    return dirty


def build_zip(repo: Path, sha: str, dest: Path) -> Path:
    """Write ``git archive --format=zip <sha> jobs udfs conf`` to ``dest`` (same SHA, same bytes)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _git(repo, "archive", "--format=zip", f"--output={dest}", sha, "--", *PACKAGED_PATHS)
    return dest
