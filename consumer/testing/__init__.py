"""What the tests, the demo and the benchmarks run the product against, in one place.

- :mod:`~consumer.testing.local_kafka`: a real single-node Apache Kafka broker (KRaft) from Maven Central jars;
- :mod:`~consumer.testing.devstack`: that broker plus the schema registry and destination emulators, topics,
  producing, committed offsets;
- :mod:`~consumer.testing.faultkit`: consumer processes, a steady producer and delivery accounting for the
  fault-injection suite;
- :mod:`~consumer.testing.eventgen`: realistic (and malformed) usage events, deterministic per seed;
- :mod:`~consumer.testing.testpki`: a throw-away CA with broker, client and server certificates.

The destination emulators themselves live in :mod:`consumer.testing.emulators` (``usage-consumer emulate`` serves them).
Nothing here is imported by the service.
"""
