"""``usage-consumer map``: what the consumer would do with each sample event, without sending anything.

For every event and every destination the plan says what the lane's own verdict (:mod:`consumer.pipeline.verdict`)
decides: the destination is not running, the record is oversized, it does not decode, the mapping fails on
it or makes a value JSON cannot carry (each dead-lettered with the reason code the dead-letter headers would
carry), no rule selects it (skipped), or the exact requests that would carry its outputs: method, URL with
the keys masked, headers, and the body before compression (Freshsuccess: the NDJSON lines; Freshpaint: the
JSON object, ``"token": "***"``).

Freshsuccess batches many events into one POST; a plan shows the request as if the event were alone in
its batch (``Content-Length`` is the compressed size of that body).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from consumer.app.build import DESTINATIONS, build_sink, judge_for, judges_for
from consumer.app.startup import Prepared, PreparedStream, prepare
from consumer.config import Settings, is_topic_pattern
from consumer.decoding.schemas import parse
from consumer.errors import ConfigError, FatalError
from consumer.mapping import CompiledMapping
from consumer.pipeline.batcher import Batcher
from consumer.pipeline.verdict import PARK, SKIP, STOP, WAIT, Decides, Decision, Judge
from consumer.sinks.preview import Preview
from consumer.tools.common import check_once
from consumer.tools.samples import Sample, load_files, load_topic

Outcome = Literal["send", "skip", "dead_letter", "retry", "stop", "off"]


@dataclass(frozen=True)
class PlannedRequest(Preview):
    """One HTTP request as the sink would send it (:meth:`preview`), and the rules behind it."""

    rules: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "url": self.url, "headers": self.headers, "body": self.body,
                "rules": list(self.rules)}


@dataclass
class DestinationPlan:
    """What one destination's lane would do with the event."""

    destination: str
    outcome: Outcome
    reason: str | None = None
    """Dead-letter reason code (as in the ``dlq.reason`` header), or ``no_rule``/``disabled``/``no_rules``."""
    message: str = ""
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """``(rule, output)`` in emission order."""
    requests: list[PlannedRequest] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome}
        if self.reason is not None:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message
        if self.outputs:
            out["outputs"] = [{"rule": rule, "output": output} for rule, output in self.outputs]
        if self.requests:
            out["requests"] = [r.as_json() for r in self.requests]
        return out


@dataclass
class EventPlan:
    sample: Sample
    stream: str | None = None
    """The stream that read the event (None: it belongs to no stream)."""
    event_type: str | None = None
    event_id: str | None = None
    rules: list[str] = field(default_factory=list)
    """Every rule whose ``when:`` selects the event, in file order."""
    destinations: dict[str, DestinationPlan] = field(default_factory=dict)
    problem: str | None = None

    def as_json(self) -> dict[str, Any]:
        sample = self.sample
        out: dict[str, Any] = {"source": sample.label, "topic": sample.topic, "partition": sample.partition,
                               "offset": sample.offset, "stream": self.stream}
        if self.problem is not None:
            out["problem"] = self.problem
            return out
        out.update(event_type=self.event_type, event_id=self.event_id, rules=self.rules,
                   destinations={name: plan.as_json() for name, plan in self.destinations.items()})
        return out


