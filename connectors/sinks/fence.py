"""The commit-ahead protocol every sink follows (docs/architecture.md, "Exactly-once").

bytewax 0.21.1 gives a sink no call when an epoch is durably stored, so a sink commits
its epoch's output at or before `snapshot()`: output can be visible past the snapshot
a later resume restores. Output is grouped in *units*, each emitted whole and once and
named by a deterministic function of the input. On resume, units committed past the
restored snapshot stay; the sink reads them back from its stored position and the
replay drops them.

The fence is the set of such units the replay has not passed yet. It goes into every
snapshot until the replay passes each unit, so a resume from any stored snapshot knows
them, however many crashes came in between. Invariant: what a replay from a stored
snapshot will emit that a reader can already see is in that snapshot's fence, or past
its read-back position.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

LEGACY_NAMESPACE = ""


@dataclass(frozen=True)
class CommitState:
    """A sink partition's snapshot: its run namespace, its next sequence number, where a
    resume reads its output back from (sink-specific; None where `next_seq` says it), and
    the fence."""

    namespace: str
    next_seq: int
    position: Any = None
    fence: frozenset[Hashable] = field(default_factory=frozenset)

    def to_snapshot(self) -> dict[str, Any]:
        # A plain dict: snapshots outlive module moves and renames, pickled classes do not.
        return {"namespace": self.namespace, "seq": self.next_seq, "position": self.position, "fence": set(self.fence)}

    @classmethod
    def from_snapshot(cls, state: Any, fresh_namespace: str) -> CommitState:
        """Any state a sink ever stored: None (no state: a fresh run in `fresh_namespace`),
        a bare seq (stores from before namespaces), `(namespace, seq)` (before the fence),
        or `to_snapshot()`'s dict."""
        if state is None:
            return cls(fresh_namespace, 0)
        if isinstance(state, int):
            return cls(LEGACY_NAMESPACE, state)
        if isinstance(state, tuple):
            namespace, seq = state
            return cls(namespace, seq)
        return cls(state["namespace"], state["seq"], state.get("position"), frozenset(state.get("fence", ())))


class Fence:
    """Units committed past the restored snapshot that the replay has not yet passed."""

    def __init__(self, units: Iterable[Hashable] = ()) -> None:
        self._units = set(units)

    def add(self, units: Iterable[Hashable]) -> None:
        self._units.update(units)

    def passes(self, unit: Hashable) -> bool:
        """Whether the replay may emit `unit`: False if it is already committed. A fenced unit
        leaves the fence once the replay reaches it: a unit is emitted once."""
        if unit in self._units:
            self._units.discard(unit)
            return False
        return True

    def passed(self, units: Iterable[Hashable]) -> None:
        """The replay reached these units (and dropped them)."""
        self._units.difference_update(units)

    def __contains__(self, unit: Hashable) -> bool:
        return unit in self._units

    def __len__(self) -> int:
        return len(self._units)

    def __bool__(self) -> bool:
        return bool(self._units)

    def units(self) -> frozenset[Hashable]:
        return frozenset(self._units)
