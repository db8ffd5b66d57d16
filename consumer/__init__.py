"""usage-consumer: Avro product-usage events from Kafka to Freshsuccess and Freshpaint.

The pipeline, top to bottom: source (Kafka) -> decoder (Avro framing and schemas) -> mapper (compiled
from the mapping file) -> batcher -> destination sinks -> offset tracker -> committer, plus the
dead-letter path.
"""

__version__ = "0.1.0"
