"""The composition root: assemble the service from ``Settings`` and run one lane per enabled destination.

Start-up runs the checks of :mod:`consumer.app.startup` first, so a mistake fails with one clear message
before anything is consumed. Then each lane runs in its own thread with its own consumer (group
``<group_id>.<destination>`` by default), sharing one delivery event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from consumer.app.build import Sink, build_sink, judges_for, lane_settings
from consumer.app.startup import (
    Prepared,
    check_kafka,
    check_registry,
    ping_freshsuccess,
    prepare,
    start_health_server,
)
from consumer.config import Settings
from consumer.errors import ConfigError
from consumer.kafka.deadletter import DeadLetter, DeadLetterProducer
from consumer.kafka.source import KafkaSource, consumer_config
from consumer.observability.health import HealthServer
from consumer.observability.metrics import Metrics
from consumer.observability.threads import name_os_thread
from consumer.pipeline.delivery import DeliveryLoop
from consumer.pipeline.lane import Lane
from consumer.pipeline.ports import SourceCallbacks
from consumer.sinks.freshsuccess import FreshsuccessSink

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_FATAL = 3


class Service:
    """One lane per destination, one delivery loop, one stop event."""

    def __init__(self, settings: Settings, *, destinations: list[str] | None = None,
                 on_parked: Callable[[DeadLetter], None] | None = None) -> None:
        self.settings = settings
        self.destinations = destinations or settings.destinations()
        self.on_parked = on_parked
        self.stop_event = threading.Event()
        self.lanes: list[Lane] = []
        self.delivery = DeliveryLoop()
        self.metrics = Metrics()
        self.health: HealthServer | None = None
        self.started = False
        self._threads: list[threading.Thread] = []
        self._sinks: list[Sink] = []

    def start(self) -> None:
        """Check everything and build the lanes; on any failure, close what was opened and raise."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        settings = self.settings
        if settings.health.enabled:
            self.health = start_health_server(settings, live=self.live, ready=self.ready,
                                              metrics=self.metrics.exposition)
        settings.require_secrets(self.destinations)
        prepared = prepare(settings)
        check_kafka(settings)
        self.delivery.start()
        base = settings.kafka_client_config()
        mapping_files = ", ".join(str(stream.mapping_file) for stream in prepared.streams)
        for name in self.destinations:
            if not prepared.has_rules_for(name):
                log.warning("destination_has_no_rules", destination=name, mapping=mapping_files)
                continue
            sink = build_sink(settings, name, on_retry=self.metrics.on_retry(name))
            self._sinks.append(sink)
            if isinstance(sink, FreshsuccessSink) and settings.freshsuccess.ping_at_start:
                ping_freshsuccess(sink, self.delivery)
            self.lanes.append(self._lane(name, sink, prepared, base))
        if not self.lanes:
            raise ConfigError("no destination has any mapping rule: nothing to do", file=mapping_files)
        self.started = True

    def live(self) -> tuple[bool, str]:
        """Every lane's poll loop iterated recently (a stuck loop is worth a restart; a Kafka outage is not)."""
        now = time.monotonic()
        stalled = [lane.name for lane in self.lanes
                   if now - lane.last_step_at > self.settings.health.liveness_stall_s and not lane.fatal]
        if stalled:
            return False, f"poll loop stalled: {', '.join(stalled)}"
        return True, "poll loops iterating"

    def ready(self) -> tuple[bool, str]:
        if not self.started:
            return False, "starting"
        failed = [f"{lane.name}: {lane.fatal}" for lane in self.lanes if lane.fatal]
        if failed:
            return False, "; ".join(failed)
        return True, ", ".join(f"{lane.name} {len(lane.tracker.owned())} partitions" for lane in self.lanes)

    def _lane(self, name: str, sink: Sink, prepared: Prepared, base: dict[str, Any]) -> Lane:
        settings = self.settings
        group = settings.group_for(name)
        config = consumer_config(base, settings.kafka, group_id=group)
        topics = settings.topics()

        def source_factory(callbacks: SourceCallbacks) -> KafkaSource:
            return KafkaSource(config, topics, callbacks, destination=name)

        judge = judges_for(settings, name, prepared, check_registry)
        dead_letters = DeadLetterProducer(settings.kafka.dead_letter_topic, base, on_parked=self.on_parked)
        try:
            lane = Lane(sink=sink, source_factory=source_factory, judge=judge,
                        dead_letters=dead_letters, delivery=self.delivery,
                        settings=lane_settings(settings, ordered=settings.destination(name).ordered),
                        metrics=self.metrics)
        except BaseException:
            dead_letters.close()
            raise
        log.info("lane_started", destination=name, group=group, topics=list(topics))
        self.metrics.add_lane(lane)
        return lane

    def run(self, *, shutdown_timeout_s: float = 30.0) -> int:
        """Run every lane until ``stop_event`` is set or one of them fails; returns the exit code."""
        for lane in self.lanes:
            thread = threading.Thread(target=self._run_lane, args=(lane, shutdown_timeout_s),
                                      name=f"lane-{lane.name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        while any(t.is_alive() for t in self._threads):
            if any(lane.fatal for lane in self.lanes):
                self.stop_event.set()
            for thread in self._threads:
                thread.join(0.1)
        self.close()
        failures = [f"{lane.name}: {lane.fatal}" for lane in self.lanes if lane.fatal]
        for failure in failures:
            log.error("service_stopped_on_error", reason=failure)
        return EXIT_FATAL if failures else EXIT_OK

    def _run_lane(self, lane: Lane, shutdown_timeout_s: float) -> None:
        name_os_thread()
        try:
            lane.run(self.stop_event, shutdown_timeout_s=shutdown_timeout_s)
        except Exception as exc:  # a bug: stop everything and say so, rather than die silently in a thread
            log.exception("lane_crashed", destination=lane.name)
            lane.fatal = lane.fatal or f"internal error: {type(exc).__name__}: {exc}"
            self.stop_event.set()

    def close(self) -> None:
        """Release everything, once: lanes that never ran are closed here (a failed start); the others closed
        themselves when they stopped."""
        for lane in self.lanes:
            if not any(t.name == f"lane-{lane.name}" for t in self._threads):
                lane.close()
        if self.health is not None:
            self.health.stop()
            self.health = None
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                self.delivery.call(sink.aclose, timeout_s=5)
            except Exception as exc:  # closing is best effort at exit
                log.warning("destination_close_failed", destination=sink.name, error=str(exc))
        self.delivery.stop()
