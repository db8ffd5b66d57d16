"""Operator tools behind ``usage-consumer map``, ``dlq inspect|replay``, ``ping`` and ``status`` (docs/runbook.md).

- :mod:`~consumer.tools.dryrun`: what each sample event would become, request by request; nothing is sent.
- :mod:`~consumer.tools.samples`: sample events from JSON lines, Avro container files or the topic.
- :mod:`~consumer.tools.dlq`: list dead letters; replay them to their source topic or to the destinations.
- :mod:`~consumer.tools.ping`: the broker, the schema registry and each destination, with the configured keys.
- :mod:`~consumer.tools.status`: per destination group, offsets, lag in messages and seconds, members, dead letters.
- :mod:`~consumer.kafka.reader`, :mod:`~consumer.tools.common`, :mod:`~consumer.tools.progress`: shared parts.

Nothing here is on the consumer's hot path; every tool reuses the consumer's own decoder, compiled mapping,
sinks and dead-letter producer, so what a tool shows or does is what the consumer would do.
"""