class DryRun:
    """Plans samples against one configuration's streams; sends nothing.

    A file sample names the stream whose reader schema encoded it; a record read from Kafka goes through the
    lane's own routing (``routes``: each destination's verdict, :func:`~consumer.app.build.judges_for`), so the
    dry run and the lane pick the same stream for it.
    """

    def __init__(self, settings: Settings, prepared: Prepared, *, routes: Mapping[str, Decides] | None = None) -> None:
        self.settings = settings
        self.prepared = prepared
        self.routes = dict(routes or {})
        self._sinks = {name: build_sink(settings, name, for_preview=True) for name in DESTINATIONS}

    @classmethod
    def for_records(cls, settings: Settings, prepared: Prepared) -> DryRun:
        """A dry run for records read from Kafka, decoded as the lanes decode them (the registry asked once)."""
        return cls(settings, prepared, routes={name: judges_for(settings, name, prepared, check_once,
                                                                whole_records=True)
                                               for name in DESTINATIONS if prepared.has_rules_for(name)})

    def close(self) -> None:
        """Close the decoders' registry connections."""
        for route in self.routes.values():
            route.close()

    def plan(self, sample: Sample) -> EventPlan:
        plan = EventPlan(sample)
        if sample.problem is not None:
            plan.problem = sample.problem
            return plan
        for name in DESTINATIONS:
            if not self.settings.destination(name).enabled:
                plan.destinations[name] = DestinationPlan(name, "off", "disabled", f"{name}.enabled is false")
                continue
            judge = self._judge(name, sample)
            if isinstance(judge, Decision):  # no stream takes the record
                plan.destinations[name] = self._destination(name, judge, sample, None)
                continue
            stream = self.prepared.named(judge.stream)
            plan.stream = stream.name
            if name not in stream.mapping.functions:
                plan.destinations[name] = DestinationPlan(
                    name, "off", "no_rules", f"the mapping of stream {stream.name!r} has no {name} outputs, so the "
                    f"{name} lane skips its events" if self.settings.streams else
                    f"the mapping has no {name} outputs, so the {name} lane does not run")
                continue
            decision = judge.decide(sample.value, sample.topic, sample.partition, sample.offset,
                                    size_bytes=sample.size_bytes)
            record = decision.record
            if record is not None and not plan.rules and plan.event_type is None:
                plan.event_type = _text(record.get("event_type"))
                plan.event_id = _text(record.get("event_id"))
                plan.rules = stream.mapping.rules_matching(record, topic=sample.topic)
            plan.destinations[name] = self._destination(name, decision, sample, stream.mapping)
        return plan

    def _judge(self, name: str, sample: Sample) -> Judge | Decision:
        if sample.decoder is not None:
            stream = self.prepared.named(sample.stream) if sample.stream else self.prepared.only("a file sample")
            return judge_for(self.settings, name, sample.decoder, stream.mapping, stream=stream.name)
        route = self.routes.get(name)
        if route is None:
            raise FatalError("no decoder for a topic sample")  # a programming error, not a user's
        return route.route(sample.value, sample.topic)

    def _destination(self, name: str, decision: Decision, sample: Sample,
                     mapping: CompiledMapping | None) -> DestinationPlan:
        """The verdict as a plan; the rule behind each output is read back from the compiled rules."""
        if decision.kind == PARK:
            return DestinationPlan(name, "dead_letter", decision.reason, str(decision.error))
        if decision.kind == WAIT:
            return DestinationPlan(name, "retry", "transient", f"{decision.error} (the lane would retry, not "
                                   "dead-letter)")
        if decision.kind == STOP:
            return DestinationPlan(name, "stop", "fatal", f"{decision.error} (the lane would stop)")
        if decision.kind == SKIP:
            return DestinationPlan(name, "skip", "no_rule",
                                   f"no rule with {name} outputs selects this event (committed, nothing sent)")
        assert decision.record is not None
        assert mapping is not None
        rules = self._rules_behind(name, mapping, decision.record, sample)
        outputs = list(zip(rules, decision.outputs, strict=True))
        plan = DestinationPlan(name, "send", outputs=outputs)
        plan.requests = self._requests(name, outputs, decision, sample)
        return plan

    def _rules_behind(self, name: str, mapping: CompiledMapping, record: dict[str, Any], sample: Sample) -> list[str]:
        """The rule that made each of ``name``'s outputs, in emission order (only for labels: the verdict
        already decided; the compiled rules run again here to say which rule made what)."""
        return [rule for rule, _, _ in mapping.explain(record, sample.topic, sample.partition, sample.offset,
                                                        destination=name)]

    def _requests(self, name: str, outputs: list[tuple[str, dict[str, Any]]], decision: Decision,
                  sample: Sample) -> list[PlannedRequest]:
        """What the sink would send for this one event, each request labelled with the rules behind it."""
        sink = self._sinks[name]
        batcher = Batcher.unbounded(name, ndjson=sink.ndjson)
        batcher.add(decision, None, (sample.topic, sample.partition), sample.offset)
        batch = batcher.take()
        assert batch is not None
        previews = sink.preview(batch)
        rules = [rule for rule, _ in outputs]
        # NDJSON: one request carries every output; otherwise one request per output
        labels = [tuple(dict.fromkeys(rules))] if sink.ndjson else [(rule,) for rule in rules]
        return [PlannedRequest(p.method, p.url, p.headers, p.body, label)
                for p, label in zip(previews, labels, strict=True)]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# ------------------------------------------------------------------------------------------ rendering


