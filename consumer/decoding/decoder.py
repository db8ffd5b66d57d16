"""Turn Kafka record values into event dicts: Avro in one of three framings, resolved to the reader schema.

- ``confluent``: ``00`` + 4-byte big-endian schema id + Avro binary; the writer schema comes from the
  Schema Registry (fetched once per id).
- ``single-object``: ``C3 01`` + 8-byte little-endian CRC-64-AVRO fingerprint + Avro binary; the writer
  schema comes from the :class:`~consumer.decoding.schemas.SchemaStore`.
- ``raw``: Avro binary written with one configured writer schema (by default the reader schema).

Per event the work is: one slice for the header, one dict lookup for the per-writer plan (built once per
schema id / fingerprint, with schemas already parsed and schema resolution skipped when writer and
reader are the same), one ``fastavro.schemaless_reader`` call and a trailing-bytes check. Decoded values
are Avro base types (``timestamp-millis`` -> ``int`` epoch milliseconds), see :mod:`consumer.decoding.schemas`.

Errors: :class:`DecodeError` (bad framing, truncated, trailing bytes, undecodable, no value),
:class:`UnknownSchema` (id or fingerprint nobody knows), and from the registry :class:`TransientError`
(retry; never dead-letter) or :class:`FatalError`. Nothing else escapes ``decode``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from io import BytesIO
from typing import Any, ClassVar, Literal, get_args

from fastavro import schemaless_reader
from fastavro.read import SchemaResolutionError

from consumer.config import Settings
from consumer.decoding.encoding import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    encode_confluent,
    encode_raw,
    encode_single_object,
)
from consumer.decoding.registry import SchemaRegistryClient
from consumer.decoding.schemas import ParsedSchema, SchemaStore, default_schema_dir, is_recursive, load_schema, parse
from consumer.errors import ConfigError, DecodeError, UnknownSchema

__all__ = [
    "FRAMINGS",
    "ConfluentDecoder",
    "Decoder",
    "Framing",
    "RawDecoder",
    "SingleObjectDecoder",
    "encode_confluent",
    "encode_raw",
    "encode_single_object",
    "make_decoder",
]

Framing = Literal["confluent", "single-object", "raw"]
FRAMINGS: tuple[Framing, ...] = get_args(Framing)

_CONFLUENT_HEADER_BYTES = 5
_SINGLE_OBJECT_HEADER_BYTES = 10
_NO_VALUE = "the record has no value (a tombstone?): nothing to decode"
_MAX_DETAIL_CHARS = 200

# Typed as returning Any: with a record reader schema the result is always a dict, and a cast() per
# event would cost a call.
_read_avro: Callable[..., Any] = schemaless_reader


class _Plan:
    """How to read bodies written with one writer schema: parsed schemas and a label for errors."""

    __slots__ = ("label", "reader", "writer")

    def __init__(self, writer: ParsedSchema, reader: ParsedSchema, label: str) -> None:
        self.writer = writer.reader  # the logical-type-free parse of the *writer* schema
        # Same Parsing Canonical Form = same binary layout and names: resolution would change nothing.
        self.reader = None if writer.canonical_form == reader.canonical_form else reader.reader
        self.label = label


class Decoder(ABC):
    """Decodes record values of one framing. One per lane; not thread-safe (its caches are plain dicts)."""

    framing: ClassVar[Framing]

    def __init__(self, reader: ParsedSchema) -> None:
        self.reader = reader

    @abstractmethod
    def decode(self, value: bytes | None) -> dict[str, Any]:
        """The event as a dict shaped by the reader schema; raises only the errors in the module doc."""

    def close(self) -> None:  # noqa: B027 - most framings hold nothing open
        """Release what the decoder holds open (the registry's connections)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reader={self.reader.name!r})"


class ConfluentDecoder(Decoder):
    """Confluent wire format; writer schemas from the Schema Registry, cached per schema id."""

    framing = "confluent"

    def __init__(self, reader: ParsedSchema, registry: SchemaRegistryClient) -> None:
        super().__init__(reader)
        self._registry = registry
        self._plans: dict[bytes, _Plan] = {}  # by the 5 header bytes: one slice and one lookup per event

    def close(self) -> None:
        self._registry.close()

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value is None:
            raise DecodeError(_NO_VALUE)
        plan = self._plans.get(value[:_CONFLUENT_HEADER_BYTES])
        if plan is None:
            plan = self._new_plan(value)
        return _read_body(plan, value[_CONFLUENT_HEADER_BYTES:])

    def _new_plan(self, value: bytes) -> _Plan:
        if len(value) < _CONFLUENT_HEADER_BYTES:
            raise DecodeError(
                f"confluent framing: {len(value)} bytes is shorter than the 5-byte header "
                "(magic byte 0x00 + 4-byte schema id)"
            )
        if value[:1] != CONFLUENT_MAGIC:
            raise DecodeError(
                f"confluent framing: first byte is 0x{value[0]:02x}, the magic byte must be 0x00 "
                "(is this topic really Confluent-framed Avro?)"
            )
        schema_id = int.from_bytes(value[1:_CONFLUENT_HEADER_BYTES], "big")
        schema = self._registry.get_schema(schema_id)  # UnknownSchema / TransientError / FatalError
        if is_recursive(schema):
            raise UnknownSchema(f"schema id {schema_id} is recursive (a record containing itself): refused, "
                                "because its data can nest deep enough to crash the decoder")
        try:
            writer = parse(schema)
        except ConfigError as exc:
            raise UnknownSchema(f"schema id {schema_id} from the registry is not usable: {exc}") from exc
        plan = _Plan(writer, self.reader, f"schema id {schema_id} ({writer.name})")
        self._plans[value[:_CONFLUENT_HEADER_BYTES]] = plan
        return plan


class SingleObjectDecoder(Decoder):
    """Avro single-object encoding; writer schemas from a SchemaStore by fingerprint."""

    framing = "single-object"

    def __init__(self, reader: ParsedSchema, store: SchemaStore) -> None:
        super().__init__(reader)
        self._store = store
        self._plans: dict[bytes, _Plan] = {}  # by the 10 header bytes

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value is None:
            raise DecodeError(_NO_VALUE)
        plan = self._plans.get(value[:_SINGLE_OBJECT_HEADER_BYTES])
        if plan is None:
            plan = self._new_plan(value)
        return _read_body(plan, value[_SINGLE_OBJECT_HEADER_BYTES:])

    def _new_plan(self, value: bytes) -> _Plan:
        if len(value) < _SINGLE_OBJECT_HEADER_BYTES:
            raise DecodeError(
                f"single-object framing: {len(value)} bytes is shorter than the 10-byte header "
                "(0xC3 0x01 + 8-byte fingerprint)"
            )
        if value[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError(
                f"single-object framing: first two bytes are 0x{value[:2].hex()}, must be 0xc301 "
                "(is this topic really Avro single-object encoded?)"
            )
        fingerprint = value[2:_SINGLE_OBJECT_HEADER_BYTES]
        writer = self.reader if fingerprint == self.reader.fingerprint else self._store.find(fingerprint)
        plan = _Plan(writer, self.reader, f"writer schema {writer.name} (fingerprint {fingerprint.hex()})")
        self._plans[value[:_SINGLE_OBJECT_HEADER_BYTES]] = plan
        return plan


class RawDecoder(Decoder):
    """Bare Avro binary written with one known writer schema."""

    framing = "raw"

    def __init__(self, reader: ParsedSchema, writer: ParsedSchema) -> None:
        super().__init__(reader)
        self._plan = _Plan(writer, reader, f"raw Avro (writer schema {writer.name})")

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value is None:
            raise DecodeError(_NO_VALUE)
        return _read_body(self._plan, value)


def make_decoder(
    framing: Framing,
    *,
    reader_schema: dict[str, Any] | ParsedSchema,
    registry: SchemaRegistryClient | None = None,
    store: SchemaStore | None = None,
    writer_schema: dict[str, Any] | ParsedSchema | None = None,
) -> Decoder:
    """Build the decoder for ``framing``; schemas are parsed here, once.

    ``registry`` is required for ``confluent``. ``store`` serves ``single-object`` (default: every
    ``*.avsc`` in :func:`~consumer.decoding.schemas.default_schema_dir`; the reader schema is always known).
    ``writer_schema`` serves ``raw`` (default: the reader schema) and is refused for other framings, where
    the writer schema travels with each event. Arguments a framing does not use are otherwise ignored.
    """
    reader = _parsed(reader_schema, "reader_schema")
    if reader.source.get("type") != "record":
        raise ConfigError("the reader schema must be an Avro record", key="reader_schema")
    if writer_schema is not None and framing != "raw":
        raise ConfigError(
            f"a writer schema is only used with raw framing; {framing} events name their own",
            key="writer_schema",
        )
    if framing == "confluent":
        if registry is None:
            raise ConfigError("confluent framing needs a schema registry URL", key="schema_registry")
        return ConfluentDecoder(reader, registry)
    if framing == "single-object":
        return SingleObjectDecoder(reader, store if store is not None else SchemaStore.from_directory(
            default_schema_dir()))
    if framing == "raw":
        writer = reader if writer_schema is None else _parsed(writer_schema, "writer_schema")
        return RawDecoder(reader, writer)
    raise ConfigError(f"unknown framing {framing!r}; expected one of {', '.join(FRAMINGS)}", key="framing")


def _parsed(schema: dict[str, Any] | ParsedSchema, key: str) -> ParsedSchema:
    if isinstance(schema, ParsedSchema):
        return schema
    try:
        return parse(schema)
    except ConfigError as exc:
        raise ConfigError(str(exc), key=key) from exc


def _read_body(plan: _Plan, body: bytes) -> dict[str, Any]:
    """Decode one Avro body with ``plan``; the whole body must be one record."""
    fo = BytesIO(body)
    try:
        record: dict[str, Any] = _read_avro(fo, plan.writer, plan.reader)
    except Exception as exc:  # fastavro's errors are many and untyped; every one means "bad body"
        raise _body_error(plan, exc) from exc
    if fo.tell() != len(body):
        raise _trailing_error(plan, len(body) - fo.tell())
    return record


def _body_error(plan: _Plan, exc: Exception) -> DecodeError:
    detail = str(exc)[:_MAX_DETAIL_CHARS]
    if isinstance(exc, EOFError):
        what = "body is truncated (or a length in it is wrong)" + (f": {detail}" if detail else "")
    elif isinstance(exc, SchemaResolutionError):
        what = f"writer schema cannot be resolved against the reader schema: {detail}"
    elif isinstance(exc, UnicodeDecodeError):
        what = "body holds a string that is not valid UTF-8"
    else:
        what = f"body does not decode: {type(exc).__name__}" + (f": {detail}" if detail else "")
    return DecodeError(f"{plan.label}: {what}")


def _trailing_error(plan: _Plan, extra_bytes: int) -> DecodeError:
    return DecodeError(f"{plan.label}: {extra_bytes} trailing bytes after a complete record")


def registry_client(settings: Settings) -> SchemaRegistryClient:
    """The schema registry client the configuration describes (URL, timeout, basic auth)."""
    decoding = settings.decoding
    if not decoding.schema_registry_url:
        raise ConfigError("confluent framing needs a schema registry URL (or SCHEMA_REGISTRY_URL)",
                          key="decoding.schema_registry_url", file=settings.source)
    auth = None
    if decoding.schema_registry_user and settings.schema_registry_password is not None:
        auth = (decoding.schema_registry_user, settings.schema_registry_password.get_secret_value())
    try:
        return SchemaRegistryClient(decoding.schema_registry_url, timeout_s=decoding.schema_registry_timeout_s,
                                    auth=auth)
    except ValueError as exc:
        raise ConfigError(str(exc), key="decoding.schema_registry_url", file=settings.source) from None


def decoder_for(settings: Settings, reader_schema: dict[str, Any] | ParsedSchema, *,
                check_registry: Callable[[SchemaRegistryClient], None] | None = None) -> Decoder:
    """The decoder the configuration describes (framing, registry, schema directory, writer schema), built in
    this one place for the lanes and the tools; ``check_registry`` runs on a new registry client first."""
    decoding = settings.decoding
    registry = None
    if decoding.framing == "confluent":
        registry = registry_client(settings)
        if check_registry is not None:
            try:
                check_registry(registry)
            except BaseException:
                registry.close()
                raise
    store = SchemaStore.from_directory(decoding.schema_dir or default_schema_dir()) \
        if decoding.framing == "single-object" else None
    writer = load_schema(decoding.writer_schema) if decoding.writer_schema else None
    return make_decoder(decoding.framing, reader_schema=reader_schema, registry=registry, store=store,
                        writer_schema=writer)
