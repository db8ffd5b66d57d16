"""Members join and leave one consumer group under load: no event is lost at either destination.

Two members start; a third joins; one leaves with SIGTERM; another joins; a second leaves. Membership is
read from the broker (each process names itself with ``client.id``) and every step waits until both lanes'
groups are stable with the expected members each holding partitions.
"""

from __future__ import annotations

from typing import Any

from consumer.testing.faultkit import DESTINATIONS

RATE_PER_S = 400
PARTITIONS = 6


def test_members_joining_and_leaving_under_load_lose_nothing(
        make_scenario: Any, kafka_admin: Any, seed: int, figures: Any) -> None:
    scenario = make_scenario("group", partitions=PARTITIONS)
    producer = scenario.start_producer(rate_per_s=RATE_PER_S, seed=seed)
    members = {name: scenario.start_consumer(name) for name in ("member-a", "member-b")}
    steps = [scenario.wait_members(kafka_admin, {"member-a", "member-b"}, partitions=PARTITIONS)]
    scenario.wait_progress(300, timeout_s=90)
    exits = {}

    def join(name: str) -> None:
        members[name] = scenario.start_consumer(name)

    def leave(name: str) -> None:
        code, took_s = members.pop(name).terminate()
        assert code == 0
        exits[name] = round(took_s, 2)

    for action, name in (("join", "member-c"), ("leave", "member-a"), ("join", "member-d"), ("leave", "member-b")):
        if action == "join":
            join(name)
        else:
            leave(name)
        steps.append(scenario.wait_members(kafka_admin, set(members), partitions=PARTITIONS))
        scenario.wait_progress(300, timeout_s=90)
        print(f"{action} {name}: members now {steps[-1]}")

    scenario.drain(producer)
    for name in list(members):
        leave(name)

    result = scenario.figures(membership_changes=4, exit_s=exits,
                              assignments=[{d: s[d] for d in DESTINATIONS} for s in steps])
    figures.record(result)
    for destination in DESTINATIONS:
        assert result[destination]["lost"] == 0, f"{destination} lost events in a rebalance: {result}"
        assert result[destination]["unexpected"] == 0, result
    assert result["freshpaint"]["duplicates_after_dedup"] == 0, result