def summary(plans: Iterable[EventPlan]) -> dict[str, Any]:
    """Counts per destination and outcome, outputs and requests, dead letters by reason, bad samples."""
    events = 0
    problems = 0
    per: dict[str, Counter[str]] = {name: Counter() for name in DESTINATIONS}
    for plan in plans:
        events += 1
        if plan.problem is not None:
            problems += 1
            continue
        for name, dest in plan.destinations.items():
            counts = per[name]
            counts[dest.outcome] += 1
            counts["outputs"] += len(dest.outputs)
            counts["requests"] += len(dest.requests)
            if dest.outcome == "dead_letter" and dest.reason:
                counts[f"dead_letter:{dest.reason}"] += 1
    return {"events": events, "bad_samples": problems,
            "destinations": {name: dict(counts) for name, counts in per.items() if counts}}


def render_json(plans: list[EventPlan]) -> str:
    document = {"events": [p.as_json() for p in plans], "summary": summary(plans)}
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"


_OUTCOME_TEXT = {"send": "to send", "skip": "skipped", "dead_letter": "dead-lettered", "retry": "retried",
                 "stop": "lane stops", "off": "not running"}


def render_text(plans: list[EventPlan], *, batch_note: bool = True) -> str:
    lines: list[str] = []
    for plan in plans:
        lines.extend(_render_event(plan))
        lines.append("")
    lines.append(_render_summary(summary(plans)))
    if batch_note and any(p.destinations.get("freshsuccess") and p.destinations["freshsuccess"].requests
                          for p in plans):
        lines.append("Freshsuccess requests are shown one per event; the consumer sends up to "
                     "batching.max_events events per POST.")
    return "\n".join(lines) + "\n"


def _render_event(plan: EventPlan) -> list[str]:
    sample = plan.sample
    head = f"== {sample.label}"
    if sample.label != f"{sample.topic}[{sample.partition}]@{sample.offset}":
        head += f" (as {sample.topic}[{sample.partition}]@{sample.offset})"
    if plan.stream is not None and plan.stream != "default":
        head += f" [stream {plan.stream}]"
    if plan.problem is not None:
        return [head, f"   not a usable sample: {plan.problem}"]
    if plan.event_type is not None:
        head += f": {plan.event_type}"
    if plan.event_id:
        head += f" event_id={plan.event_id}"
    lines = [head]
    if plan.event_type is not None or plan.rules:
        lines.append(f"   rules matched: {', '.join(plan.rules) if plan.rules else 'none'}")
    for name, dest in plan.destinations.items():
        if dest.outcome != "send":
            reason = f" [{dest.reason}]" if dest.reason else ""
            lines.append(f"   {name}: {_OUTCOME_TEXT[dest.outcome]}{reason}: {dest.message}")
            continue
        count = len(dest.outputs)
        lines.append(f"   {name}: {count} output{'s' if count != 1 else ''} to send "
                     f"in {len(dest.requests)} request{'s' if len(dest.requests) != 1 else ''}")
        for request in dest.requests:
            lines.append(f"     rule {', '.join(request.rules)}:")
            lines.append(f"       {request.method} {request.url}")
            lines.extend(f"       {key}: {value}" for key, value in request.headers.items())
            lines.extend(f"       | {line}" for line in request.body.splitlines())
    return lines


