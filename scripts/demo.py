#!/usr/bin/env python3
"""``make demo``: the whole job end to end on local parts, with several streams, then a summary per stream.

Starts a real Kafka broker, a schema registry emulator and both destination emulators; produces realistic
records to three topics and runs one ``usage-consumer run`` process (both destinations) over four stream
entries (examples/streams/ has their schemas, mappings and the matching ``streams:`` configuration):

- ``product``: UsageEvents with the packaged schema and mapping (every event type across several partitions),
  plus a few malformed records and events missing a field Freshsuccess requires, all to be dead-lettered;
- ``web``: ``com.example.web.PageView`` records (a nested record, an enum, a map) on a topic of their own;
- ``shop-views`` and ``shop-purchases``: one topic carrying two record types (``com.example.shop.ProductViewed``
  and ``com.example.shop.Purchase``, each under its own ``<topic>-<record full name>`` subject), each taken by
  its own stream entry (``record_names``); a few records of a third type no stream lists
  (``com.example.shop.Refund``) must be dead-lettered ``no_stream``.

It waits until both destination groups have committed to the end of every topic, stops the consumer with
SIGTERM, and prints per stream what was produced, delivered to each destination (counted at the emulators and
traced back to the stream: Freshpaint events by ``$insert_id``, which is each record's ``event_id``;
Freshsuccess actions, which carry no id, by action, accountId, userId and createdAt), dead-lettered (by
reason) and committed. Exits non-zero if any valid event of any stream is missing at a destination it should
reach, anything unexpected arrived or was dead-lettered, or an offset was left behind.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, TopicPartition

from consumer.decoding.encoding import encode_confluent
from consumer.decoding.schemas import load_schema, parse
from consumer.testing.devstack import DevStack, retrying
from consumer.testing.eventgen import (
    PAGE_VIEW_NAME,
    PRODUCT_VIEWED_NAME,
    PURCHASE_NAME,
    make_event,
    malformed_values,
    page_views,
    realistic_events,
    shop_events,
)
from consumer.testing.local_kafka import die_with_parent

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "streams"
DESTINATIONS = ("freshsuccess", "freshpaint")
SHORT = {"freshsuccess": "FS", "freshpaint": "FP"}
FS_ACTIONS = {"feature_used": "feature", "module_ended": "moduleEnd", "session_synced": "sessionSync",
              "user_identified": "identifyUser", "account_identified": "identifyAccount"}
"""The packaged mapping's Freshsuccess action per UsageEvent type (page_viewed has none)."""
REFUND_NAME = "com.example.shop.Refund"
REFUND: dict[str, Any] = {
    "type": "record", "name": "Refund", "namespace": "com.example.shop",
    "doc": "Written to the shop topic too, but no stream lists it: dead-lettered no_stream.",
    "fields": [{"name": "event_id", "type": "string"}, {"name": "order_id", "type": "string"},
               {"name": "amount_cents", "type": "long"}],
}
OTHER_TYPES = "(no stream)"
"""The summary's row for records of a shared topic that no stream takes."""

FsKey = tuple[str, str, str, int]
"""A Freshsuccess action as the demo recognises it: (action, accountId, userId, createdAt)."""
Records = list[tuple[bytes | None, bytes]]


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


@dataclass
class Plan:
    """What one stream (a summary row) was given, and what each destination and the dead-letter topic should get."""

    name: str
    topic: str
    describe: str
    records: int = 0
    fs_expected: Counter[FsKey] = field(default_factory=Counter)
    fs_skipped: int = 0
    fp_expected: set[str] = field(default_factory=set)
    letters_expected: Counter[tuple[str, str]] = field(default_factory=Counter)
    # observed
    fs_delivered: int = 0
    fp_delivered: int = 0
    letters: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def fs_missing(self) -> int:
        return sum(self.fs_expected.values()) - self.fs_delivered

    @property
    def fp_missing(self) -> int:
        return len(self.fp_expected) - self.fp_delivered


def fs_key(action: str, account: str, user: str, created_at: int) -> FsKey:
    return (action, account, user, created_at)


# ------------------------------------------------------------------------------------------------ producing


