"""A throw-away public-key infrastructure for tests: CAs, server and client certificates as PEM files.

The secured-broker tests, the destination TLS tests and anything else that needs TLS on loopback build
their certificates here, with the ``cryptography`` package (no openssl binary, no keytool, no JKS):

* :class:`TestCA` is a self-signed certificate authority that issues leaf certificates;
* :meth:`TestCA.issue` writes a leaf's certificate, its private key (PKCS#8, optionally encrypted) and a
  ``bundle`` (key + certificate + CA) in one file, which is what Kafka's PEM key store reads;
* :func:`make_test_pki` makes the usual set: a trusted CA with a server certificate for
  ``127.0.0.1``/``localhost`` and a client certificate, plus an *untrusted* CA with its own server and
  client certificates for the negative tests;
* :func:`secure_listener_properties` are the broker settings that serve SASL_SSL (SCRAM-SHA-512) and SSL
  with required client certificates (mTLS) from those files, and :func:`secured_local_kafka` is a
  ``LocalKafka`` (not yet started) with both listeners and SCRAM users.

Keys are EC P-256 (fast to generate, understood by Java, OpenSSL and Python's ``ssl``). Everything is
valid from an hour ago for a day: a test run never outlives it and a clock skew of minutes does no harm.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from consumer.testing.local_kafka import LocalKafka

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
VALIDITY = datetime.timedelta(days=1)
BACKDATE = datetime.timedelta(hours=1)

SASL_SSL_LISTENER = "SASL_SSL"
"""Listener name (and security protocol) of the SCRAM-SHA-512 over TLS listener."""
MTLS_LISTENER = "SSL"
"""Listener name (and security protocol) of the TLS listener that requires a client certificate."""
SCRAM_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class Issued:
    """One leaf certificate on disk."""

    name: str
    cert: Path
    """The leaf certificate alone (PEM)."""
    key: Path
    """Its private key, PKCS#8 PEM (encrypted when issued with ``key_password``)."""
    bundle: Path
    """Key, leaf and CA certificate in one PEM file: a Kafka PEM key store (``ssl.keystore.location``)."""
    key_password: str | None = None

    def __repr__(self) -> str:  # never show the key's password
        return f"Issued({self.name!r}, cert={str(self.cert)!r})"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey, password: str | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


class TestCA:
    """A self-signed CA whose certificate is written to ``<directory>/<slug>-ca.pem``.

    A CA certificate is also a self-signed certificate: serve with ``TestCA.issue(...)`` from a CA the
    client does not trust to test that verification refuses it.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, directory: Path, name: str = "usage-consumer test CA") -> None:
        self.directory = directory
        self.name = name
        self.slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        directory.mkdir(parents=True, exist_ok=True)
        self._key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{self.slug}-ca.pem"
        self.cert.write_bytes(_cert_pem(self.certificate))

    def __repr__(self) -> str:
        return f"TestCA({self.name!r}, cert={str(self.cert)!r})"

    def issue(self, name: str, *, hosts: Iterable[str] = (), server: bool = True, client: bool = False,
              key_password: str | None = None) -> Issued:
        """A leaf certificate for ``name``: ``hosts`` (IPs or DNS names) as subject alternative names,
        usable by a TLS server, a TLS client, or both. Files: ``<name>.pem``, ``<name>.key``,
        ``<name>-bundle.pem`` in this CA's directory."""
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=True, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False)
        )
        alt_names = _alt_names(hosts)
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        base = self.directory / name
        cert_path, key_path = base.with_suffix(".pem"), base.with_suffix(".key")
        bundle_path = self.directory / f"{name}-bundle.pem"
        key_pem = _key_pem(key, key_password)
        cert_path.write_bytes(_cert_pem(certificate))
        key_path.write_bytes(key_pem)
        bundle_path.write_bytes(key_pem + _cert_pem(certificate) + _cert_pem(self.certificate))
        for path in (key_path, bundle_path):
            path.chmod(0o600)
        return Issued(name, cert_path, key_path, bundle_path, key_password)


@dataclass(frozen=True)
class TestPki:
    """The usual set for one test module (see :func:`make_test_pki`)."""

    __test__ = False

    directory: Path
    ca: TestCA
    server: Issued
    """Signed by ``ca``, for 127.0.0.1 and localhost: the broker's and the emulators' certificate."""
    client: Issued
    """Signed by ``ca``: a client certificate the broker accepts for mTLS."""
    untrusted_ca: TestCA
    untrusted_server: Issued
    """A server certificate for 127.0.0.1/localhost that nobody trusts."""
    untrusted_client: Issued
    """A client certificate the broker must refuse."""


def make_test_pki(directory: Path, *, hosts: Iterable[str] = LOOPBACK_HOSTS,
                  client_key_password: str | None = None) -> TestPki:
    """A trusted CA with server and client certificates, and an untrusted CA with the same, under ``directory``.

    ``client_key_password`` encrypts both client keys (as ``KAFKA_SSL_KEY_PASSWORD`` would unlock them).
    """
    hosts = tuple(hosts)
    ca = TestCA(directory / "trusted", "usage-consumer test CA")
    untrusted = TestCA(directory / "untrusted", "usage-consumer untrusted CA")
    return TestPki(
        directory=directory, ca=ca,
        server=ca.issue("server", hosts=hosts),
        client=ca.issue("client", server=False, client=True, key_password=client_key_password),
        untrusted_ca=untrusted,
        untrusted_server=untrusted.issue("server", hosts=hosts),
        untrusted_client=untrusted.issue("client", server=False, client=True, key_password=client_key_password),
    )


def scram_format_args(users: Mapping[str, str], mechanism: str = SCRAM_MECHANISM) -> list[str]:
    """``kafka-storage format`` arguments that create SCRAM credentials before the broker first starts."""
    for name, password in users.items():
        if any(c in name + password for c in ",=[]\"'"):
            raise ValueError("SCRAM test user names and passwords must not contain , = [ ] or quotes")
    return [f"--add-scram={mechanism}=[name={name},password={password}]" for name, password in users.items()]


def secure_listener_properties(pki: TestPki) -> dict[str, str]:
    """Broker settings for the ``SASL_SSL`` (SCRAM-SHA-512) and ``SSL`` (client certificate required)
    listeners, from PEM files: the server bundle as key store and the test CA as trust store."""
    scram = SCRAM_MECHANISM.lower()
    sasl = SASL_SSL_LISTENER.lower()
    return {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(pki.server.bundle),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(pki.ca.cert),
        "ssl.endpoint.identification.algorithm": "",
        f"listener.name.{MTLS_LISTENER.lower()}.ssl.client.auth": "required",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"listener.name.{sasl}.sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"listener.name.{sasl}.{scram}.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
    }


def secured_local_kafka(pki: TestPki, scram_users: Mapping[str, str], *, heap_mb: int = 512) -> LocalKafka:
    """A broker (call ``start()``) with PLAINTEXT plus the ``SASL_SSL`` and ``SSL`` (mTLS) listeners; their
    addresses are ``broker.listener_bootstrap(SASL_SSL_LISTENER)`` and ``...(MTLS_LISTENER)``."""
    from consumer.testing.local_kafka import LocalKafka

    return LocalKafka(heap_mb=heap_mb, extra_listeners={SASL_SSL_LISTENER: "SASL_SSL", MTLS_LISTENER: "SSL"},
                      extra_properties=secure_listener_properties(pki),
                      format_args=tuple(scram_format_args(scram_users)))
