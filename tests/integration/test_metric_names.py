"""Every metric the chart's dashboard and alert rules name is exported by a running consumer.

A panel over a misspelt or never-exported metric shows "No data" and an alert over one never fires, silently; so the
chart's queries (rendered with the dashboard and, when the chart has it, the PrometheusRule enabled) are checked
against a real consumer's ``/metrics`` after it has done the work that gives each labelled family its samples:
deliveries to both destinations, a retry and a dead letter.
"""

from __future__ import annotations

import httpx

from consumer.testing.devstack import DevStack, RunningService
from consumer.testing.emulators.common import Fault
from consumer.testing.eventgen import malformed_values, realistic_events
from tests.chart.promql import describe_missing, missing_metrics, shipped_queries
from tests.helpers import wait_for

SAMPLED = ("usage_consumer_delivered_events_total{", "usage_consumer_retries_total{",
           "usage_consumer_dead_lettered_total{", "usage_consumer_batch_delivery_seconds_bucket{")
"""Families that only get samples from traffic: the scrape is taken once each has some."""


def test_every_metric_the_dashboard_and_the_alert_rules_name_is_exported(stack: DevStack) -> None:
    shipped = shipped_queries()
    for emulator in (stack.emulators.freshsuccess, stack.emulators.freshpaint):
        emulator.clear_faults()
        emulator.reset()
    topic, dlq = stack.topics(partitions=2)
    schema_id = stack.register(topic)
    events = list(realistic_events(40, seed=15))
    records: list[tuple[bytes | None, bytes]] = [(e["account_id"].encode(), stack.encode(schema_id, e))
                                                 for e in events]
    _reason, bad = malformed_values(schema_id, records[0][1])[0]
    records.append((b"bad", bad))  # one dead letter per destination
    stack.emulators.freshpaint.inject(Fault(status=503, count=1))  # one retry
    stack.produce(topic, records)
    settings = stack.settings(topic, dlq)
    end = stack.end_offsets(topic)

    with RunningService(settings) as running:
        health = running.service.health
        assert health is not None
        url = f"http://127.0.0.1:{health.port}/metrics"
        for destination in ("freshsuccess", "freshpaint"):
            group = settings.group_for(destination)

            def committed(group: str = group) -> bool:
                return stack.committed(group, topic) == end

            wait_for(committed, timeout_s=90, what=f"{group} to commit every record")

        def scraped() -> str:
            text = httpx.get(url, timeout=10).text
            return text if all(family in text for family in SAMPLED) else ""

        exposition = wait_for(scraped, timeout_s=30, what=f"samples of {', '.join(SAMPLED)} on /metrics")

    missing = missing_metrics(shipped.queries, exposition, defined=shipped.recorded)
    rules = "the dashboard and the PrometheusRule" if shipped.rules_rendered else "the dashboard (no rules yet)"
    assert not missing, f"checked {len(shipped.queries)} queries of {rules}\n{describe_missing(missing)}"
