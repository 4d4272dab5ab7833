"""Steady-state throughput, measured the same way for our job and every peer.

Each system runs as a fresh process, start-up included, on two topics of the same shape,
one twice the other's size (same seed, so the smaller is the larger's first half in
shape and spacing). The start-up (imports, JVM, job submission, connecting, the end
of input) costs the same on both, so the extra events over the extra seconds is the
rate once running:

    steady = (events_large - events_small) / (seconds_large - seconds_small)

No system is instrumented, so a peer runs exactly as it runs for the whole-run figure.
No imports beyond the standard library: the peers' virtualenvs import this too.
"""

from __future__ import annotations

import subprocess
import sys
import time


def steady_rate(small_events: int, small_seconds: float, large_events: int, large_seconds: float) -> float | None:
    """Events/s once running; None when the larger run was not slower (noise swamped it)."""
    extra = large_seconds - small_seconds
    return (large_events - small_events) / extra if extra > 0 else None


def timed_run(argv: list[str]) -> float:
    """Wall seconds of a command from spawn to exit (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=sys.stderr)
    return time.perf_counter() - started


def report(name: str, small: tuple[int, float], large: tuple[int, float]) -> str:
    """One line: whole-run rates of both topics and the steady rate."""
    rate = steady_rate(*small, *large)
    steady = f"{rate:,.0f} events/s" if rate is not None else "not measurable (the larger run was not slower)"
    return (
        f"{name}: whole run {small[0] / small[1]:,.0f} events/s on {small[0]:,} events ({small[1]:.1f} s), "
        f"{large[0] / large[1]:,.0f} events/s on {large[0]:,} ({large[1]:.1f} s); steady state {steady}"
    )
