"""The Kinesis shard tracker as pure code: which shards to read after splits and merges, and from where."""

from __future__ import annotations

import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.transports.kinesis.tracker import ShardInfo, ShardTracker

TRIM = ("TRIM_HORIZON", None)


def readable(tracker: ShardTracker) -> list[str]:
    return [s.shard_id for s in tracker.readable()]


def position(tracker: ShardTracker, shard_id: str) -> tuple:
    shard = tracker.shards[shard_id]
    return shard.kind, shard.arg


def test_a_fresh_start_takes_the_start_position_for_its_first_listing_only() -> None:
    tracker = ShardTracker(("AT_TIMESTAMP", 1_700_000_000_000))
    tracker.on_listing([ShardInfo("a"), ShardInfo("b")])
    assert readable(tracker) == ["a", "b"]
    assert position(tracker, "a") == position(tracker, "b") == ("AT_TIMESTAMP", 1_700_000_000_000)
    tracker.on_listing([ShardInfo("a"), ShardInfo("b"), ShardInfo("c")])  # found later: only new data there
    assert position(tracker, "c") == TRIM
    assert position(tracker, "a") == ("AT_TIMESTAMP", 1_700_000_000_000)  # a known shard keeps its position


def test_split_children_wait_for_their_parent_and_start_at_trim_horizon() -> None:
    tracker = ShardTracker(("LATEST", None))
    tracker.on_listing([ShardInfo("p")])
    tracker.read_up_to("p", "17")
    tracker.on_listing([ShardInfo("p", closed=True), ShardInfo("c1", ("p",)), ShardInfo("c2", ("p",))])
    assert readable(tracker) == ["p"]
    assert position(tracker, "p") == ("AFTER_SEQUENCE_NUMBER", "17")
    tracker.finish("p")
    assert readable(tracker) == ["c1", "c2"]
    assert position(tracker, "c1") == position(tracker, "c2") == TRIM


def test_a_merge_child_waits_for_both_parents() -> None:
    tracker = ShardTracker(TRIM)
    tracker.on_listing([ShardInfo("a", closed=True), ShardInfo("b", closed=True), ShardInfo("m", ("a", "b"))])
    assert readable(tracker) == ["a", "b"]
    tracker.finish("a")
    assert readable(tracker) == ["b"]  # one parent still unread: the child would overtake its records
    tracker.finish("b")
    assert readable(tracker) == ["m"]


def test_children_named_at_shard_end_are_added_once() -> None:
    tracker = ShardTracker(TRIM)
    tracker.on_listing([ShardInfo("a"), ShardInfo("b")])
    tracker.read_up_to("a", "5")
    tracker.finish("a")
    tracker.add_children([ShardInfo("m", ("a", "b"))])
    assert readable(tracker) == ["b"]  # the merge's other parent is still being read
    tracker.read_up_to("b", "9")
    tracker.finish("b")
    tracker.add_children([ShardInfo("m", ("a", "b"))])  # b's SHARD_END names the same child
    assert readable(tracker) == ["m"] and position(tracker, "m") == TRIM
    tracker.read_up_to("m", "12")
    tracker.add_children([ShardInfo("m", ("a", "b"))])  # a late duplicate does not reset its position
    assert position(tracker, "m") == ("AFTER_SEQUENCE_NUMBER", "12")
    tracker.finish("m")
    tracker.add_children([ShardInfo("m", ("a", "b"))])
    assert readable(tracker) == []  # a finished shard is never read again


def test_finished_shards_are_forgotten_once_no_longer_listed() -> None:
    tracker = ShardTracker(TRIM, {"shards": {"c": {"pos": list(TRIM), "parents": ["p"]}}, "done": ["p", "q"]})
    tracker.on_listing([ShardInfo("p", closed=True), ShardInfo("c", ("p",))])
    assert tracker.done == {"p"}  # q is past retention: forgotten
    assert readable(tracker) == ["c"]
    assert "p" not in tracker.shards  # listed again, but read already: not read twice
    tracker.on_listing([ShardInfo("c", ("p",))])  # p past retention too
    assert tracker.done == set() and readable(tracker) == ["c"]


def test_an_unfinished_shard_no_longer_listed_still_holds_back_its_children() -> None:
    positions = {"shards": {"p": {"pos": ["AFTER_SEQUENCE_NUMBER", "3"], "parents": []}}, "done": []}
    tracker = ShardTracker(TRIM, positions)
    tracker.on_listing([ShardInfo("c", ("p",))])
    assert readable(tracker) == ["p"]  # the reader learns it is gone from GetShardIterator, then finishes it
    tracker.finish("p")
    assert readable(tracker) == ["c"]


def test_latest_skips_closed_shards_and_snapshots_as_the_start_time() -> None:
    tracker = ShardTracker(("LATEST", None))
    tracker.on_listing([ShardInfo("old", closed=True), ShardInfo("open", ("old",))])
    assert readable(tracker) == ["open"] and tracker.done == {"old"}  # nothing new arrives in a closed shard
    assert tracker.snapshot(started_ms=123)["shards"]["open"]["pos"] == ["AT_TIMESTAMP", 123]
    tracker.iterator_taken("open", 123)
    assert position(tracker, "open") == ("AT_TIMESTAMP", 123)  # a renewal does not skip what came meanwhile
    tracker.iterator_taken("open", 999)
    assert position(tracker, "open") == ("AT_TIMESTAMP", 123)


