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
:class:`UnknownSchema` (id or fingerprint nobody knows), :class:`SchemaMismatch` (a writer schema that does not
resolve to the reader schema, both named), and from the registry :class:`TransientError`
(retry; never dead-letter) or :class:`FatalError`. Nothing else escapes ``decode``.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any, ClassVar, Literal, get_args

from fastavro import schemaless_reader
from fastavro.read import SchemaResolutionError

from consumer.config import Settings
from consumer.decoding.compiled import compile_reader
from consumer.decoding.encoding import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    encode_confluent,
    encode_raw,
    encode_single_object,
)
from consumer.decoding.registry import SchemaRegistryClient
from consumer.decoding.schemas import ParsedSchema, SchemaStore, default_schema_dir, is_recursive, load_schema, parse
from consumer.errors import ConfigError, DecodeError, EventError, SchemaMismatch, UnknownSchema

__all__ = [
    "FRAMINGS",
    "FRAMING_HEADERS",
    "ConfluentDecoder",
    "Decoder",
    "Framing",
    "FramingHeader",
    "RawDecoder",
    "SingleObjectDecoder",
    "encode_confluent",
    "encode_raw",
    "encode_single_object",
    "make_decoder",
]

Framing = Literal["confluent", "single-object", "raw"]
FRAMINGS: tuple[Framing, ...] = get_args(Framing)


@dataclass(frozen=True)
class FramingHeader:
    """The fixed-size header a framing puts before the Avro body: magic bytes, then the writer schema's key.

    ``layout`` and ``wrong_magic`` go into the messages about a value too short for the header or without the
    magic bytes (``{found}``: the hex of the bytes found instead).
    """

    size: int
    magic: bytes
    layout: str
    wrong_magic: str


FRAMING_HEADERS: Mapping[Framing, FramingHeader] = {
    "confluent": FramingHeader(5, CONFLUENT_MAGIC, "magic byte 0x00 + 4-byte schema id",
                               "first byte is 0x{found}, the magic byte must be 0x00 "
                               "(is this topic really Confluent-framed Avro?)"),
    "single-object": FramingHeader(10, SINGLE_OBJECT_MAGIC, "0xC3 0x01 + 8-byte fingerprint",
                                   "first two bytes are 0x{found}, must be 0xc301 "
                                   "(is this topic really Avro single-object encoded?)"),
}
"""The header of each framing that has one (``raw`` has none): its facts stated once, here."""

_NO_VALUE = "the record has no value (a tombstone?): nothing to decode"
_MAX_DETAIL_CHARS = 200

# Typed as returning Any: with a record reader schema the result is always a dict, and a cast() per
# event would cost a call.
_read_avro: Callable[..., Any] = schemaless_reader


class _Plan:
    """How to read bodies written with one writer schema: parsed schemas and a label for errors.

    With ``needed`` (the top-level fields a lane's mapping reads), the body is read only up to the last writer
    field that holds one of them: Avro writes fields one after another, so the rest is simply not read (no
    objects built, no bytes walked); the generated reader also steps over the unneeded fields before it.
    Resolution is still skipped when writer and reader are the same schema.
    """

    __slots__ = ("label", "read", "reader", "reader_name", "whole", "writer", "writer_name")

    def __init__(self, writer: ParsedSchema, reader: ParsedSchema, label: str,
                 needed: frozenset[str] | None = None, *, generated: bool = True) -> None:
        self.reader_name = reader.name
        self.writer_name = writer.name
        self.label = label
        prefix = _prefix(writer, reader, needed) if needed is not None else None
        self.whole = prefix is None
        """The body is read to its end (so trailing bytes are an error)."""
        if prefix is None:
            self.writer = writer.reader  # the logical-type-free parse of the *writer* schema
            # Same Parsing Canonical Form = same binary layout and names: resolution would change nothing.
            self.reader = None if writer.canonical_form == reader.canonical_form else reader.reader
        else:
            self.writer, self.reader = prefix
        self.read = compile_reader(self.writer, needed) if self.reader is None and generated else None
        """The reader generated for this layout (no resolution needed), or None: fastavro reads it. It skips the
        fields before the last needed one that are not needed themselves."""


