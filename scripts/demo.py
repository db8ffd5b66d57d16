#!/usr/bin/env python3
"""Placeholder demo: proves the local broker round trip until the pipeline lands (issue 3)."""

from __future__ import annotations

import sys

from local_kafka import LocalKafka


def main() -> int:
    with LocalKafka() as broker:
        print(f"local Kafka broker answered at {broker.bootstrap}")
    print("The end-to-end pipeline demo arrives with the pipeline issue; nothing else to show yet.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