def test_a_shard_closed_after_reaching_its_tip_is_read_on() -> None:
    tracker = ShardTracker(TRIM)
    tracker.on_listing([ShardInfo("a"), ShardInfo("b")])
    tracker.reached_tip("a")
    tracker.reached_tip("b")
    assert readable(tracker) == [] and tracker.complete()
    tracker.on_listing([ShardInfo("a", closed=True), ShardInfo("b"), ShardInfo("c", ("a",)), ShardInfo("d", ("a",))])
    assert readable(tracker) == ["a"] and not tracker.complete()  # to SHARD_END, then its children
    tracker.reached_tip("a")  # a closed shard's tip is its end, which GetRecords says: not idle
    assert readable(tracker) == ["a"]


def test_complete_needs_a_listing_and_every_shard_open_and_at_its_tip() -> None:
    tracker = ShardTracker(TRIM)
    assert not tracker.complete()  # nothing listed yet
    tracker.on_listing([])
    assert tracker.complete()  # an empty stream is read
    tracker.on_listing([ShardInfo("a")])
    assert not tracker.complete()
    tracker.reached_tip("a")
    assert tracker.complete()


def test_a_snapshot_restores_the_same_shards_positions_and_order() -> None:
    tracker = ShardTracker(("AT_TIMESTAMP", 50))
    tracker.on_listing([ShardInfo("a", closed=True), ShardInfo("b"), ShardInfo("c", ("a",)), ShardInfo("d", ("a",))])
    tracker.read_up_to("a", "40")
    tracker.read_up_to("b", "41")
    restored = ShardTracker(("AT_TIMESTAMP", 50), pickle.loads(pickle.dumps(tracker.snapshot(started_ms=0))))
    assert readable(restored) == readable(tracker) == ["a", "b"]
    assert {s: position(restored, s) for s in "abcd"} == {s: position(tracker, s) for s in "abcd"}
    restored.on_listing([ShardInfo("a", closed=True), ShardInfo("b"), ShardInfo("e")])
    assert position(restored, "e") == TRIM  # a resume is no fresh start: new shards hold only new data


@st.composite
def lineages(draw: st.DrawFn) -> tuple[list[ShardInfo], dict[str, tuple[str, ...]]]:
    """A stream's history of splits and merges: every shard ever, and each one's parents."""
    counter = iter(range(1000))
    open_shards = [f"s{next(counter)}" for _ in range(draw(st.integers(1, 3)))]  # in hash-key order
    parents: dict[str, tuple[str, ...]] = {s: () for s in open_shards}
    for _ in range(draw(st.integers(0, 8))):
        i = draw(st.integers(0, len(open_shards) - 1))
        if draw(st.booleans()) or len(open_shards) == 1:  # split shard i
            children = [f"s{next(counter)}", f"s{next(counter)}"]
            for child in children:
                parents[child] = (open_shards[i],)
            open_shards[i : i + 1] = children
        else:  # merge shard i with its right (or left) neighbour
            j = i + 1 if i + 1 < len(open_shards) else i - 1
            lo, hi = sorted((i, j))
            child = f"s{next(counter)}"
            parents[child] = (open_shards[lo], open_shards[hi])
            open_shards[lo : hi + 1] = [child]
    closed = {p for ps in parents.values() for p in ps}
    return [ShardInfo(s, ps, s in closed) for s, ps in parents.items()], parents


@settings(max_examples=200, deadline=None)
@given(lineage=lineages(), picks=st.lists(st.integers(0, 100), max_size=200), relist=st.lists(st.booleans()))
def test_any_history_of_splits_and_merges_is_read_once_each_shard_after_its_parents(
    lineage: tuple[list[ShardInfo], dict[str, tuple[str, ...]]], picks: list[int], relist: list[bool]
) -> None:
    """Reading in any order the tracker allows, listing again now and then: every shard once, after all its parents."""
    shards, parents = lineage
    tracker = ShardTracker(TRIM)
    tracker.on_listing(shards)
    children_of = {s.shard_id: [c for c in shards if s.shard_id in c.parents] for s in shards}
    order: list[str] = []
    picks_left, relists = iter(picks), iter(relist)
    while tracker.readable():
        ready = tracker.readable()
        shard = ready[next(picks_left, 0) % len(ready)].shard_id
        order.append(shard)
        tracker.finish(shard)
        tracker.add_children(children_of[shard])
        if next(relists, False):
            tracker.on_listing(shards)
    assert sorted(order) == sorted(parents)  # every shard, once
    for shard, its_parents in parents.items():
        assert all(order.index(p) < order.index(shard) for p in its_parents)


def test_a_merge_child_named_at_shard_end_waits_for_a_parent_not_yet_listed() -> None:
    tracker = ShardTracker(TRIM)
    tracker.on_listing([ShardInfo("a"), ShardInfo("b")])
    # Since that listing: b split into b1 and b2, then a merged with b1 into m. a's SHARD_END names m.
    tracker.finish("a")
    tracker.add_children([ShardInfo("m", ("a", "b1"))])
    # b, then b1, still hold records of m's keys written before the merge.
    assert readable(tracker) == ["b"]
    # The next listing names b1 and m: m still waits for b1, which waits for b.
    tracker.on_listing(
        [ShardInfo("b", closed=True), ShardInfo("b1", ("b",)), ShardInfo("b2", ("b",)), ShardInfo("m", ("a", "b1"))]
    )
    assert readable(tracker) == ["b"]
    tracker.finish("b")
    assert readable(tracker) == ["b1", "b2"]
    tracker.finish("b1")
    assert readable(tracker) == ["b2", "m"]
