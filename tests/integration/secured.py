"""The secured local broker that the Kafka security tests share (``secured_broker`` and ``pki`` in conftest):
one PKI, one SCRAM user, and the client settings for its SASL_SSL and mTLS listeners."""

from __future__ import annotations

from typing import Any

from consumer.testing.local_kafka import LocalKafka
from consumer.testing.testpki import MTLS_LISTENER, SASL_SSL_LISTENER, SCRAM_MECHANISM, TestPki

SCRAM_USER = "usage-consumer"
SCRAM_PASSWORD = "scram-pw-4d7e1b"
KEY_PASSWORD = "client-key-pw-2c5f"
"""The password of the PKI's client keys."""


def scram_settings(broker: LocalKafka, pki: TestPki) -> dict[str, Any]:
    """``kafka:`` settings for the SASL_SSL listener as ``SCRAM_USER`` (the password from the environment)."""
    return {"bootstrap_servers": broker.listener_bootstrap(SASL_SSL_LISTENER), "security_protocol": "SASL_SSL",
            "sasl_mechanism": SCRAM_MECHANISM, "sasl_username": SCRAM_USER, "ssl_ca_location": str(pki.ca.cert)}


def mtls_settings(broker: LocalKafka, pki: TestPki, *, client: str = "trusted") -> dict[str, Any]:
    """``kafka:`` settings for the mTLS listener with the trusted (or the untrusted) client certificate."""
    issued = pki.client if client == "trusted" else pki.untrusted_client
    return {"bootstrap_servers": broker.listener_bootstrap(MTLS_LISTENER), "security_protocol": "SSL",
            "ssl_ca_location": str(pki.ca.cert), "ssl_certificate_location": str(issued.cert),
            "ssl_key_location": str(issued.key)}
