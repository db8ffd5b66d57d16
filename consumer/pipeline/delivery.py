"""The delivery thread: one asyncio event loop where the destination sinks' coroutines run.

The poll thread hands closed batches over with :meth:`DeliveryLoop.submit` and gets a
``concurrent.futures.Future`` back, which it checks on each loop iteration; results therefore come back to
the poll thread, where the offset tracker lives. Compression and HTTP happen here, off the poll thread.

A lane sees its delivery only through :class:`Delivery` (submit, and wait for one of its futures), so tests
drive it step by step on a manual clock (:mod:`consumer.testing.stepping`) instead of a thread and real time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Collection, Coroutine
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from consumer.observability.threads import name_os_thread

__all__ = ["Delivery", "DeliveryLoop"]

T = TypeVar("T")


class Delivery(Protocol):
    """What a lane uses of its delivery: hand a coroutine over, and wait a bounded time for a result.

    :class:`DeliveryLoop` is the real one; :class:`consumer.testing.stepping.SteppedDelivery` runs the
    coroutines only when a test says so and lets waits pass on a manual clock.
    """

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Start ``coroutine``; its outcome arrives in the returned future (cancelling it cancels the work)."""

    def wait(self, futures: Collection[Future[Any]], timeout_s: float) -> None:
        """Return when one of ``futures`` is done or ``timeout_s`` has passed, whichever comes first."""


class DeliveryLoop:
    """An event loop running in a daemon thread until :meth:`stop`."""

    def __init__(self, name: str = "delivery") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (made by :meth:`start`, so a loop that never ran is never left open)."""
        if self._loop is None:
            raise RuntimeError(f"delivery loop {self._name!r} used before start()")
        return self._loop

    def _run(self) -> None:
        name_os_thread()
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    def start(self) -> DeliveryLoop:
        self._loop = asyncio.new_event_loop()
        self._thread.start()
        self._started.wait()
        return self

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def wait(self, futures: Collection[Future[Any]], timeout_s: float) -> None:
        """Block the calling (poll) thread until one of ``futures`` is done, at most ``timeout_s`` of real time."""
        concurrent.futures.wait(futures, timeout=timeout_s, return_when=concurrent.futures.FIRST_COMPLETED)

    def call(self, factory: Callable[[], Awaitable[T]], timeout_s: float | None = None) -> T:
        """Run a coroutine on the loop and wait for its result (start-up pings, closing clients)."""

        async def run() -> T:
            return await factory()

        return self.submit(run()).result(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel whatever still runs, then stop the loop and join its thread."""
        if not self._thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.submit(cancel_all()).result(timeout_s)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout_s)
            if not self._thread.is_alive():
                self.loop.close()