def product_stream(stack: DevStack, topic: str, count: int) -> tuple[Plan, Records]:
    """UsageEvents with malformed records and events lacking a Freshsuccess-required field mixed in."""
    schema_id = stack.register(topic)
    events = list(realistic_events(count, seed=2024))
    rng = random.Random(99)
    incomplete = []
    for i in range(5):  # a feature_used event without its feature: Freshsuccess requires it
        event = make_event(rng, count + i, "feature_used")
        event["feature"] = None
        incomplete.append(event)
    values: Records = [(e["account_id"].encode(), stack.encode(schema_id, e)) for e in events + incomplete]
    bad = malformed_values(schema_id, values[0][1]) * 2
    plan = Plan("product", topic, "UsageEvent, packaged schema and mapping")
    for i, (reason, value) in enumerate(bad):
        values.insert(rng.randrange(len(values)), (f"bad-{i}".encode(), value))
        for destination in DESTINATIONS:
            plan.letters_expected[(destination, reason)] += 1
    plan.letters_expected[("freshsuccess", "missing_required_field")] += len(incomplete)
    for event in events:
        action = FS_ACTIONS.get(event["event_type"])
        if action is None:
            plan.fs_skipped += 1
        else:
            plan.fs_expected[fs_key(action, event["account_id"], event["user_id"], event["occurred_at"])] += 1
    plan.fp_expected = {e["event_id"] for e in events + incomplete}
    plan.records = len(values)
    return plan, values


def web_stream(stack: DevStack, topic: str, count: int) -> tuple[Plan, Records]:
    """Page views on a topic of their own (subject ``<topic>-value``)."""
    schema = load_schema(EXAMPLES / "page_view.avsc")
    schema_id, parsed = stack.registry.register(f"{topic}-value", schema), parse(schema)
    plan = Plan("web", topic, f"{PAGE_VIEW_NAME}, web.yaml")
    values: Records = []
    for view in page_views(count, seed=2025):
        visitor = view["visitor"]
        values.append((visitor["anonymous_id"].encode(), encode_confluent(schema_id, view, parsed)))
        plan.fp_expected.add(view["event_id"])
        if visitor["user_id"] is not None and visitor["account_id"] is not None:  # signed in: time in a module
            plan.fs_expected[fs_key("moduleEnd", visitor["account_id"], visitor["user_id"], view["occurred_at"])] += 1
        else:
            plan.fs_skipped += 1
    plan.records = len(values)
    return plan, values


def shop_streams(stack: DevStack, topic: str, count: int) -> tuple[list[Plan], Records, dict[int, str]]:
    """Product views and purchases on one topic, each type under its own ``<topic>-<full name>`` subject, and a few
    refunds that no stream lists. Returns the plans (views, purchases, other types), the records and the schema
    id of each record type (to trace a dead letter back to its stream)."""
    schemas = {PRODUCT_VIEWED_NAME: load_schema(EXAMPLES / "product_viewed.avsc"),
               PURCHASE_NAME: load_schema(EXAMPLES / "purchase.avsc"), REFUND_NAME: REFUND}
    ids = {name: stack.registry.register(f"{topic}-{name}", schema) for name, schema in schemas.items()}
    parsed = {name: parse(schema) for name, schema in schemas.items()}
    views = Plan("shop-views", topic, f"{PRODUCT_VIEWED_NAME}, product_viewed.yaml")
    purchases = Plan("shop-purchases", topic, f"{PURCHASE_NAME}, purchase.yaml")
    others = Plan(OTHER_TYPES, topic, f"{REFUND_NAME}: no stream lists it")
    values: Records = []
    for name, record in shop_events(count, seed=2026):
        values.append((record["account_id"].encode(), encode_confluent(ids[name], record, parsed[name])))
        plan = views if name == PRODUCT_VIEWED_NAME else purchases
        plan.records += 1
        plan.fp_expected.add(record["event_id"])
        if name == PURCHASE_NAME:
            plan.fs_expected[fs_key("feature", record["account_id"], record["user_id"], record["occurred_at"])] += 1
        else:
            plan.fs_skipped += 1
    rng = random.Random(27)
    for i in range(4):
        refund = {"event_id": f"refund-{i}", "order_id": f"ord-{rng.randrange(count):06d}",
                  "amount_cents": rng.randrange(1_000, 50_000)}
        values.insert(rng.randrange(len(values)), (b"refunds", encode_confluent(ids[REFUND_NAME], refund,
                                                                                parsed[REFUND_NAME])))
        others.records += 1
        for destination in DESTINATIONS:
            others.letters_expected[(destination, "no_stream")] += 1
    return [views, purchases, others], values, {schema_id: name for name, schema_id in ids.items()}


def streams_config(topics: dict[str, str]) -> list[dict[str, Any]]:
    """The ``streams:`` section of examples/streams/config.yaml (the documented example is what runs), with each
    placeholder topic replaced by the demo's (``topics``) and the paths made absolute."""
    document = yaml.safe_load((EXAMPLES / "config.yaml").read_text())
    streams: list[dict[str, Any]] = document["streams"]
    for stream in streams:
        stream["topics"] = [topics[topic] for topic in stream["topics"]]
        for key in ("reader_schema", "mapping"):
            if key in stream:
                stream[key] = str(EXAMPLES / stream[key])
    return streams


