"""Event-time watermarks with Flink's contract, for bytewax's windowing operators.

Two halves (docs/architecture.md, "Event time"):

* Per input partition, in offset order (inside the source, so it is snapshotted
  with the offsets): the partition watermark is the newest event time seen minus the
  allowed disorder. An event is late only if its whole window ended at or before that
  watermark. This decision depends only on the partition's own order, so it is the
  same whatever the processing speed, lag, restarts or downtime.

* Per worker, at the window operator: the watermark that closes windows is the
  minimum over all input partitions of the watermarks carried by the items, taken
  only from items of *earlier* epochs (bytewax processes an epoch's items grouped by
  key, so within an epoch a later item may be seen before an earlier one). It lives
  outside the per-key state, so a key whose windows all closed (and whose state
  bytewax dropped) cannot re-open an emitted window. Partitions silent for the idle
  timeout stop holding it back.

* Per key, at once (optional, `arrival_watermark_getter`): a key sees each partition's
  items in log order (one reader per partition, FIFO channels, bytewax keeps a key's
  items in arrival order). An item can carry a watermark that no later item of its
  partition undercuts: its batch's watermark *before* the batch (a later event was
  judged against at least that), or a heartbeat's (sent after its batch). Once a key
  holds such a watermark from every partition, their minimum closes its windows without
  waiting for the epoch boundary, so a backfill's output flows while it reads. Which
  events are late is unchanged: only when windows close moves. It needs every partition
  known at start (`Transport.partitions_fixed`): a Kinesis shard made by resharding
  starts its own watermark afresh, behind windows a key may have closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from bytewax.operators.windowing import UTC_MAX, UTC_MIN, Clock, ClockLogic, Windower, WindowerLogic, WindowMetadata

V = TypeVar("V")

NO_WATERMARK = -(2**62)  # "nothing seen yet", below any epoch-ms timestamp


def to_datetime(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


def partition_watermark(max_timestamp: int, max_out_of_orderness_ms: int) -> int:
    return max_timestamp - max_out_of_orderness_ms if max_timestamp > NO_WATERMARK else NO_WATERMARK


def window_start(timestamp_ms: int, length_ms: int) -> int:
    """Start of the epoch-aligned tumbling window [start, start + length) holding the timestamp."""
    return timestamp_ms - timestamp_ms % length_ms


def window_bounds(timestamp_ms: int, length_ms: int) -> tuple[int, int]:
    start = window_start(timestamp_ms, length_ms)
    return start, start + length_ms


def is_late(timestamp_ms: int, watermark_ms: int, window_ms: int) -> bool:
    """Flink's rule: late only when the event's window [start, end) ended at or before the watermark."""
    return window_start(timestamp_ms, window_ms) + window_ms <= watermark_ms


def align_down(watermark_ms: int, window_ms: int) -> int:
    """The last window boundary at or before the watermark.

    bytewax judges an item late when `timestamp < watermark` and closes windows whose
    end <= watermark. Handing it the boundary-aligned watermark makes both rules
    equal to Flink's (late iff the item's window has ended).
    """
    return watermark_ms - watermark_ms % window_ms


# How much earlier than one epoch after the last an epoch's commits may come (its end was
# noticed late, the next one's on time): a key waiting for the watermark wakes this much early.
COMMIT_JITTER_S = 0.5


class WatermarkView:
    """One worker's view of every input partition's watermark (not thread-safe: one per worker)."""

    def __init__(
        self,
        sources: Iterable[str],
        idle_timeout_s: float,
        now: float,
        on_commit: Callable[[int], None] = lambda wm: None,
        epoch_s: float | None = None,
    ) -> None:
        self._idle_timeout_s = idle_timeout_s
        self._on_commit = on_commit
        # source -> (watermark, monotonic time it last advanced or reported)
        self._committed: dict[str, tuple[int, float]] = {s: (NO_WATERMARK, now) for s in sources}
        self._pending: dict[str, int] = {}
        self._floor = NO_WATERMARK
        self._epoch_s = epoch_s  # the job's epoch interval (bytewax.run's -s); None: not known
        self._epoch_began: float | None = None  # the monotonic time of the last epoch's first commit

    def observe(self, source: str, watermark_ms: int) -> None:
        """Record a watermark carried by an item; used only after `commit`."""
        if watermark_ms > self._pending.get(source, NO_WATERMARK):
            self._pending[source] = watermark_ms

    def commit(self, now: float) -> None:
        """Make what was observed so far count; call at an epoch boundary."""
        for source, watermark in self._pending.items():
            previous = self._committed.get(source, (NO_WATERMARK, now))[0]
            self._committed[source] = (max(previous, watermark), now)
        self._pending.clear()
        self._note_epoch(now)
        self._on_commit(self.watermark(now))

    def _note_epoch(self, now: float) -> None:
        # Every key woken in an epoch commits at its end, in one burst: its first commit dates
        # the epoch. Epochs end at least an interval apart, so a commit within half of one is
        # the same burst's.
        if self._epoch_s is not None and (self._epoch_began is None or now - self._epoch_began >= self._epoch_s / 2):
            self._epoch_began = now

    def unchanged_for(self, now: float) -> float:
        """Seconds from `now` during which `watermark` cannot change: it moves only at a commit
        (at the end of an epoch, one interval or more after the last, less COMMIT_JITTER_S) or
        when a partition goes idle. 0 once that commit may come, and without an interval."""
        if self._epoch_s is None or self._epoch_began is None:
            return 0.0
        next_commit = self._epoch_began + self._epoch_s - COMMIT_JITTER_S
        going_idle = [seen + self._idle_timeout_s for _, seen in self._committed.values()]
        return max(0.0, min([next_commit, *(t for t in going_idle if t > now)]) - now)

    def watermark(self, now: float) -> int:
        """Minimum over active partitions; never goes backwards."""
        active = [wm for wm, seen in self._committed.values() if now - seen < self._idle_timeout_s]
        if active:
            candidate = min(active)
        else:  # every partition idle: let what was seen close its windows
            candidate = max((wm for wm, _ in self._committed.values()), default=NO_WATERMARK)
        self._floor = max(self._floor, candidate)
        return self._floor


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """An input partition's watermark, sent to every worker's keyed operator.

    Flink broadcasts watermarks to all downstream tasks; bytewax routes items only by
    key. A worker that holds no key fed by some partition would otherwise never hear
    of that partition's progress and hold its windows open until the idle timeout.
    Heartbeats carry rotating keys, so across rounds every worker gets them; keyed
    operators observe them and otherwise ignore them.
    """

    key: str
    source: str
    source_watermark: int


class HeartbeatSchedule:
    """Emits a round of heartbeats per input partition at most every `interval`.

    `keys`: keys that get every round too (a job whose keys are a small fixed set, so
    each of its keys hears every partition: "Per key" in the module docstring).
    """

    KEYS_PER_ROUND = 16
    # Keys repeat after this many rounds: bytewax keeps the last snapshot of every key
    # it ever saw in the recovery store, so fresh keys forever would grow it forever.
    ROUNDS = 64

    def __init__(self, interval: timedelta = timedelta(milliseconds=200), keys: Iterable[str] = ()) -> None:
        self._interval_s = interval.total_seconds()
        self._keys = list(keys)
        self._last: dict[str, float] = {}
        self._round = 0

    def due(self, source: str, watermark_ms: int) -> list[Heartbeat]:
        now = time.monotonic()
        if watermark_ms == NO_WATERMARK or now - self._last.get(source, -1e9) < self._interval_s:
            return []
        self._last[source] = now
        self._round = (self._round + 1) % self.ROUNDS
        rotating = [f"\x00heartbeat/{self._round}/{i}" for i in range(self.KEYS_PER_ROUND)]
        return [Heartbeat(key, source, watermark_ms) for key in rotating + self._keys]


class WorkerWatermarks:
    """A `WatermarkView` per bytewax worker; bytewax runs each worker on its own OS thread.

    Keyed by OS thread id, not `threading.local`: bytewax calls into Python from Rust
    threads, and each re-entry may get a fresh Python thread state, which empties
    thread-locals (observed: views silently reset several times a second).
    """

    def __init__(
        self,
        sources: Iterable[str],
        idle_timeout: timedelta,
        on_commit: Callable[[int], None] = lambda wm: None,
        epoch: timedelta | None = None,
    ) -> None:
        self.sources = list(sources)
        self.idle_timeout_s = idle_timeout.total_seconds()
        self.on_commit = on_commit  # gets the worker's watermark after each commit (for metrics)
        self.epoch_s = None if epoch is None else epoch.total_seconds()  # bytewax.run's -s
        self._views: dict[int, WatermarkView] = {}
        self._lock = threading.Lock()

    def view(self) -> WatermarkView:
        worker = threading.get_ident()
        with self._lock:
            view = self._views.get(worker)
            if view is None:
                view = self._views[worker] = WatermarkView(
                    self.sources, self.idle_timeout_s, time.monotonic(), self.on_commit, self.epoch_s
                )
            return view


def wake_time(passed: bool, recheck: timedelta, unchanged_for: float = 0.0) -> datetime:
    """When bytewax should wake a key waiting for the watermark to pass some event time.

    The watermark follows event time, not the wall clock, so the moment it will pass
    is unknown: wake now if it has, else look again `recheck` after it can next change
    (`unchanged_for` seconds from now: `WatermarkView.unchanged_for`) rather than
    busy-waking (docs/architecture.md, "Engine facts"). Each waiting key wakes about once
    per epoch, not every `recheck`: bytewax spends about 3 µs per wake, the booking rules 2.
    """
    now = datetime.now(UTC)
    return now if passed else now + recheck + timedelta(seconds=unchanged_for)


class KeyWatermark(Generic[V]):
    """One key's minimum over every partition of the arrival-safe watermarks its items carry."""

    def __init__(self, sources: Iterable[str], arrival_watermark: Callable[[V], int]) -> None:
        self._arrival_watermark = arrival_watermark
        self._heard: dict[str, int] = dict.fromkeys(sources, NO_WATERMARK)
        self.value = NO_WATERMARK

    def observe(self, source: str, item: V) -> None:
        heard, watermark_ms = self._heard.get(source), self._arrival_watermark(item)
        if heard is not None and watermark_ms > heard:
            self._heard[source] = watermark_ms
            self.value = min(self._heard.values())


