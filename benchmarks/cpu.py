"""CPU readings from /proc: how busy the machine was during each phase of a run, and how much
of that went to processes outside the benchmark. On a shared machine a timing means little
without these figures next to it."""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _process_tree(root_pids: list[int]) -> list[list[str]]:
    """The /proc stat fields of these processes and all their live descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo, seen = [], list(root_pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        found.append(stats[pid])
        todo.extend(children.get(pid, []))
    return found


def _own_jiffies(root_pids: list[int]) -> int:
    """CPU jiffies used so far by these processes and all their descendants."""
    reaped = os.times()  # children that already exited (eval runs, a stopped server) keep counting as ours
    total = int((reaped.children_user + reaped.children_system) * os.sysconf("SC_CLK_TCK"))
    return total + sum(int(fields[11]) + int(fields[12]) for fields in _process_tree(root_pids))  # utime + stime


def tree_cpu_seconds(root_pids: list[int]) -> float:
    """CPU seconds used so far by these processes and their descendants (a server under test and
    its database), counting descendants that already exited (a closed connection's Postgres
    backend): the CPU a request costs, which other work on a shared machine does not change the
    way it changes a throughput."""
    # utime, stime, and reaped children's cutime, cstime
    return sum(sum(int(v) for v in fields[11:15]) for fields in _process_tree(root_pids)) / os.sysconf("SC_CLK_TCK")


class Contention:
    """Samples, once a second, the load average and the share of machine CPU time that went
    to processes outside this benchmark (its own process tree plus the Postgres server).

    Each phase of the run (`mark`) gets its own summary."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.roots = [os.getpid()]
        self.samples: list[tuple[float, float, float]] = []  # (load1, machine busy share, others' share)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._marks: list[tuple[str, int]] = []

    def add_root(self, pid: int | None) -> None:
        if pid and pid not in self.roots:
            self.roots.append(pid)

    def _loop(self) -> None:
        busy, total = _cpu_jiffies()
        own = _own_jiffies(self.roots)
        while not self._stop.wait(self.interval_s):
            busy2, total2 = _cpu_jiffies()
            own2 = _own_jiffies(self.roots)
            span = max(total2 - total, 1)
            others = min(busy2 - busy, max(0, (busy2 - busy) - (own2 - own)))
            self.samples.append((os.getloadavg()[0], (busy2 - busy) / span, others / span))
            busy, total, own = busy2, total2, own2

    def start(self) -> Contention:
        self._thread.start()
        return self

    def mark(self, phase: str) -> None:
        self._marks.append((phase, len(self.samples)))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        phases: dict[str, Any] = {}
        bounds = [*self._marks, ("end", len(self.samples))]
        for (name, start), (_, end) in itertools.pairwise(bounds):
            window = self.samples[start:end] or self.samples[max(0, start - 1):start + 1]
            if window:
                phases[name] = {"seconds": len(window) * self.interval_s,
                                "load1_mean": float(np.mean([w[0] for w in window])),
                                "load1_max": float(np.max([w[0] for w in window])),
                                "cpu_busy_pct": float(np.mean([w[1] for w in window]) * 100),
                                "cpu_others_pct": float(np.mean([w[2] for w in window]) * 100)}
        return phases


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