# ---------------------------------------------------------------------------------------------- observing

Offsets = dict[str, dict[int, int]]
"""Per topic, per partition: an offset."""


def committed(stack: DevStack, group: str, ends: Offsets) -> Offsets:
    """The group's committed next offsets on every topic, read with one consumer of the group that never
    subscribes (see ``DevStack.committed``)."""
    reader = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        wanted = [TopicPartition(topic, p) for topic, end in ends.items() for p in end]
        result = retrying(lambda: reader.committed(wanted, timeout=30))
    finally:
        reader.close()
    found: Offsets = {topic: {} for topic in ends}
    for tp in result:
        if tp.offset >= 0:
            found[tp.topic][tp.partition] = tp.offset
    return found


def wait_drained(stack: DevStack, groups: list[str], ends: Offsets, process: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    total = sum(sum(end.values()) for end in ends.values())
    while time.monotonic() < deadline:
        if process.poll() is not None:
            say(f"the consumer exited early with code {process.returncode}")
            return False
        now = {g: committed(stack, g, ends) for g in groups}
        if all(offsets == ends for offsets in now.values()):
            return True
        if time.monotonic() - last_report > 3:
            last_report = time.monotonic()
            progress = ", ".join(f"{g.rsplit('.', 1)[-1]} {sum(sum(o.values()) for o in now[g].values())}/{total}"
                                 for g in groups)
            say(f"committed so far (all topics): {progress}")
        time.sleep(0.5)
    return False


def attribute(plans: list[Plan], fs_events: Iterable[dict[str, Any]], fp_events: Iterable[dict[str, Any]],
              letters: Iterable[Any], letter_plan: Callable[[Any], Plan | None]) -> tuple[int, int, int]:
    """Count each delivered event and dead letter against its stream's plan; return what matched no plan
    (Freshsuccess actions, Freshpaint events, dead letters)."""
    by_id = {event_id: plan for plan in plans for event_id in plan.fp_expected}
    fp_stray = 0
    for event in fp_events:
        plan = by_id.get(event["properties"].get("$insert_id"))
        if plan is None:
            fp_stray += 1
        else:
            plan.fp_delivered += 1
    remaining = {plan.name: Counter(plan.fs_expected) for plan in plans}
    fs_stray = 0
    for action in fs_events:
        key = fs_key(action["action"], action["accountId"], action["userId"], action["createdAt"])
        plan = next((p for p in plans if remaining[p.name][key] > 0), None)
        if plan is None:  # unknown, or more often than expected (a duplicate)
            fs_stray += 1
        else:
            remaining[plan.name][key] -= 1
            plan.fs_delivered += 1
    letters_stray = 0
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers()}
        owner = letter_plan(letter)
        if owner is None:
            letters_stray += 1
        else:
            owner.letters[(headers["dlq.destination"], headers["dlq.reason"])] += 1
    return fs_stray, fp_stray, letters_stray


def letter_tracer(plans: list[Plan], streams: list[dict[str, Any]],
                  record_name_of: dict[int, str]) -> Callable[[Any], Plan | None]:
    """A dead letter's stream: its source topic's, or on a shared topic its writer schema's (else the
    topic's no-stream row)."""
    by_topic: dict[str, list[Plan]] = {}
    for plan in plans:
        by_topic.setdefault(plan.topic, []).append(plan)
    by_record = {name: stream["name"] for stream in streams for name in stream.get("record_names", ())}

    def trace(letter: Any) -> Plan | None:
        headers = {k: v.decode() for k, v in letter.headers()}
        candidates = by_topic.get(headers.get("dlq.source_topic", ""), [])
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        value = letter.value() or b""
        schema_id = struct.unpack(">I", value[1:5])[0] if len(value) >= 5 and value[0] == 0 else None
        wanted = by_record.get(record_name_of.get(schema_id, "") if schema_id is not None else "", OTHER_TYPES)
        return next((p for p in candidates if p.name == wanted), None)

    return trace


# ---------------------------------------------------------------------------------------------- reporting


def letters_text(letters: Counter[tuple[str, str]]) -> str:
    if not letters:
        return "none"
    return ", ".join(f"{SHORT[d]} {reason} {n}" for (d, reason), n in sorted(letters.items()))