class _EventTimeClockLogic(ClockLogic[V, None], Generic[V]):
    def __init__(self, clock: EventTimeClock[V], view: WatermarkView) -> None:
        self._clock = clock
        self._view = view
        arrival = clock.arrival_watermark_getter
        self._key = KeyWatermark(clock.watermarks.sources, arrival) if arrival is not None else None

    def _watermark(self) -> datetime:
        wm = self._view.watermark(time.monotonic())
        if self._key is not None:
            wm = max(wm, self._key.value)
        if wm == NO_WATERMARK:
            return UTC_MIN
        return to_datetime(align_down(wm, self._clock.window_ms))

    def before_batch(self) -> None:
        pass

    def on_item(self, value: V) -> tuple[datetime, datetime]:
        source, source_watermark = self._clock.source_watermark_getter(value)
        self._view.observe(source, source_watermark)
        if self._key is not None:
            self._key.observe(source, value)
        return self._clock.ts_getter(value), self._watermark()

    def on_notify(self) -> datetime:
        return self._watermark()

    def on_eof(self) -> datetime:
        return UTC_MAX

    def to_system_utc(self, timestamp: datetime) -> datetime | None:
        return wake_time(timestamp <= self._watermark(), self._clock.recheck)

    def snapshot(self) -> None:
        # bytewax snapshots every key it touched once the epoch is closed, after all of
        # the epoch's items were processed: that is the epoch boundary the view needs.
        self._view.commit(time.monotonic())
        return None


