"""What the benchmark scripts share: which kopt they measured."""

from __future__ import annotations

import subprocess


def git_rev(root: str) -> str | None:
    """The short commit of the checkout at `root`, `+dirty` when `kopt/` has changes;
    None outside a git checkout."""
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "kopt"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) if rev else None
    except (OSError, subprocess.SubprocessError):
        return None
