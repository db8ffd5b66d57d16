"""The committer: an offset counts as committed only when the broker confirmed it, and only for owned partitions."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.pipeline.committer import CommitResult, Committer
from consumer.pipeline.offsets import NOTHING_TO_DO, OffsetTracker, TopicPartitionKey, Work

TP = ("usage", 0)
TP1 = ("usage", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Broker:
    """A commit target that answers only when told to, as librdkafka's callback does."""

    sent: list[dict[TopicPartitionKey, int]] = field(default_factory=list)
    held: dict[TopicPartitionKey, int] = field(default_factory=dict)
    """What the broker has stored per partition."""
    refuse_sync: bool = False

    def commit_async(self, offsets: dict[TopicPartitionKey, int]) -> None:
        self.sent.append(dict(offsets))

    def commit_sync(self, offsets: dict[TopicPartitionKey, int]) -> CommitResult:
        # Requests are served in order on one connection: what was sent before is stored first (its answer
        # still reaches the committer later, through answer()).
        for earlier in self.sent:
            self.held.update(earlier)
        self.stored_early = len(self.sent)
        if self.refuse_sync:
            return {k: (v, "Broker: Specified group generation id is not valid") for k, v in offsets.items()}
        self.held.update(offsets)
        return {k: (v, None) for k, v in offsets.items()}

    stored_early: int = 0

    def answer(self, committer: Committer, error: str | None = None, *, partial: set[TopicPartitionKey] | None = None,
               ) -> None:
        """Answer the oldest request sent (all of it, or refuse only ``partial``)."""
        offsets = self.sent.pop(0)
        already = self.stored_early > 0
        self.stored_early = max(0, self.stored_early - 1)
        result: dict[TopicPartitionKey, tuple[int, str | None]] = {}
        for key, offset in offsets.items():
            refused = None if already else error if partial is None or key in partial else None
            if refused is None and not already:
                self.held[key] = offset
            result[key] = (offset, refused)
        committer.confirm(result)


def committer_with(*keys: TopicPartitionKey, clock: Clock | None = None) -> tuple[Committer, OffsetTracker, Broker]:
    tracker = OffsetTracker()
    committer = Committer(tracker, destination="freshsuccess", clock=clock or Clock(), retry_backoff_s=(0.2, 5.0))
    broker = Broker()
    committer.bind(broker)
    committer.assigned(keys, {})
    return committer, tracker, broker


def finish(tracker: OffsetTracker, key: TopicPartitionKey, *offsets: int) -> None:
    for offset in offsets:
        tracker.track(key, offset, NOTHING_TO_DO)


def test_an_asynchronous_commit_counts_only_once_the_broker_confirmed_it() -> None:
    committer, tracker, broker = committer_with(TP)
    finish(tracker, TP, 0, 1, 2)
    committer.poll()
    assert broker.sent == [{TP: 3}]
    assert committer.confirmed == {}  # queued is not committed
    broker.answer(committer)
    assert committer.confirmed == {TP: 3}


def test_a_refused_commit_is_sent_again_after_a_backoff_and_never_reported_done_before() -> None:
    clock = Clock()
    committer, tracker, broker = committer_with(TP, clock=clock)
    finish(tracker, TP, 0, 1)
    committer.poll()
    broker.answer(committer, "Broker: Group rebalance in progress")
    assert committer.confirmed == {}
    assert committer.refused == 1
    committer.poll()
    assert broker.sent == []  # not before the backoff
    clock.now += 0.25
    committer.poll()
    assert broker.sent == [{TP: 2}]
    broker.answer(committer)
    assert committer.confirmed == {TP: 2}
    assert broker.held == {TP: 2}


def test_a_partly_refused_commit_keeps_what_was_confirmed_and_retries_the_rest() -> None:
    clock = Clock()
    committer, tracker, broker = committer_with(TP, TP1, clock=clock)
    finish(tracker, TP, 0)
    finish(tracker, TP1, 0, 1)
    committer.poll()
    broker.answer(committer, "Broker: Request timed out", partial={TP1})
    assert committer.confirmed == {TP: 1}
    clock.now += 1
    committer.poll()
    assert broker.sent == [{TP1: 2}]


def test_one_request_at_a_time_and_later_advances_are_coalesced_into_the_next() -> None:
    committer, tracker, broker = committer_with(TP)
    finish(tracker, TP, 0)
    committer.poll()
    finish(tracker, TP, 1, 2)
    committer.poll()
    finish(tracker, TP, 3)
    committer.poll()
    assert broker.sent == [{TP: 1}]
    broker.answer(committer)
    committer.poll()
    assert broker.sent == [{TP: 4}]