def print_summary(plans: list[Plan], ends: Offsets, final: dict[str, Offsets], groups: list[str],
                  stats: dict[str, dict[str, int]], strays: tuple[int, int, int], elapsed_s: float) -> None:
    width = 100
    rule = " " + "-" * (width - 1)
    print()
    print("=" * width)
    print(f" usage-consumer demo summary: {len(plans) - 1} stream entries on {len(ends)} topics, one consumer "
          f"process ({elapsed_s:.1f}s)")
    print("=" * width)
    print(f" {'stream':<15} {'topic':<22} record type, mapping")
    for plan in plans:
        print(f" {plan.name:<15} {plan.topic:<22} {plan.describe}")
    print()
    print(f" {'stream':<15} {'produced':>8}   {'Freshsuccess':>12} {'skipped':>8}   {'Freshpaint':>12}   "
          f"{'dead-lettered FS':>16} {'FP':>5}")
    print(rule)
    for plan in plans:
        fs = f"{plan.fs_delivered}/{sum(plan.fs_expected.values())}"
        fp = f"{plan.fp_delivered}/{len(plan.fp_expected)}"
        dead = [sum(n for (d, _), n in plan.letters.items() if d == destination) for destination in DESTINATIONS]
        print(f" {plan.name:<15} {plan.records:>8}   {fs:>12} {plan.fs_skipped:>8}   {fp:>12}   "
              f"{dead[0]:>16} {dead[1]:>5}")
    print(rule)
    total_dead = [sum(n for p in plans for (d, _), n in p.letters.items() if d == destination)
                  for destination in DESTINATIONS]
    print(f" {'total':<15} {sum(p.records for p in plans):>8}   {sum(p.fs_delivered for p in plans):>12} "
          f"{sum(p.fs_skipped for p in plans):>8}   {sum(p.fp_delivered for p in plans):>12}   "
          f"{total_dead[0]:>16} {total_dead[1]:>5}")
    print("   Freshsuccess, Freshpaint: delivered/expected, counted at the emulators and traced back to the stream")
    print("     (Freshpaint events by $insert_id = the record's event_id; Freshsuccess actions by action, accountId,")
    print("     userId, createdAt). skipped: valid events that no Freshsuccess rule selects (committed past).")
    fs_stats, fp_stats = stats["freshsuccess"], stats["freshpaint"]
    print(f"   Freshsuccess API: {fs_stats['accepted']} accepted in {fs_stats['requests']} requests, "
          f"{fs_stats['dropped']} dropped as invalid.")
    print(f"   Freshpaint API: {fp_stats['accepted']} accepted in {fp_stats['requests']} requests, "
          f"{fp_stats['duplicates']} duplicates removed.")
    fs_stray, fp_stray, letters_stray = strays
    if fs_stray or fp_stray or letters_stray:
        print(f"   of no stream: {fs_stray} Freshsuccess actions, {fp_stray} Freshpaint events, {letters_stray} "
              "dead letters")
    print()
    reasons = sorted({(plan.name, reason) for plan in plans for (_, reason) in plan.letters},
                     key=lambda item: ([p.name for p in plans].index(item[0]), item[1]))
    print(f" {'dead letters':<15} {'reason':<24} {'freshsuccess':>12} {'freshpaint':>12}")
    by_name = {plan.name: plan for plan in plans}
    for name, reason in reasons:
        counts = [by_name[name].letters[(d, reason)] for d in DESTINATIONS]
        print(f" {name:<15} {reason:<24} {counts[0]:>12} {counts[1]:>12}")
    if not reasons:
        print("   none")
    print()
    print(f" {'committed offsets':<22} {'end':>6}   " + "   ".join(f"{g:>23}" for g in groups))
    for topic, end in ends.items():
        cells = []
        for group in groups:
            done = final[group][topic]
            behind = sum(1 for p, offset in end.items() if done.get(p, 0) != offset)
            state = f"{behind} of {len(end)} behind" if behind else f"all {len(end)} at end"
            cells.append(f"{sum(done.values())} ({state})")
        print(f" {topic:<22} {sum(end.values()):>6}   " + "   ".join(f"{c:>23}" for c in cells))
    print("=" * width)


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="UsageEvents of the product stream")
    parser.add_argument("--web-events", type=int, default=3000, help="page views of the web stream")
    parser.add_argument("--shop-events", type=int, default=3000, help="product views and purchases of the shop topic")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--timeout-s", type=float, default=240)
    args = parser.parse_args(argv)
    started = time.monotonic()

    say("starting a local Kafka broker, a schema registry and the Freshsuccess/Freshpaint emulators ...")
    with DevStack(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")) as stack:
        say(f"broker {stack.bootstrap}; registry {stack.registry.url}; freshsuccess "
            f"{stack.emulators.freshsuccess_url}; freshpaint {stack.emulators.freshpaint_url}")
        product_topic, dlq = stack.topics(partitions=args.partitions, prefix="usage-demo")
        suffix = product_topic.rsplit("-", 1)[-1]
        web_topic = stack.create_topic(f"web-demo-{suffix}", args.partitions)
        shop_topic = stack.create_topic(f"shop-demo-{suffix}", args.partitions)

        product, product_records = product_stream(stack, product_topic, args.events)
        web, web_records = web_stream(stack, web_topic, args.web_events)
        shop_plans, shop_records, record_name_of = shop_streams(stack, shop_topic, args.shop_events)
        plans = [product, web, *shop_plans]
        for topic, records in ((product_topic, product_records), (web_topic, web_records),
                               (shop_topic, shop_records)):
            owners = [p for p in plans if p.topic == topic]
            say(f"producing {len(records)} records to {topic} ({args.partitions} partitions): "
                + ", ".join(f"{p.name} {p.records}" for p in owners))
            stack.produce(topic, records)
        ends = {topic: stack.end_offsets(topic) for topic in (product_topic, web_topic, shop_topic)}

        streams = streams_config({"usage-events": product_topic, "web-page-views": web_topic,
                                  "shop-events": shop_topic})
        if sorted(s["name"] for s in streams) != sorted(p.name for p in plans if p.name != OTHER_TYPES):
            raise SystemExit(f"{EXAMPLES / 'config.yaml'} names other streams than this demo produces for")
        config = stack.config_file(product_topic, dlq, group="usage-demo", logging={"format": "json"},
                                   streams=streams)
        env = {**os.environ, **stack.secrets_env()}
        log_path = Path(config).with_suffix(".log")
        say(f"streams of {(EXAMPLES / 'config.yaml').relative_to(REPO)}: "
            + ", ".join(f"{s['name']} <- {s['topics'][0]}" for s in streams))
        say(f"running: usage-consumer run --config {config}  (logs: {log_path})")
        groups = [f"usage-demo.{d}" for d in DESTINATIONS]
        with log_path.open("w") as log_file:
            process = subprocess.Popen([sys.executable, "-m", "consumer.cli", "run", "--config", str(config)],
                                       env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                                       preexec_fn=die_with_parent)
            try:
                drained = wait_drained(stack, groups, ends, process, args.timeout_s)
            finally:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                code = process.wait(timeout=60)
        say(f"consumer stopped with exit code {code}")

        letters = stack.read_all(dlq)
        strays = attribute(plans, stack.emulators.freshsuccess.events(), stack.emulators.freshpaint.events(),
                           letters, letter_tracer(plans, streams, record_name_of))
        stats = {"freshsuccess": stack.emulators.freshsuccess.stats(),
                 "freshpaint": stack.emulators.freshpaint.stats()}
        final = {g: committed(stack, g, ends) for g in groups}
        print_summary(plans, ends, final, groups, stats, strays, time.monotonic() - started)

        problems = []
        if not drained:
            problems.append("the topics were not drained in time")
        for plan in plans:
            if plan.fs_missing:
                problems.append(f"{plan.name}: {plan.fs_missing} of {sum(plan.fs_expected.values())} valid events "
                                "missing at Freshsuccess")
            if plan.fp_missing:
                problems.append(f"{plan.name}: {plan.fp_missing} of {len(plan.fp_expected)} valid events missing "
                                "at Freshpaint")
            if plan.letters != plan.letters_expected:
                problems.append(f"{plan.name}: dead letters {letters_text(plan.letters)}; expected "
                                f"{letters_text(plan.letters_expected)}")
        fs_stray, fp_stray, letters_stray = strays
        if fs_stray or fp_stray:
            problems.append(f"{fs_stray} Freshsuccess actions and {fp_stray} Freshpaint events match no produced "
                            "event (or arrived more often than produced)")
        if letters_stray:
            problems.append(f"{letters_stray} dead letters come from no demo topic")
        if stats["freshsuccess"]["dropped"]:
            problems.append(f"Freshsuccess dropped {stats['freshsuccess']['dropped']} invalid events")
        for group in groups:
            for topic, end in ends.items():
                if final[group][topic] != end:
                    problems.append(f"{group} did not commit {topic} to its end offsets")
        if code != 0:
            problems.append(f"the consumer exited with {code}")
        if problems:
            for problem in problems:
                print(f" PROBLEM: {problem}")
            print(f" consumer log: {log_path}")
            return 1
        print(" every valid event of every stream delivered, every bad record dead-lettered as expected, all offsets "
              "committed.")
        return 0


if __name__ == "__main__":
    sys.exit(main())
