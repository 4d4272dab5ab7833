"""The epoch bytewax resumes from, computed from what the store's partitions record (pure).

bytewax resumes at epoch R, the oldest epoch some worker of the last execution had not
finished. R depends on every worker's progress, which is spread over the partitions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

FIRST_EPOCH = 1  # bytewax's epoch when there is no progress yet


def resume_epoch(worker_count: int, ex_resume_epoch: int, fronts: Iterable[tuple[int, int]]) -> int:
    """bytewax's resume epoch from the last execution: the minimum over its workers of
    the furthest frontier each reported (a worker that reported none is at the
    execution's own resume epoch)."""
    furthest = dict.fromkeys(range(worker_count), ex_resume_epoch)
    for worker, frontier in fronts:
        furthest[worker] = max(furthest.get(worker, ex_resume_epoch), frontier)
    return min(furthest.values())


@dataclass(frozen=True)
class PartitionProgress:
    """What one recovery partition records of the executions: all bytewax needs to find R."""

    index: int
    count: int
    exs: tuple[tuple[int, int, int], ...]  # (ex_num, worker_count, resume_epoch)
    fronts: tuple[tuple[int, int, int], ...]  # (ex_num, worker_index, worker_frontier)

    def to_json(self) -> dict:
        return {"index": self.index, "count": self.count, "exs": self.exs, "fronts": self.fronts}

    @classmethod
    def from_json(cls, raw: Mapping) -> PartitionProgress:
        return cls(
            int(raw["index"]),
            int(raw["count"]),
            tuple(sorted(tuple(map(int, row)) for row in raw["exs"])),  # type: ignore[misc]
            tuple(sorted(tuple(map(int, row)) for row in raw["fronts"])),  # type: ignore[misc]
        )


# Given the directory and its partitions' progress (not all of the store), the epoch the
# cluster resumes from, agreed with the other processes (connectors/rendezvous.py).
AgreeResumeEpoch = Callable[[Path, list[PartitionProgress]], int]


def missing_partitions(progress: Iterable[PartitionProgress]) -> list[int]:
    """The store's partitions not in `progress` (empty: the whole store is there)."""
    progress = list(progress)
    count = max((p.count for p in progress), default=0)
    return sorted(set(range(count)) - {p.index for p in progress})


def resume_epoch_of(progress: Iterable[PartitionProgress]) -> int:
    """The epoch bytewax resumes from, given every partition's progress (its resume calculation)."""
    progress = list(progress)
    executions = [ex for p in progress for ex in p.exs]
    if not executions:
        return FIRST_EPOCH  # no execution recorded: bytewax starts afresh
    last, worker_count, ex_resume = max(executions)
    fronts = [(worker, frontier) for p in progress for ex, worker, frontier in p.fronts if ex == last]
    return resume_epoch(worker_count, ex_resume, fronts)