def test_nothing_is_committed_for_a_partition_no_longer_owned_even_when_a_late_answer_arrives() -> None:
    committer, tracker, broker = committer_with(TP, TP1)
    finish(tracker, TP, 0)
    finish(tracker, TP1, 0)
    committer.poll()
    committer.released([TP])
    broker.answer(committer)
    assert committer.confirmed == {TP1: 1}
    finish(tracker, TP1, 1)
    committer.poll()
    assert broker.sent == [{TP1: 2}]
    assert committer.commit_now([TP]) is True  # nothing owned to commit
    assert all(TP not in sent for sent in broker.sent)


def test_a_halted_committer_commits_nothing_more() -> None:
    committer, tracker, broker = committer_with(TP)
    finish(tracker, TP, 0)
    committer.halt("Freshsuccess answered 400")
    committer.poll()
    assert committer.commit_now() is False
    assert broker.sent == []
    assert broker.held == {}


def test_a_synchronous_commit_is_checked_partition_by_partition() -> None:
    committer, tracker, broker = committer_with(TP)
    finish(tracker, TP, 0, 1)
    broker.refuse_sync = True
    assert committer.commit_now() is False
    assert committer.confirmed == {}
    broker.refuse_sync = False
    assert committer.commit_now() is True
    assert committer.confirmed == {TP: 2}


def test_offsets_known_at_assignment_are_reported_as_committed() -> None:
    committer, _tracker, _broker = committer_with()
    committer.assigned([TP], {TP: 40})
    assert committer.confirmed == {TP: 40}


def test_an_answer_that_never_comes_does_not_stop_commits_for_ever() -> None:
    clock = Clock()
    committer, tracker, broker = committer_with(TP, clock=clock)
    finish(tracker, TP, 0)
    committer.poll()
    broker.sent.clear()  # lost
    clock.now += 61
    committer.poll()
    assert broker.sent == [{TP: 1}]


# --------------------------------------------------------------------------------- property test

step = st.one_of(
    st.tuples(st.just("consume"), st.integers(0, 2), st.integers(0, 3)),   # partition, which open work
    st.tuples(st.just("finish"), st.integers(0, 50), st.booleans()),       # work index, fail instead
    st.tuples(st.just("revoke"), st.integers(0, 2), st.booleans()),        # commit first (revoke) or not (lost)
    st.tuples(st.just("assign"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("poll"), st.just(0), st.booleans()),
    st.tuples(st.just("answer"), st.just(0), st.booleans()),               # confirm, or refuse
    st.tuples(st.just("tick"), st.just(0), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, min_size=1, max_size=150))
def test_the_confirmed_offset_never_passes_an_unfinished_message(steps: list[tuple[str, int, bool | int]]) -> None:
    """Whatever the completion order, failures, refusals, revocations and losses: what the broker holds for a
    partition never passes a message that was neither delivered nor dead-lettered, nothing is sent for a
    partition not owned, and ``confirmed`` is exactly what the broker holds for the owned ones."""
    clock = Clock()
    committer, tracker, broker = committer_with(clock=clock)
    works: list[Work] = []
    open_works: list[Work] = []
    messages: dict[TopicPartitionKey, list[tuple[int, Work]]] = {}
    next_offset = {p: 0 for p in range(3)}
    owned: set[TopicPartitionKey] = set()

    for kind, number, flag in steps:
        key = ("t", number)
        if kind == "assign" and key not in owned:
            owned.add(key)
            committer.assigned([key], {key: broker.held[key]} if key in broker.held and flag else {})
            messages[key] = []
            if key in broker.held:
                next_offset[number] = max(next_offset[number], broker.held[key])
        elif kind == "consume" and key in owned:
            choice = int(flag)
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
            messages[key].append((offset, work))
        elif kind == "finish" and works:
            work = works[number % len(works)]
            if work.pending:
                if flag:
                    work.fail()
                work.release()
                if work in open_works:
                    open_works.remove(work)
        elif kind == "revoke" and key in owned:
            if flag:
                committer.commit_now([key])
            committer.released([key])
            owned.discard(key)
            messages.pop(key, None)
        elif kind == "poll":
            before = len(broker.sent)
            committer.poll()
            for sent in broker.sent[before:]:
                assert set(sent) <= owned, "a commit was sent for a partition not owned"
        elif kind == "answer" and broker.sent:
            broker.answer(committer, None if flag else "Broker: Group rebalance in progress")
        elif kind == "tick":
            clock.now += 1.0

        for partition, tracked in messages.items():
            if partition in broker.held:
                unfinished = [o for o, w in tracked if not w.done]
                assert all(o >= broker.held[partition] for o in unfinished), (partition, broker.held, unfinished)
        for partition, offset in committer.confirmed.items():
            assert partition in owned
            assert broker.held.get(partition) == offset, "confirmed must be what the broker holds"