def _prefix(writer: ParsedSchema, reader: ParsedSchema, needed: frozenset[str],
            ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """``(writer, reader)`` parses that read only the writer's fields up to the last one ``needed`` matches
    (a reader field's name or aliases); None when that is every field, or when the cut does not parse."""
    fields = writer.source.get("fields")
    reader_fields = reader.source.get("fields")
    if not isinstance(fields, list) or not isinstance(reader_fields, list):
        return None
    matching = {name for f in reader_fields if f.get("name") in needed
                for name in (f.get("name"), *f.get("aliases", ()))}
    last = max((i for i, f in enumerate(fields) if f.get("name") in matching), default=-1)
    if last + 1 >= len(fields):
        return None
    try:
        cut = parse({**writer.source, "fields": fields[:last + 1]})
        if writer.canonical_form == reader.canonical_form:
            return cut.reader, None
        projected = parse({**reader.source, "fields": [f for f in reader_fields if f.get("name") in needed]})
    except ConfigError:  # e.g. a kept field names a type defined in a left-out one: read it all
        return None
    return cut.reader, projected.reader


class Decoder(ABC):
    """Decodes record values of one framing. One per lane; not thread-safe (its caches are plain dicts)."""

    framing: ClassVar[Framing]

    def __init__(self, reader: ParsedSchema, needed: frozenset[str] | None = None, *, generated: bool = True,
                 ) -> None:
        """``needed``: the top-level fields the caller reads; a body is read only as far as they go (the
        decoded dict may then lack later fields). None reads every field. ``generated``: read bodies with
        readers generated per writer schema (:mod:`consumer.decoding.compiled`) where no resolution is needed."""
        self.reader = reader
        self.needed = needed
        self.generated = generated

    @abstractmethod
    def decode(self, value: bytes | None) -> dict[str, Any]:
        """The event as a dict shaped by the reader schema; raises only the errors in the module doc."""

    @abstractmethod
    def writer_name(self, value: bytes | None) -> str:
        """The full name of the record's writer schema, read from its header alone (a topic carrying several
        record types picks the stream by it); raises like :meth:`decode` for a header it cannot read."""

    def close(self) -> None:  # noqa: B027 - most framings hold nothing open
        """Release what the decoder holds open (the registry's connections)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reader={self.reader.name!r})"


class _HeaderDecoder(Decoder):
    """A framing whose header (``FRAMING_HEADERS``) precedes the Avro body.

    The header checks, the plan cache and the hot path are the same for every such framing; a subclass
    only finds the plan for a writer schema it has not seen yet.
    """

    def __init__(self, reader: ParsedSchema, needed: frozenset[str] | None = None, *, generated: bool = True,
                 ) -> None:
        super().__init__(reader, needed, generated=generated)
        self._header = FRAMING_HEADERS[self.framing]
        self._header_bytes = self._header.size  # read per event: one attribute, not two
        self._plans: dict[bytes, _Plan] = {}  # by the whole header: one slice and one lookup per event

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value is None:
            raise DecodeError(_NO_VALUE)
        size = self._header_bytes
        plan = self._plans.get(value[:size])
        if plan is None:
            plan = self._new_plan(value)
        return _read_value(plan, value, size)

    def writer_name(self, value: bytes | None) -> str:
        if value is None:
            raise DecodeError(_NO_VALUE)
        plan = self._plans.get(value[:self._header_bytes])
        return (plan or self._new_plan(value)).writer_name

    def _new_plan(self, value: bytes) -> _Plan:
        header = self._header
        if len(value) < header.size:
            raise DecodeError(f"{self.framing} framing: {len(value)} bytes is shorter than the "
                              f"{header.size}-byte header ({header.layout})")
        found = value[:len(header.magic)]
        if found != header.magic:
            raise DecodeError(f"{self.framing} framing: {header.wrong_magic.format(found=found.hex())}")
        plan = self._writer_plan(value[len(header.magic):header.size])
        self._plans[value[:header.size]] = plan
        return plan

    @abstractmethod
    def _writer_plan(self, key: bytes) -> _Plan:
        """The plan for the writer schema that ``key`` (the header after the magic bytes) names, first seen."""


class ConfluentDecoder(_HeaderDecoder):
    """Confluent wire format; writer schemas from the Schema Registry, cached per schema id."""

    framing = "confluent"

    def __init__(self, reader: ParsedSchema, registry: SchemaRegistryClient,
                 needed: frozenset[str] | None = None, *, generated: bool = True) -> None:
        super().__init__(reader, needed, generated=generated)
        self._registry = registry

    def close(self) -> None:
        self._registry.close()

    def _writer_plan(self, key: bytes) -> _Plan:
        schema_id = int.from_bytes(key, "big")
        schema = self._registry.get_schema(schema_id)  # UnknownSchema / TransientError / FatalError
        if is_recursive(schema):
            raise UnknownSchema(f"schema id {schema_id} is recursive (a record containing itself): refused, "
                                "because its data can nest deep enough to crash the decoder")
        try:
            writer = parse(schema)
        except ConfigError as exc:
            raise UnknownSchema(f"schema id {schema_id} from the registry is not usable: {exc}") from exc
        return _Plan(writer, self.reader, f"schema id {schema_id} ({writer.name})", self.needed,
                     generated=self.generated)


class SingleObjectDecoder(_HeaderDecoder):
    """Avro single-object encoding; writer schemas from a SchemaStore by fingerprint."""

    framing = "single-object"

    def __init__(self, reader: ParsedSchema, store: SchemaStore, needed: frozenset[str] | None = None, *,
                 generated: bool = True) -> None:
        super().__init__(reader, needed, generated=generated)
        self._store = store

    def _writer_plan(self, key: bytes) -> _Plan:
        fingerprint = key
        writer = self.reader if fingerprint == self.reader.fingerprint else self._store.find(fingerprint)
        return _Plan(writer, self.reader, f"writer schema {writer.name} (fingerprint {fingerprint.hex()})",
                     self.needed, generated=self.generated)


class RawDecoder(Decoder):
    """Bare Avro binary written with one known writer schema."""

    framing = "raw"

    def __init__(self, reader: ParsedSchema, writer: ParsedSchema, needed: frozenset[str] | None = None, *,
                 generated: bool = True) -> None:
        super().__init__(reader, needed, generated=generated)
        self._plan = _Plan(writer, reader, f"raw Avro (writer schema {writer.name})", needed, generated=generated)

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value is None:
            raise DecodeError(_NO_VALUE)
        return _read_value(self._plan, value, 0)

    def writer_name(self, value: bytes | None) -> str:
        return self._plan.writer_name


def make_decoder(
    framing: Framing,
    *,
    reader_schema: dict[str, Any] | ParsedSchema,
    registry: SchemaRegistryClient | None = None,
    store: SchemaStore | None = None,
    writer_schema: dict[str, Any] | ParsedSchema | None = None,
    needed: frozenset[str] | None = None,
    generated: bool = True,
) -> Decoder:
    """Build the decoder for ``framing``; schemas are parsed here, once.

    ``registry`` is required for ``confluent``. ``store`` serves ``single-object`` (default: every
    ``*.avsc`` in :func:`~consumer.decoding.schemas.default_schema_dir`; the reader schema is always known).
    ``writer_schema`` serves ``raw`` (default: the reader schema) and is refused for other framings, where
    the writer schema travels with each event. Arguments a framing does not use are otherwise ignored.
    ``needed``: the top-level fields the caller reads (a lane: its mapping's), so bodies are read only that far.
    ``generated``: read with readers generated per writer schema where no resolution is needed (else fastavro).
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
        return ConfluentDecoder(reader, registry, needed, generated=generated)
    if framing == "single-object":
        return SingleObjectDecoder(reader, store if store is not None else SchemaStore.from_directory(
            default_schema_dir()), needed, generated=generated)
    if framing == "raw":
        writer = reader if writer_schema is None else _parsed(writer_schema, "writer_schema")
        return RawDecoder(reader, writer, needed, generated=generated)
    raise ConfigError(f"unknown framing {framing!r}; expected one of {', '.join(FRAMINGS)}", key="framing")


def _parsed(schema: dict[str, Any] | ParsedSchema, key: str) -> ParsedSchema:
    if isinstance(schema, ParsedSchema):
        return schema
    try:
        return parse(schema)
    except ConfigError as exc:
        raise ConfigError(str(exc), key=key) from exc


def _read_value(plan: _Plan, value: bytes, start: int) -> dict[str, Any]:
    """Decode the Avro body that starts at ``start`` of ``value`` with ``plan``'s generated reader, or with
    fastavro when it has none; the whole body must be one record."""
    read = plan.read
    if read is None:
        return _read_body(plan, value[start:])
    try:
        record, end = read(value, start)
    except (IndexError, struct.error) as exc:  # read past the end: a length or count in it is wrong
        raise _body_error(plan, EOFError()) from exc
    except Exception as exc:  # bad UTF-8, an index out of range
        raise _body_error(plan, exc) from exc
    if end != len(value):
        if end > len(value):
            raise _body_error(plan, EOFError())
        if plan.whole:
            raise _trailing_error(plan, len(value) - end)
    return record


def _read_body(plan: _Plan, body: bytes) -> dict[str, Any]:
    """Decode one Avro body with ``plan``; the whole body must be one record."""
    fo = BytesIO(body)
    try:
        record: dict[str, Any] = _read_avro(fo, plan.writer, plan.reader)
    except Exception as exc:  # fastavro's errors are many and untyped; every one means "bad body"
        raise _body_error(plan, exc) from exc
    if fo.tell() != len(body) and plan.whole:
        raise _trailing_error(plan, len(body) - fo.tell())
    return record


def _body_error(plan: _Plan, exc: Exception) -> EventError:
    detail = str(exc)[:_MAX_DETAIL_CHARS]
    if isinstance(exc, SchemaResolutionError):
        why = f": {detail}" if "{" not in detail else ""  # fastavro's "X is not Y" prints whole schemas
        return SchemaMismatch(f"{plan.label}: does not resolve to the reader schema {plan.reader_name}{why}")
    if isinstance(exc, EOFError):
        what = "body is truncated (or a length in it is wrong)" + (f": {detail}" if detail else "")
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


def checked_registry(settings: Settings, check: Callable[[SchemaRegistryClient], None] | None = None,
                     ) -> SchemaRegistryClient | None:
    """The registry client the framing needs (None unless ``confluent``), after ``check`` ran on it."""
    if settings.decoding.framing != "confluent":
        return None
    registry = registry_client(settings)
    if check is not None:
        try:
            check(registry)
        except BaseException:
            registry.close()
            raise
    return registry


def decoder_for(settings: Settings, reader_schema: dict[str, Any] | ParsedSchema, *,
                check_registry: Callable[[SchemaRegistryClient], None] | None = None,
                registry: SchemaRegistryClient | None = None, needed: frozenset[str] | None = None) -> Decoder:
    """The decoder the configuration describes (framing, registry, schema directory, writer schema), built in
    this one place for the lanes and the tools. ``registry``: a client already checked, shared by the decoders
    of several streams (one connection pool, each writer schema fetched once); else a new one is made and
    ``check_registry`` runs on it first."""
    decoding = settings.decoding
    if registry is None:
        registry = checked_registry(settings, check_registry)
    store = SchemaStore.from_directory(decoding.schema_dir or default_schema_dir()) \
        if decoding.framing == "single-object" else None
    writer = load_schema(decoding.writer_schema) if decoding.writer_schema else None
    return make_decoder(decoding.framing, reader_schema=reader_schema, registry=registry, store=store,
                        writer_schema=writer, needed=needed, generated=decoding.reader == "generated")
