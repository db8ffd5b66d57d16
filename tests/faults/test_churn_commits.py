"""Members join and leave under load; once the producer stops, every group commits to the end, promptly.

Issue 11, first acceptance point. Six partitions, a steady stream, and a churning group: members join, one
leaves with SIGTERM, two die by SIGKILL (no commit, no goodbye: the group notices after the session
timeout), new ones replace them. Then the producer stops, and within :data:`SETTLE_S` seconds, for both
destinations' groups:

* the committed offsets read by a separate client (not a member) equal the end offsets of every partition;
* the member that owns a partition now (the broker's view of the group) reports that same committed offset
  on its ``/metrics`` (``usage_consumer_committed_offset{destination,topic,partition}``): the metric is the
  broker-confirmed offset, not the offset of a commit merely queued, and a member reports every partition it
  owns, also one it took over already at its end (the committed offset it started from is broker-confirmed).
  What other members still report for partitions they no longer own is shown, not judged.

Every membership change meets the end of the stream: the producer pauses as the change's rebalance begins
(a joiner subscribes, a SIGTERM returned, a SIGKILLed member's session expires), so the last deliveries and
their commits fall inside a rebalance, and the contract above is checked after each change, within
:data:`SETTLE_S` of the pause; the last change (a join) stops the producer for good. A commit refused in a
rebalance and never retried leaves a partition short of its end with nothing more to come; the test then
fails with a table of end / committed / owner / what each member reports, per partition, and the figures list
each round's outcome. Nothing may be lost and nothing unexpected may arrive; Freshsuccess repeats (from the
SIGKILLs' uncommitted windows) are counted, not limited here (``test_kill.py`` limits them).
"""

from __future__ import annotations

import functools
import random
import time
from typing import Any

from consumer.testing.faultkit import (
    DESTINATIONS,
    ConsumerProcess,
    Scenario,
    delivery_report,
    group_members,
)
from consumer.testing.waiting import wait_until

PARTITIONS = 6
RATE_PER_S = 400
SETTLE_S = 30.0
"""From the producer's last acknowledged record to committed = end = /metrics for every partition."""
PROGRESS = 300
"""Events each destination must accept between two membership changes (the churn happens under load)."""
CHURN = (("join", "member-c"), ("sigterm", "member-a"), ("join", "member-d"), ("sigkill", "member-b"),
         ("join", "member-e"), ("sigkill", "member-c"))
LAST_JOIN = "member-f"
"""Joins as the stream ends for good (the producer stops as this member's rebalance begins)."""

Row = dict[str, Any]
"""One partition of one destination: end, committed (broker), owner, owner_reports, others_report."""


def commit_table(scenario: Scenario, admin: Any, members: dict[str, ConsumerProcess]) -> dict[str, list[Row]]:
    """Per destination and partition: the end offset, the broker's committed offset (read by a separate client),
    the owner now (the broker's view of the group), what the owner's ``/metrics`` reports and what the other
    running members report for it (stale figures of partitions they once owned, shown for diagnosis only)."""
    end = scenario.end_offsets()
    owners = scenario.owners(admin)
    reports: dict[str, dict[str, dict[int, int]] | str] = {}
    for name, process in members.items():
        try:
            reports[name] = process.committed_offsets(scenario.topic)
        except (OSError, AssertionError) as exc:  # a scrape that failed is a diagnosis, not a crash of the test
            reports[name] = f"scrape failed: {exc}"
    table: dict[str, list[Row]] = {}
    for destination in DESTINATIONS:
        committed = scenario.committed(destination)
        rows = []
        for partition in sorted(end):
            owner = owners[destination].get(partition)
            said = reports.get(owner, "not a running member") if owner is not None else "no owner"
            owner_reports = said.get(destination, {}).get(partition) if isinstance(said, dict) else said
            others = {name: r.get(destination, {}).get(partition) for name, r in reports.items()
                      if name != owner and isinstance(r, dict) and partition in r.get(destination, {})}
            rows.append({"partition": partition, "end": end[partition], "committed": committed.get(partition),
                         "owner": owner, "owner_reports": owner_reports, "others_report": others})
        table[destination] = rows
    return table


def row_ok(row: Row) -> bool:
    end = row["end"]
    if end == 0:  # never written: nothing to commit, nothing to report
        return row["committed"] in (None, 0) and row["owner_reports"] in (None, 0)
    return bool(row["committed"] == end and row["owner_reports"] == end)


def format_table(table: dict[str, list[Row]]) -> str:
    lines = []
    for destination, rows in table.items():
        lines.append(f"{destination}: partition  end  committed(broker)  owner  owner's /metrics  [others' /metrics]")
        for row in rows:
            mark = "ok " if row_ok(row) else "BAD"
            lines.append(f"  {mark} p{row['partition']}  end {row['end']}  committed {row['committed']}  "
                         f"owner {row['owner']}  reports {row['owner_reports']}  others {row['others_report']}")
    return "\n".join(lines)


def gaps(table: dict[str, list[Row]]) -> dict[str, dict[str, int]]:
    """Per destination: partition -> end minus committed, where the group has not committed to the end."""
    return {d: {f"p{r['partition']}": r["end"] - (r["committed"] or 0) for r in rows if r["committed"] != r["end"]}
            for d, rows in table.items()}


def group_states(scenario: Scenario, admin: Any) -> dict[str, tuple[str, dict[str, list[int]]]]:
    return {destination: group_members(admin, group) for destination, group in scenario.groups.items()}


