"""py-spy attached to the gateway, and its collapsed stacks summarised: where the time goes."""

from __future__ import annotations

import linecache
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Profiler:
    """py-spy attached to the gateway; summarised as top functions and thread shares."""

    def __init__(self, pid: int, duration_s: float, out: Path, gil: bool = False):
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(binary).exists():
            raise SystemExit("--profile needs py-spy: pip install -r requirements-dev.txt")
        self.out = out
        seconds = max(1, round(duration_s))
        argv = f"record -p {pid} -d {seconds} -r 100 --threads --full-filenames --format raw"
        if gil:
            argv += " --gil"
        self._proc = subprocess.Popen(
            [binary, *argv.split(), "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def pid(self) -> list[int]:
        return [self._proc.pid] if self._proc.poll() is None else []

    def finish(self) -> dict:
        _, err = self._proc.communicate(timeout=60)
        if not self.out.exists():
            return {"error": err.decode(errors="replace")[-500:]}
        return summarise_profile(self.out.read_text())


# Source lines where a thread waits rather than computes (py-spy's own idle detection
# misses some of them on a busy machine): locks, conditions, select/poll, sleeps and
# blocking socket reads (the writer waiting for InfluxDB's answer).
_WAITING = ("acquire(", ".wait(", "select(", ".poll(", "sleep(", "recv_into(", "accept(")


def summarise_profile(raw: str, top: int = 15) -> dict:
    """From py-spy's collapsed stacks (``--threads --full-filenames``): the share of
    busy samples per thread, per leaf function (self) and per function anywhere on the
    stack (inclusive).  Samples whose leaf line waits are counted apart."""
    threads: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        if len(frames) < 2 or _is_waiting(frames[-1]):
            waiting[thread] += count
            continue
        funcs = [_function(f) for f in frames[1:]]
        busy += count
        threads[thread] += count
        own[funcs[-1]] += count
        packages[_package(frames[-1])] += count
        for func in set(funcs):
            inclusive[func] += count

    def shares(counter: Counter[str]) -> list[list]:
        return [[name, round(100 * n / busy, 1)] for name, n in counter.most_common(top)]

    return {
        "busy_samples": busy,
        "waiting_samples": sum(waiting.values()),
        "threads_pct": shares(threads) if busy else [],
        "self_pct": shares(own) if busy else [],
        "package_self_pct": shares(packages) if busy else [],
        "inclusive_pct": shares(inclusive) if busy else [],
    }


def _frame_location(frame: str) -> tuple[str, str, int]:
    """``func (path:line)`` -> (func, path, line)."""
    name, _, where = frame.partition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    return name, path, int(line) if line.isdigit() else 0


def _is_waiting(frame: str) -> bool:
    _, path, line = _frame_location(frame)
    source = linecache.getline(path, line)
    return any(marker in source for marker in _WAITING)


def _package(frame: str) -> str:
    """Who owns the code of a frame: a project package, a PyPI one, or the stdlib."""
    path = Path(_frame_location(frame)[1])
    if "site-packages" in path.parts:
        return path.parts[path.parts.index("site-packages") + 1].split(".")[0]
    if path.is_relative_to(ROOT):
        return path.relative_to(ROOT).parts[0] + "/ (project)"
    return "python stdlib"


def _function(frame: str) -> str:
    """``f (/repo/gateway/lineprotocol.py:30)`` -> ``f (gateway/lineprotocol.py)``."""
    name, path, _ = _frame_location(frame)
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({short})"
