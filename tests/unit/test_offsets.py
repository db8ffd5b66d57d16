"""The offset tracker: a committed offset never passes a message that was neither delivered nor dead-lettered."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.offsets import NOTHING_TO_DO, OffsetTracker, Work

TP = ("usage", 0)


def test_commits_only_the_contiguous_finished_prefix() -> None:
    tracker = OffsetTracker()
    first, second = Work("b1"), Work("b2")
    for offset in range(0, 3):
        tracker.track(TP, offset, first)
    for offset in range(3, 6):
        tracker.track(TP, offset, second)
    second.release()
    assert tracker.committable() == {}  # b2 is done, but b1 before it is not
    first.release()
    assert tracker.committable() == {TP: 6}


def test_skipped_messages_are_committable_at_once_and_commits_are_not_repeated() -> None:
    tracker = OffsetTracker()
    tracker.track(TP, 10, NOTHING_TO_DO)
    tracker.track(TP, 11, NOTHING_TO_DO)
    assert tracker.committable() == {TP: 12}
    tracker.mark_committed({TP: 12})
    assert tracker.committable() == {}


def test_a_failed_work_item_blocks_its_partition_forever() -> None:
    tracker = OffsetTracker()
    stuck, later = Work("dead letter"), Work("batch")
    tracker.track(TP, 0, NOTHING_TO_DO)
    tracker.track(TP, 1, stuck)
    tracker.track(TP, 2, later)
    stuck.fail()
    stuck.release()
    later.release()
    assert tracker.committable() == {TP: 1}
    assert tracker.pending_messages(TP)


def test_forgotten_partitions_are_never_committed() -> None:
    tracker = OffsetTracker()
    work = Work()
    tracker.track(TP, 0, work)
    tracker.forget(TP)
    work.release()
    assert tracker.committable() == {}


def test_out_of_order_tracking_is_a_bug_and_says_so() -> None:
    tracker = OffsetTracker()
    tracker.track(TP, 5, NOTHING_TO_DO)
    with pytest.raises(ValueError, match="tracked after"):
        tracker.track(TP, 5, NOTHING_TO_DO)


def test_releasing_more_than_held_is_refused() -> None:
    work = Work("x")
    work.release()
    with pytest.raises(RuntimeError, match="released more often"):
        work.release()


# --------------------------------------------------------------------------------- property test

step = st.one_of(
    st.tuples(st.just("consume"), st.integers(0, 2), st.integers(0, 3)),   # partition, which open work
    st.tuples(st.just("finish"), st.integers(0, 50), st.booleans()),       # work index, fail instead
    st.tuples(st.just("revoke"), st.integers(0, 2), st.just(False)),
    st.tuples(st.just("commit"), st.just(0), st.just(False)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, min_size=1, max_size=120))
def test_committed_offset_never_passes_an_unfinished_message(steps: list[tuple[str, int, object]]) -> None:
    tracker = OffsetTracker()
    works: list[Work] = []
    open_works: list[Work] = []
    messages: dict[tuple[str, int], list[tuple[int, Work]]] = {}
    next_offset = {p: 0 for p in range(3)}
    owned = {("t", p) for p in range(3)}
    committed: dict[tuple[str, int], int] = {}

    for kind, number, flag in steps:
        if kind == "consume":
            key = ("t", number)
            if key not in owned:
                owned.add(key)
                tracker.assign(key)
                messages[key] = []
            choice = flag if isinstance(flag, int) else 0
            if choice == 0:
                work = NOTHING_TO_DO
            else:
                while len(open_works) < choice:
                    fresh = Work(f"w{len(works)}")
                    works.append(fresh)
                    open_works.append(fresh)
                work = open_works[choice - 1]
            offset = next_offset[number]
            next_offset[number] += 1 + (offset % 3 == 2)  # offsets may have gaps (compaction, transactions)
            tracker.track(key, offset, work)
            messages.setdefault(key, []).append((offset, work))
        elif kind == "finish" and works:
            work = works[number % len(works)]
            if work.pending:
                if flag:
                    work.fail()
                work.release()
                if work in open_works:
                    open_works.remove(work)
        elif kind == "revoke":
            key = ("t", number)
            tracker.forget(key)
            owned.discard(key)
            messages.pop(key, None)
        else:
            ready = tracker.committable()
            assert set(ready) <= owned, "never commit a partition no longer owned"
            tracker.mark_committed(ready)
            committed.update(ready)

        for key, tracked in messages.items():
            if key in committed:
                unfinished = [o for o, w in tracked if not w.done]
                limit = committed[key]
                assert all(o >= limit for o in unfinished), (key, limit, unfinished)

    # Maximality: once everything finishes, every owned partition commits past its last message.
    for work in works:
        if work.pending and not work.failed:
            work.release()
    final = tracker.committable()
    for key, tracked in messages.items():
        if tracked and all(w.done for _, w in tracked):
            assert final.get(key, committed.get(key)) == tracked[-1][0] + 1
