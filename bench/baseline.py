"""The code before a change, to measure it against this tree in the same run.

``baseline_tree(rev)`` checks ``rev`` out as a git worktree under ``var/bench`` (once,
then reused); a benchmark then starts ``python -m gateway`` (or the API) with that
tree as its working directory, with this virtualenv, so only the code differs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def baseline_tree(rev: str) -> Path:
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    tree = ROOT / "var" / "bench" / f"baseline-{sha}"
    if not tree.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), sha],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return tree
