#!/usr/bin/env python3
"""Entry point of the local Kafka broker (``scripts/kafka``, ``make kafka-jars``).

The broker itself: consumer/testing/local_kafka.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # also without the venv: the broker is stdlib only

from consumer.testing.local_kafka import main

if __name__ == "__main__":
    sys.exit(main())