def _render_summary(counts: dict[str, Any]) -> str:
    parts = [f"{counts['events']} event{'s' if counts['events'] != 1 else ''}"]
    if counts["bad_samples"]:
        parts.append(f"{counts['bad_samples']} not usable")
    lines = ["summary: " + ", ".join(parts)]
    for name, per in counts["destinations"].items():
        outcomes = ", ".join(f"{per[o]} {_OUTCOME_TEXT[o]}" for o in _OUTCOME_TEXT if per.get(o))
        reasons = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in per.items() if k.startswith("dead_letter:"))
        line = f"  {name}: {outcomes}"
        if per.get("outputs"):
            line += f"; {per['outputs']} output(s) in {per['requests']} request(s)"
        if reasons:
            line += f"; dead letters by reason: {reasons}"
        lines.append(line)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the command


def run_map(settings: Settings, *, files: list[str], from_topic: int | None, partition: int | None,
            offset: int | None, as_json: bool, out: Any, topic: str | None = None, stream: str | None = None) -> int:
    """``usage-consumer map``: plan every sample and print the plans; 1 when a sample was not usable.

    File samples are read with the reader schema of ``stream``, or of the stream that reads ``topic`` (either
    is needed when there are several streams); records read from Kafka (``from_topic``) find their stream as
    the lanes do."""
    prepared = prepare(settings)
    samples: list[Sample] = []
    if files:
        chosen = _stream_for_files(settings, prepared, topic=topic, stream=stream)
        sample_topic = topic or next((t for t in chosen.topics if not is_topic_pattern(t)), None)
        if sample_topic is None:
            raise ConfigError(f"stream {chosen.name!r} reads only topic patterns: say which topic the samples "
                              "come from with --topic")
        samples.extend(load_files(files, parse(chosen.reader_schema), framing=settings.decoding.framing,
                                  topic=sample_topic, partition=partition or 0, first_offset=offset or 0,
                                  stream=chosen.name))
    dry_run = DryRun.for_records(settings, prepared) if from_topic is not None else DryRun(settings, prepared)
    try:
        if from_topic is not None:
            samples.extend(load_topic(settings, from_topic, partition=partition, offset=offset, topic=topic,
                                      group_id=f"{settings.kafka.group_id}.map-dry-run"))
        plans = [dry_run.plan(sample) for sample in samples]
    finally:
        dry_run.close()
    out.write(render_json(plans) if as_json else render_text(plans))
    return 1 if any(p.problem is not None for p in plans) else 0


def _stream_for_files(settings: Settings, prepared: Prepared, *, topic: str | None, stream: str | None,
                      ) -> PreparedStream:
    """The stream whose schema file samples are written in: named, found by topic, or the only one."""
    names = ", ".join(s.name for s in prepared.streams)
    if stream is not None:
        chosen = prepared.named(stream)
        if topic is not None and chosen.config not in settings.streams_for_topic(topic):
            raise ConfigError(f"topic {topic!r} is not a topic of stream {stream!r}")
        return chosen
    if topic is not None:
        owners = settings.streams_for_topic(topic)
        if not owners:
            raise ConfigError(f"topic {topic!r} belongs to no stream (streams: {names})")
        if len(owners) > 1:
            raise ConfigError(f"topic {topic!r} carries the records of streams {', '.join(s.name for s in owners)}: "
                              "say which with --stream")
        return prepared.named(owners[0].name)
    if len(prepared.streams) > 1:
        raise ConfigError(f"this configuration has {len(prepared.streams)} streams ({names}): say which with "
                          "--topic or --stream")
    return prepared.streams[0]