class _IgnoreHeartbeats(WindowerLogic[Any]):
    """Delegates to the real windower but never opens or reports a window for a heartbeat."""

    def __init__(self, inner: WindowerLogic[Any]) -> None:
        self._inner = inner

    def open_for(self, timestamp: datetime) -> Iterable[int]:
        return () if timestamp == UTC_MIN else self._inner.open_for(timestamp)

    def late_for(self, timestamp: datetime) -> Iterable[int]:
        return () if timestamp == UTC_MIN else self._inner.late_for(timestamp)

    def merged(self) -> Iterable[tuple[int, int]]:
        return self._inner.merged()

    def close_for(self, watermark: datetime) -> Iterable[tuple[int, WindowMetadata]]:
        return self._inner.close_for(watermark)

    def notify_at(self) -> datetime | None:
        return self._inner.notify_at()

    def is_empty(self) -> bool:
        return self._inner.is_empty()

    def snapshot(self) -> Any:
        return self._inner.snapshot()


class HeartbeatAwareWindower(Windower[Any]):
    """Wraps a windower for streams that carry `Heartbeat`s (their timestamp is UTC_MIN)."""

    def __init__(self, inner: Windower[Any]) -> None:
        self._inner = inner

    def build(self, resume_state: Any) -> _IgnoreHeartbeats:
        return _IgnoreHeartbeats(self._inner.build(resume_state))


class EventTimeClock(Clock[V, None], Generic[V]):
    """A `Clock` whose watermark is driven by event time carried in the items.

    `ts_getter` gives an item's event time; `source_watermark_getter` the input
    partition it came from and that partition's watermark (epoch ms) at the time;
    `arrival_watermark_getter`, if given, a watermark of that partition that no later
    item of it undercuts (module docstring, "Per key"), so windows close on arrival.
    """

    def __init__(
        self,
        ts_getter: Callable[[V], datetime],
        source_watermark_getter: Callable[[V], tuple[str, int]],
        sources: Iterable[str],
        window: timedelta,
        idle_timeout: timedelta,
        recheck: timedelta = timedelta(milliseconds=500),
        on_commit: Callable[[int], None] = lambda wm: None,
        arrival_watermark_getter: Callable[[V], int] | None = None,
    ) -> None:
        self.ts_getter = ts_getter
        self.source_watermark_getter = source_watermark_getter
        self.arrival_watermark_getter = arrival_watermark_getter
        self.window_ms = int(window / timedelta(milliseconds=1))
        self.recheck = recheck
        self.watermarks = WorkerWatermarks(sources, idle_timeout, on_commit)

    def build(self, resume_state: Any) -> _EventTimeClockLogic[V]:
        return _EventTimeClockLogic(self, self.watermarks.view())
