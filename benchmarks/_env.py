"""What every benchmark record says about where it ran: the code's git commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["git_sha"]

_ROOT = Path(__file__).resolve().parents[1]  # the repo root: the dirty check's paths


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", *args], capture_output=True, text=True, timeout=10, check=False, cwd=_ROOT
    )
    return out.stdout.strip()


def git_sha(*, mark_dirty: bool = False) -> str | None:
    """The HEAD commit of this checkout, or None outside git.

    Args:
        mark_dirty: Append "+dirty" when benchmarks/ or src/ have uncommitted changes.
    """
    try:
        sha = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--", "benchmarks", "src") if mark_dirty else ""
    except OSError:
        return None
    if not sha:
        return None
    return sha + ("+dirty" if dirty else "")
