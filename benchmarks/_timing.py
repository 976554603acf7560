"""Shared timing harness for the benchmarks: interleaved variants, spread, machine load.

Why interleave: on a machine that other jobs also use, load comes in bursts. Timing
variant A five times and then variant B five times lets a burst land on one of them
only, and the ratio between them is then wrong. Here every repeat runs every variant
once, in an order that rotates from repeat to repeat, and ratios are taken between the
samples of the *same* repeat, so a burst mostly scales both sides of a ratio alike.

Why record the load: the 1-minute load average before and after a run says whether the
numbers came from a quiet machine. When it is above the number of cores (by more than
``LOAD_TOLERANCE``), the output says so in a warning line, and such numbers should not go
into a table. The tolerance is there because a benchmark that uses every core brings the
load to about the core count by itself: a 2-thread run alone on a quiet 2-core machine
ended at 1.96–2.04. Another job on top of it shows as a load near cores + 1.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

LOAD_TOLERANCE = 0.25  # the load average's own jitter when the benchmark fills every core


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    """(1, 5, 15)-minute load averages, or None where the OS has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def _fmt_load(load: tuple[float, float, float] | None) -> str:
    return "n/a" if load is None else "/".join(f"{x:.2f}" for x in load)


@dataclass
class LoadRecord:
    """Load averages at the start and end of a benchmark run."""

    before: tuple[float, float, float] | None
    after: tuple[float, float, float] | None = None

    @classmethod
    def start(cls) -> LoadRecord:
        return cls(before=load_average())

    def stop(self) -> LoadRecord:
        self.after = load_average()
        return self

    @property
    def peak(self) -> float | None:
        """Highest 1-minute load seen at either end."""
        seen = [x[0] for x in (self.before, self.after) if x is not None]
        return max(seen) if seen else None

    def loaded(self, n_cores: int | None = None) -> bool:
        """True when the load went above the core count (plus ``LOAD_TOLERANCE``)."""
        peak = self.peak
        return peak is not None and peak > (n_cores or cores()) + LOAD_TOLERANCE

    def report(self) -> str:
        """One line for the output; a WARNING line follows when the machine was loaded."""
        n = cores()
        line = f"load average (1/5/15 min) before {_fmt_load(self.before)}"
        if self.after is not None:
            line += f", after {_fmt_load(self.after)}"
        line += f"; {n} cores"
        if self.loaded(n):
            line += (f"\nWARNING: the load average ({self.peak:.2f}) was above the core count "
                     f"({n}); other jobs shared the machine, so these times and ratios are "
                     "not fit for a table. Re-run on a quiet machine.")
        return line


def conditions(threads: int | None = None) -> str:
    """Machine, torch and thread line for a benchmark's header."""
    cpu = platform.processor() or platform.machine()
    return (f"torch {torch.__version__}, {platform.system()} {cpu}, {cores()} cores, "
            f"{threads or torch.get_num_threads()} torch threads, Python "
            f"{platform.python_version()}")


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work so that a wall-clock sample covers it."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device | str | None = None) -> float:
    """Seconds one call of ``fn`` takes."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def cpu_time_once(fn: Callable[[], object]) -> float:
    """CPU seconds this process spends in one call of ``fn`` (all its threads together).

    On a shared machine a 1-thread run's CPU time approximates its wall time on a quiet
    machine: time spent waiting for a core is not counted. Not meaningful on GPUs.
    """
    start = time.process_time()
    fn()
    return time.process_time() - start


CLOCKS = ("wall", "cpu")


def timer_for(clock: str, device: torch.device | str | None = None,
              ) -> Callable[[Callable[[], object]], float]:
    """The sample function of a clock name ("wall" or "cpu")."""
    if clock == "wall":
        return lambda fn: time_once(fn, device)
    if clock == "cpu":
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError("clock='cpu' measures CPU time; use 'wall' on GPUs")
        return cpu_time_once
    raise ValueError(f"clock={clock!r}; expected one of {list(CLOCKS)}")


@dataclass
class Spread:
    """Minimum, median and maximum of a set of samples."""

    min: float
    median: float
    max: float
    n: int

    @classmethod
    def of(cls, xs: list[float]) -> Spread:
        if not xs:
            nan = float("nan")
            return cls(nan, nan, nan, 0)
        return cls(min(xs), statistics.median(xs), max(xs), len(xs))

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        """``median [min–max]`` with every value multiplied by ``scale``."""
        f = f"{{:.{digits}f}}"
        return (f"{f.format(self.median * scale)} "
                f"[{f.format(self.min * scale)}–{f.format(self.max * scale)}]")


def interleaved(variants: Mapping[str, Callable[[], object]], repeats: int, *,
                warmup: int = 1, device: torch.device | str | None = None,
                timer: Callable[[Callable[[], object]], float] | None = None,
                results: dict[str, object] | None = None) -> dict[str, list[float]]:
    """Time every variant once per repeat, rotating the order; samples in repeat order.

    ``timer`` turns a variant into seconds (default: one call of it). Repeat ``r`` starts
    with variant ``r mod n``, so no variant always runs right after the same neighbour.
    ``results``, when given, receives each variant's last return value (to check that the
    variants agree).
    """
    run = timer or (lambda fn: time_once(fn, device))
    if results is not None:
        variants = {name: (lambda name=name, fn=fn: results.__setitem__(name, fn()))
                    for name, fn in variants.items()}
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            samples[name].append(run(variants[name]))
    return samples


def ratios(samples: Mapping[str, list[float]], name: str, base: str) -> list[float]:
    """Per-repeat ratios ``name / base`` (paired within each repeat)."""
    return [a / b for a, b in zip(samples[name], samples[base], strict=True)]
