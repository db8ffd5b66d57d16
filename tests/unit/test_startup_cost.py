"""Start-up does not pay for what the configuration does not use (each of these cost ~50-130 ms of CPU)."""

from __future__ import annotations

import ssl
import subprocess
import sys

from consumer.sinks.base import tls_verify


def test_a_freshsuccess_only_service_does_not_import_the_freshpaint_client() -> None:
    """aiohttp (Freshpaint's HTTP client) is imported when a Freshpaint sink is built, not before."""
    probe = ("import sys, consumer.cli, consumer.app.service, consumer.app.build as build; "
             "assert 'aiohttp' not in sys.modules, 'imported at start-up'; "
             "build.sink_class('freshpaint'); assert 'aiohttp' in sys.modules")
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_only_https_urls_load_a_trust_store_and_a_given_context_wins() -> None:
    context = ssl.create_default_context()
    assert tls_verify("https://api.example.com") is True
    assert tls_verify("http://127.0.0.1:8080") is False  # no TLS at all on this URL
    assert tls_verify("https://api.example.com", context) is context
    assert tls_verify("http://127.0.0.1:8080", context) is context
