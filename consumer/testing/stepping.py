"""Step-driven doubles for a lane's time and delivery: tests decide when work runs and when time passes.

A real lane sleeps on nothing but its consumer's poll and its delivery's waits, and reads time from its clock
(:class:`~consumer.pipeline.lane.Lane` takes ``clock=`` and a :class:`~consumer.pipeline.delivery.Delivery`).
Give it a :class:`ManualClock` and a :class:`SteppedDelivery` and a test can call ``lane.step()`` in a loop
with no thread and no real time: batch ages, retry backoffs and revocation deadlines pass only when the test
(or a delivery wait) advances the clock, and sinks finish a batch only when the test opens their gate (an
``asyncio.Event``) and lets the delivery run. A test of that kind cannot pass or fail by a race.

What the doubles do not drive: coroutines that wait on real time (``asyncio.sleep`` with a delay, timeouts)
or on I/O; sinks under test should wait on an ``asyncio.Event`` instead. Nor the dead letters' ``flush``,
which the lane calls (instead of a delivery wait) when nothing is in flight: a dead-letter double should let
its timeout pass on the clock there, or a lane waiting for work nothing will finish spins in simulated time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Coroutine
from concurrent.futures import Future
from contextvars import Context
from types import TracebackType
from typing import Any, TypeVar, TypeVarTuple

__all__ = ["ManualClock", "SteppedDelivery", "step_until"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class ManualClock:
    """A monotonic clock that moves only when told; pass ``clock.now`` where a ``clock=`` is taken."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass (never backwards: the lane's clock is monotonic)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back {seconds}s")
        self._now += seconds


class _CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the callbacks it is asked to run soon.

    Task steps and future wake-ups are all scheduled through ``call_soon``, so an iteration after which the
    count has not moved left nothing ready: that is how :meth:`SteppedDelivery.run_until_idle` knows it is
    done, with the loop's public interface only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scheduled = 0

    def call_soon(self, callback: Callable[[*Ts], object], *args: *Ts,
                  context: Context | None = None) -> asyncio.Handle:
        self.scheduled += 1
        return super().call_soon(callback, *args, context=context)


class SteppedDelivery:
    """A :class:`~consumer.pipeline.delivery.Delivery` that runs its coroutines only when told.

    Submitted coroutines become tasks on a private event loop that runs only inside :meth:`run_until_idle`
    (and inside :meth:`wait`, as the lane's revocation and shutdown call it). A wait in which nothing finished
    advances :attr:`clock` by the wait's timeout, so the lane's deadlines pass in simulated time. Close it
    (or use it as a context manager): that cancels what still runs and closes the loop.
    """

    def __init__(self, clock: ManualClock, *, max_iterations: int = 10_000) -> None:
        self.clock = clock
        self._max_iterations = max_iterations
        self._loop = _CountingLoop()
        self._tasks: list[asyncio.Task[Any]] = []

    # ------------------------------------------------------------------------- the Delivery protocol

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coroutine`` (it does not start until the loop runs); cancelling the future cancels it."""
        task = self._loop.create_task(coroutine)
        self._tasks.append(task)
        future: Future[T] = Future()

        def settle(done: asyncio.Task[T]) -> None:
            if done.cancelled():
                future.cancel()
            elif future.set_running_or_notify_cancel():  # False: the lane cancelled it meanwhile
                error = done.exception()
                if error is None:
                    future.set_result(done.result())
                else:
                    future.set_exception(error)

        def cancel_task(cancelled: Future[T]) -> None:
            if cancelled.cancelled():
                task.cancel()

        task.add_done_callback(settle)
        future.add_done_callback(cancel_task)
        return future

    def wait(self, futures: Collection[Future[Any]], timeout_s: float) -> None:
        """Run what is ready once; if none of ``futures`` finished, let ``timeout_s`` pass on the clock.

        The real wait returns at the first finished future or at the timeout: the same two outcomes, with the
        timeout spent in simulated time.
        """
        if any(f.done() for f in futures):
            return
        self.run_until_idle()
        if not any(f.done() for f in futures):
            self.clock.advance(timeout_s)

    # ----------------------------------------------------------------------------- test controls

    def run_until_idle(self) -> None:
        """Run the loop until no callback is ready: every task has finished or waits on something not set.

        Raises if work is still ready after ``max_iterations`` loop iterations (a coroutine that never waits).
        """
        loop = self._loop
        for _ in range(self._max_iterations):
            loop.call_soon(loop.stop)  # run_forever then runs exactly one iteration
            before = loop.scheduled
            loop.run_forever()
            if loop.scheduled == before:
                self._tasks = [t for t in self._tasks if not t.done()]
                return
        raise RuntimeError(f"delivery still busy after {self._max_iterations} loop iterations")

    @property
    def unfinished(self) -> int:
        """Submitted coroutines that have not finished (as of the last run)."""
        return sum(1 for t in self._tasks if not t.done())

    def close(self) -> None:
        """Cancel the coroutines still running, let them unwind, and close the loop."""
        if self._loop.is_closed():
            return
        for task in self._tasks:
            task.cancel()
        self.run_until_idle()
        self._loop.close()

    def __enter__(self) -> SteppedDelivery:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def step_until(step: Callable[[], None], delivery: SteppedDelivery, done: Callable[[], bool], *,
               max_steps: int, tick_s: float = 0.0, what: str = "the condition") -> int:
    """Call ``step`` (e.g. ``lane.step``), let ``delivery`` run until idle, and check ``done``; at most
    ``max_steps`` times. Between steps the clock advances ``tick_s`` (0: time stands still).

    Returns how many steps it took; fails naming ``what`` when the bound is reached first, so a test that
    would hang fails instead, and in the same number of steps every run.
    """
    for taken in range(1, max_steps + 1):
        step()
        delivery.run_until_idle()
        if done():
            return taken
        delivery.clock.advance(tick_s)
    raise AssertionError(f"{what} did not happen within {max_steps} steps")
