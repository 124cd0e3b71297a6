"""CPU and memory of the benchmark's processes, sampled from /proc once a second."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_sample(pid: int) -> tuple[int, int] | None:
    """(utime + stime in clock ticks, VmRSS in kB) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/status") as fh:
            status = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    rss = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
            break
    return ticks, rss


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot."""
    with open("/proc/stat") as fh:
        parts = [int(v) for v in fh.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])  # guest time is already in user/nice
    return total - idle, total


@dataclass
class _Sample:
    t: float
    groups: dict[str, dict[int, tuple[int, int]]]
    machine: tuple[int, int]


class ResourceSampler(threading.Thread):
    """Samples CPU time and RSS of named process groups (and the machine) every second."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]], interval_s: float = 1.0):
        super().__init__(name="resource-sampler", daemon=True)
        self._groups = groups
        self._interval = interval_s
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.samples: list[_Sample] = []

    def sample(self) -> None:
        groups = {}
        for name, pids in self._groups.items():
            found = {}
            for pid in pids():
                got = _proc_sample(pid)
                if got is not None:
                    found[pid] = got
            groups[name] = found
        with self._lock:
            self.samples.append(_Sample(time.time(), groups, _machine_ticks()))

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def summary(self, start: float, end: float) -> dict:
        """Mean CPU % (of one core) and max RSS (MB) per group within [start, end]."""
        self.sample()  # a closing sample, so short windows have two
        with self._lock:
            window = [s for s in self.samples if start - 1.0 <= s.t <= end + 1.0]
        if len(window) < 2:
            return {}
        elapsed = window[-1].t - window[0].t
        out: dict[str, dict] = {}
        for name in self._groups:
            ticks = 0
            for a, b in itertools.pairwise(window):
                for pid, (t1, _) in b.groups[name].items():
                    if pid in a.groups[name]:
                        ticks += t1 - a.groups[name][pid][0]
            rss = [sum(r for _, r in s.groups[name].values()) for s in window]
            out[name] = {
                "cpu_pct": round(ticks / _CLK_TCK / elapsed * 100, 1),
                "max_rss_mb": round(max(rss) / 1024, 1),
            }
        busy = window[-1].machine[0] - window[0].machine[0]
        total = window[-1].machine[1] - window[0].machine[1]
        machine = busy / total * 100 * (os.cpu_count() or 1) if total else 0.0
        ours = sum(g["cpu_pct"] for g in out.values())
        out["machine"] = {"cpu_pct": round(machine, 1)}
        out["other"] = {"cpu_pct": round(max(machine - ours, 0.0), 1)}
        return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (e.g. a gunicorn master and its workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as fh:
                    todo.extend(int(child) for child in fh.read().split())
            except FileNotFoundError:
                pass
    return found


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, kernel) CPU seconds used so far by the live processes among ``pids``."""
    user = kernel = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        user += int(fields[11])
        kernel += int(fields[12])
    return user / _CLK_TCK, kernel / _CLK_TCK


def _established_inodes(port: int) -> set[str]:
    """Socket inodes of established TCP connections whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def connections_by_process(port: int, pids: list[int]) -> dict[int, int]:
    """Established connections on local ``port`` held by each process in ``pids``."""
    inodes = _established_inodes(port)
    held = {}
    for pid in pids:
        count = 0
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, PermissionError):
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                count += 1
        held[pid] = count
    return held
