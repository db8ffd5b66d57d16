"""The offset tracker: a committed offset never passes a message that was neither delivered nor dead-lettered."""

from __future__ import annotations

import pytest

from consumer.pipeline.offsets import NOTHING_TO_DO, OffsetTracker, Work

TP = ("usage", 0)


def test_commits_only_the_contiguous_finished_prefix() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP)
    first, second = Work("b1"), Work("b2")
    for offset in range(0, 3):
        tracker.track(TP, offset, first)
    for offset in range(3, 6):
        tracker.track(TP, offset, second)
    second.release()
    assert tracker.committable() == {}  # b2 is done, but b1 before it is not
    first.release()
    assert tracker.committable() == {TP: 6}


def test_skipped_messages_are_committable_at_once() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP)
    tracker.track(TP, 10, NOTHING_TO_DO)
    tracker.track(TP, 11, NOTHING_TO_DO)
    assert tracker.committable() == {TP: 12}


def test_a_partition_never_assigned_is_not_adopted() -> None:
    tracker = OffsetTracker()
    with pytest.raises(KeyError):
        tracker.track(TP, 0, NOTHING_TO_DO)
    assert tracker.owned() == []
    assert tracker.committable() == {}


def test_a_failed_work_item_blocks_its_partition_forever() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP)
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
    tracker.assign(TP)
    tracker.track(TP, 0, work)
    tracker.forget(TP)
    work.release()
    assert tracker.committable() == {}


def test_out_of_order_tracking_is_a_bug_and_says_so() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP)
    tracker.track(TP, 5, NOTHING_TO_DO)
    with pytest.raises(ValueError, match="tracked after"):
        tracker.track(TP, 5, NOTHING_TO_DO)


def test_releasing_more_than_held_is_refused() -> None:
    work = Work("x")
    work.release()
    with pytest.raises(RuntimeError, match="released more often"):
        work.release()
