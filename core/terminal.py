"""What long work shows while it runs: a live bar with the count, the rate and the time left
when a person watches a terminal, and one plain line every few seconds when the output is a
file or a pipe (a CI log), where a live bar would be either nothing or thousands of redraws.

Used by ingestion, evaluation indexing, the legacy migration and the benchmark build; the
work reports `advance()`s and never needs to know which of the two it is talking to.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_INTERVAL_S = 10.0
# Not a terminal (a file, a pipe, a CI log): no width to fit, so tables and ids are printed
# whole instead of being squeezed into rich's default 80 columns ("ret…", "0.5…").
UNBOUNDED_WIDTH = 1000


def wide_console(stderr: bool = False) -> Console:
    """A console as wide as the terminal it writes to, and unbounded anywhere else: the CLI's
    and the study scripts' tables then read whole in a log instead of wrapping at 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else UNBOUNDED_WIDTH)


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`1 chunk`, `2 chunks`, `0 files`."""
    return f"{count:,} {noun if count == 1 else (plural_form or noun + 's')}"


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class _Task:
    description: str
    total: int | None
    completed: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class PlainProgress:
    """One line per interval, and one at the end: `ingest: files 12/23 (52%), 120 chunks,
    0:00:14 elapsed, about 0:00:12 left`. The ETA comes from the tasks with a known total.

    The lines come from a timer, not from the work: work that advances in bursts (a batch of
    files finishing together after a minute of embedding) still shows it is alive, and a burst
    is not reported half-way. `interval=0` writes a line at every step instead."""

    def __init__(self, title: str, stream: TextIO, interval: float = PLAIN_INTERVAL_S) -> None:
        self.title, self.stream, self.interval = title, stream, interval
        self.tasks: dict[int, _Task] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._timer = threading.Thread(target=self._tick, name=f"progress-{title}", daemon=True)
        if interval > 0:
            self._timer.start()

    def _tick(self) -> None:
        while not self._stopped.wait(self.interval):
            with self._lock:
                if self.tasks:
                    self._write(time.monotonic())

    def add_task(self, description: str, total: int | None = None) -> int:
        with self._lock:
            self.tasks[len(self.tasks)] = _Task(description, total)
            return len(self.tasks) - 1

    def advance(self, task: int, amount: int = 1, **counters: int) -> None:
        with self._lock:
            state = self.tasks[task]
            state.completed += amount
            for name, value in counters.items():
                state.counters[name] = state.counters.get(name, 0) + value
            if self.interval <= 0:
                self._write(time.monotonic())

    def update(self, task: int, *, total: int | None = None, completed: int | None = None) -> None:
        with self._lock:
            state = self.tasks[task]
            if total is not None:
                state.total = total
            if completed is not None:
                state.completed = completed

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self.started
        parts, fractions = [], []
        for state in self.tasks.values():
            if state.total:
                fraction = min(1.0, state.completed / state.total)
                fractions.append(fraction)
                parts.append(f"{state.description} {state.completed:,}/{state.total:,} ({fraction:.0%})")
            else:
                parts.append(f"{state.description} {state.completed:,}")
            parts += [plural(value, name) for name, value in state.counters.items()]
        text = f"{self.title}: {', '.join(parts)}, {_clock(elapsed)} elapsed"
        done = min(fractions) if fractions else 0.0
        if 0 < done < 1:
            text += f", about {_clock(elapsed * (1 - done) / done)} left"
        return text

    def _write(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)

    def finish(self) -> None:
        self._stopped.set()
        if self._timer.is_alive():
            self._timer.join()
        with self._lock:
            if self.tasks:
                self._write(time.monotonic())


class LiveProgress:
    """rich's bar on a terminal, with the count, elapsed time and time left."""

    def __init__(self, title: str, console: Console, transient: bool = False) -> None:
        self.title = title
        self.progress = Progress(TextColumn(f"{title}:"), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[counters]}"), TimeElapsedColumn(),
                                 TextColumn("left"), TimeRemainingColumn(), console=console, transient=transient)
        self.counters: dict[TaskID, dict[str, int]] = {}

    def add_task(self, description: str, total: int | None = None) -> TaskID:
        task = self.progress.add_task(description, total=total, counters="")
        self.counters[task] = {}
        return task

    def advance(self, task: TaskID, amount: int = 1, **counters: int) -> None:
        totals = self.counters[task]
        for name, value in counters.items():
            totals[name] = totals.get(name, 0) + value
        self.progress.update(task, advance=amount,
                             counters=", ".join(plural(value, name) for name, value in totals.items()))

    def update(self, task: TaskID, *, total: int | None = None, completed: int | None = None) -> None:
        self.progress.update(task, total=total, completed=completed)


class NoProgress:
    """Quiet: the caller prints its own result (tests, the service's background work)."""

    def add_task(self, description: str, total: int | None = None) -> int:
        return 0

    def advance(self, task: int, amount: int = 1, **counters: int) -> None:
        return None

    def update(self, task: int, *, total: int | None = None, completed: int | None = None) -> None:
        return None


Reporter = LiveProgress | PlainProgress | NoProgress


@contextmanager
def progress(title: str, enabled: bool = True, *, stream: TextIO | None = None,
             interval: float = PLAIN_INTERVAL_S, transient: bool = False) -> Iterator[Reporter]:
    """`with progress("ingest") as bar: task = bar.add_task("files", total=n); bar.advance(task, chunk=12)`
    (counters are named in the singular: "12 chunks"). Progress goes to stderr (or `stream`),
    so the command's result on stdout stays clean; `transient` clears a terminal's bar at the end."""
    if not enabled:
        yield NoProgress()
        return
    stream = stream if stream is not None else sys.stderr
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if interactive:
        live = LiveProgress(title, Console(file=stream), transient)
        with live.progress:
            yield live
        return
    plain = PlainProgress(title, stream, interval)
    try:
        yield plain
    finally:
        plain.finish()