def test_after_members_join_and_leave_every_group_commits_to_the_end_as_metrics_report(
        make_scenario: Any, kafka_admin: Any, seed: int, figures: Any) -> None:
    rng = random.Random(seed)
    scenario = make_scenario("churn-commits", partitions=PARTITIONS)
    producer = scenario.start_producer(rate_per_s=RATE_PER_S, seed=seed)
    members = {name: scenario.start_consumer(name) for name in ("member-a", "member-b")}
    steps = [scenario.wait_members(kafka_admin, set(members), partitions=PARTITIONS)]
    scenario.wait_progress(PROGRESS, timeout_s=90)
    exits: dict[str, float] = {}
    rounds: list[dict[str, Any]] = []
    failures: list[str] = []
    last: dict[str, Any] = {"table": {}, "groups": {}}

    def settled() -> bool:
        last["groups"] = group_states(scenario, kafka_admin)
        last["table"] = commit_table(scenario, kafka_admin, members)
        stable = all(state == "STABLE" and set(owned) == set(members) for state, owned in last["groups"].values())
        return stable and all(row_ok(row) for rows in last["table"].values() for row in rows)

    def check_round(label: str, stopped: float) -> None:
        """The stream has stopped (for now): within SETTLE_S the contract must hold; the outcome is recorded."""
        settled_s: float | None = None
        try:
            wait_until(settled, timeout_s=SETTLE_S, interval_s=0.5,
                       diagnose=lambda: f"groups {last['groups']}\n{format_table(last['table'])}",
                       what=f"{label}: every group's committed offsets (broker) = end offsets = the owner's /metrics")
            settled_s = round(time.monotonic() - stopped, 1)
        except AssertionError as exc:
            failures.append(str(exc))
        table = last["table"]
        steps.append({d: owned for d, (_, owned) in last["groups"].items()})
        rounds.append({"round": label, "settled_s": settled_s, "uncommitted": gaps(table),
                       "metrics_wrong": {d: [r["partition"] for r in rows if r["committed"] == r["end"]
                                             and not row_ok(r)] for d, rows in table.items()}})
        print(f"{label}: settled in {settled_s}s\n{format_table(table)}")

    def rebalance_begins(joiner: ConsumerProcess | None, before: set[str]) -> bool:
        """A joiner subscribed, or either group is rebalancing or already has other members than ``before``."""
        if joiner is not None and any(e.get("event") == "lane_started" for e in joiner.log_events()):
            return True
        return any(state != "STABLE" or set(owned) != before
                   for state, owned in group_states(scenario, kafka_admin).values())

    # Each membership change meets the end of the stream: the producer pauses as the change's rebalance
    # begins (a joiner subscribes, a leaver's SIGTERM returned, a SIGKILLed member's session expires), so the
    # last deliveries and their commits fall inside the rebalance. The last change ends the stream for good.
    churn = [*CHURN, ("join", LAST_JOIN)]
    for number, (action, name) in enumerate(churn, start=1):
        joiner, before = None, set(members)
        if action == "join":
            joiner = members[name] = scenario.start_consumer(name)
        elif action == "sigterm":
            leaving = members.pop(name)
            code, took_s = leaving.terminate()
            assert code == 0, leaving.log_tail()
            exits[name] = round(took_s, 2)
        else:
            time.sleep(rng.uniform(0.0, 0.5))  # a random kill moment (bounded, seeded), not a synchronisation
            process = members.pop(name)
            assert process.alive(), process.log_tail()
            process.kill()
        if action != "sigterm":  # a SIGTERM has left the group when terminate() returns
            wait_until(functools.partial(rebalance_begins, joiner, before), timeout_s=60, interval_s=0.05,
                       what=f"the rebalance after {action} {name}", diagnose=scenario.diagnose)
        final = number == len(churn)
        if final:
            producer.stop()  # returns once the broker acknowledged every record: the end offsets are final
        else:
            producer.pause()
        check_round(f"{action} {name}", time.monotonic())
        if not final:
            producer.resume()
            scenario.wait_progress(PROGRESS, timeout_s=90)

    expected = scenario.expected()
    reports = {d: delivery_report(scenario.emulators, expected, d) for d in DESTINATIONS}
    try:
        scenario.check_commits()  # no committed offset passed an undelivered event
    except AssertionError as exc:
        failures.append(str(exc))

    for name, process in dict(members).items():
        code, took_s = process.terminate()
        exits[name] = round(took_s, 2)
        if code != 0:
            failures.append(f"{name} exited {code} on SIGTERM\n{process.log_tail()}")
    after_sigterm = {d: sum(max(0, e - scenario.committed(d).get(p, 0)) for p, e in scenario.end_offsets().items())
                     for d in DESTINATIONS}

    figures.record(scenario.figures(
        membership_changes=len(churn), sigterms=sum(1 for a, _ in churn if a == "sigterm"),
        sigkills=sum(1 for a, _ in churn if a == "sigkill"), exit_s=exits, rounds=rounds,
        uncommitted_after_final_sigterm=after_sigterm,
        assignments=[{d: s[d] for d in DESTINATIONS} for s in steps]))
    for destination, report in reports.items():
        if report.lost:
            failures.append(f"{destination} lost {len(report.lost)}: {report.lost[:5]}")
        if report.unexpected:
            failures.append(f"{destination} received {report.unexpected} events never produced")
    if reports["freshpaint"].duplicates_after_dedup:
        failures.append(f"Freshpaint kept {reports['freshpaint'].duplicates_after_dedup} repeats after de-duplication")
    assert not failures, "\n\n".join(failures)
