"""Progress of a bounded run (a backfill), reported as one line every so often.

Partitions register the range of offsets they will read; the line sums them over the
process: events done of the range, the rate, and the time left at that rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class BoundedProgress:
    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every_s = every_s
        self._clock = clock
        self._started = clock()
        self._next_report = self._started + every_s
        self._ranges: dict[str, tuple[int, int]] = {}  # partition -> (first offset, end offset)
        self._done: dict[str, int] = {}
        self._lock = threading.Lock()  # partitions of several workers share one

    def register(self, partition: str, first: int, end: int) -> None:
        with self._lock:
            self._ranges[partition] = (first, max(first, end))
            self._done[partition] = 0

    def advance(self, partition: str, next_offset: int) -> None:
        """The partition has read up to `next_offset`; logs the line when it is due."""
        with self._lock:
            first, end = self._ranges.get(partition, (next_offset, next_offset))
            self._done[partition] = min(next_offset, end) - first
            now = self._clock()
            if now < self._next_report:
                return
            self._next_report = now + self._every_s
            line = self.line(now)
        log.info("%s", line)

    def line(self, now: float) -> str:
        total = sum(end - first for first, end in self._ranges.values())
        done = sum(self._done.values())
        elapsed = max(now - self._started, 1e-9)
        rate = done / elapsed
        left = f"about {(total - done) / rate:,.0f} s left" if rate > 0 else "time left unknown"
        share = f" ({100 * done / total:.1f} %)" if total else ""
        return f"progress: {done:,} of {total:,} events{share}, {rate:,.0f} events/s, {left}"
