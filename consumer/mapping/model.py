"""The mapping language as typed, frozen objects, plus the facts about each destination it relies on.

``validate.py`` turns YAML into these objects (reporting every problem); ``compiler.py`` turns them into
plain Python functions.  Nothing here runs per event except the conversion functions in ``CONVERTERS``,
which the compiled code calls on its slow path (the common case is inlined by the compiler).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeAlias

from consumer.errors import MappingFailed

FieldPath: TypeAlias = tuple[str, ...]
"""A path into the event: record field names and, below a map, map keys."""


class Destination(StrEnum):
    FRESHSUCCESS = "freshsuccess"
    FRESHPAINT = "freshpaint"


class Convert(StrEnum):
    """Value conversions a mapping may ask for; see ``CONVERTERS`` for their exact meaning."""

    EPOCH_MS = "epoch_ms"
    EPOCH_MS_TO_S = "epoch_ms_to_s"
    MS_TO_S = "ms_to_s"
    S_TO_MS = "s_to_ms"
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    BASE64 = "base64"
    HEX = "hex"


# ---------------------------------------------------------------------------------------------------------
# Value expressions


@dataclass(frozen=True)
class FieldRef:
    """The value at ``path`` in the event; ``None`` when any step is null or a map lacks the key.

    ``may_be_float``: the schema lets the value be a float, so a NaN or an infinity (which JSON cannot
    carry) must be turned into ``None``. ``members_may_be_float`` / ``members_may_be_null``: the value is a
    map or record whose direct members can be floats / nulls (for ``merge:`` and ``pass_properties``).
    """

    path: FieldPath
    may_be_float: bool = False
    members_may_be_float: bool = False
    members_may_be_null: bool = False


@dataclass(frozen=True)
class Const:
    """A constant (``None`` allowed: it means "leave out")."""

    value: Any


@dataclass(frozen=True)
class Template:
    """Literal text and field values joined; ``None`` when any referenced field is ``None``."""

    parts: tuple[str | FieldRef, ...]


@dataclass(frozen=True)
class ObjectOf:
    """A JSON object: ``merge`` (a map or record) first, then ``entries``; ``None`` values are left out.

    An object that ends up empty is ``None``, so a required ``details`` with nothing in it is reported.
    """

    entries: tuple[tuple[str, Value], ...]
    merge: Value | None
    merge_may_hold_floats: bool = False
    """The merged map/record can hold floats at its top level (NaN and infinities are left out like nulls)."""


@dataclass(frozen=True)
class InsertId:
    """Freshpaint ``$insert_id``: deterministic per event and per output (see ``compiler.insert_id``)."""


Expr: TypeAlias = FieldRef | Const | Template | ObjectOf | InsertId


@dataclass(frozen=True)
class Value:
    """An expression with its fallback and conversion: ``convert(expr ?? default)``."""

    expr: Expr
    default: Value | None = None
    convert: Convert | None = None
    line: int | None = None
    decimal_scale: int | None = None
    """Set when ``convert`` (string or float) reads an Avro decimal's bytes: the schema's scale."""


# ---------------------------------------------------------------------------------------------------------
# Predicates (``when:``)


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NOT_IN = "not_in"
    GT = "gt"
    GE = "ge"
    LT = "lt"
    LE = "le"
    EXISTS = "exists"
    NOT_NULL = "not_null"


ORDERING_OPS = frozenset({Op.GT, Op.GE, Op.LT, Op.LE})


@dataclass(frozen=True)
class Compare:
    """``field <op> operand``; for ``in``/``not_in`` the operand is a tuple, for ``exists``/``not_null`` a bool."""

    path: FieldPath
    op: Op
    operand: Any
    line: int | None = None


@dataclass(frozen=True)
class AllOf:
    items: tuple[Predicate, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Predicate, ...]


@dataclass(frozen=True)
class Not:
    item: Predicate


@dataclass(frozen=True)
class Always:
    """A rule without ``when:`` selects every event."""


Predicate: TypeAlias = Compare | AllOf | AnyOf | Not | Always


# ---------------------------------------------------------------------------------------------------------
# Outputs and rules


@dataclass(frozen=True)
class Output:
    """Where an output stands, so that messages can name it: ``index``, its 0-based position in its rule's
    list for its destination, and its line in the file. Shared by every destination's output."""

    index: int = field(kw_only=True)
    line: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class FreshsuccessOutput(Output):
    """One Freshsuccess event: ``fields`` already include the ``defaults:`` the output did not override."""

    action: str
    fields: tuple[tuple[str, Value], ...]


@dataclass(frozen=True)
class FreshpaintOutput(Output):
    """One Freshpaint event; ``event`` is ``None`` for ``identify: true`` (the name is ``$identify``).

    ``properties`` already include the ``defaults:`` the output did not override.
    """

    event: Value | None
    identify: bool
    properties: tuple[tuple[str, Value], ...]
    pass_properties: FieldRef | None
    integrations: tuple[tuple[str, bool], ...] | None
    user_props: Value | None


@dataclass(frozen=True)
class Rule:
    name: str
    when: Predicate
    freshsuccess: tuple[FreshsuccessOutput, ...]
    freshpaint: tuple[FreshpaintOutput, ...]
    line: int | None = None


@dataclass(frozen=True)
class MappingModel:
    version: int
    rules: tuple[Rule, ...]
    source: str
    reads_topic: bool = False
    """Some rule reads :data:`TOPIC_FIELD`: the map functions put the record's topic there first."""
    reads_record_name: bool = False
    """Some rule reads :data:`RECORD_NAME_FIELD`: the verdict puts the writer schema's name there first."""


TOPIC_FIELD = "$topic"
"""The field path that reads the topic a record came from (Avro names cannot start with ``$``, so it never
shadows a field of the schema)."""

RECORD_NAME_FIELD = "$record_name"
"""The field path that reads the full name of the record's writer schema (e.g. ``com.example.Purchase``)."""


# ---------------------------------------------------------------------------------------------------------
# Destination facts (destinations.md)

FRESHSUCCESS_BASE_FIELDS: tuple[str, ...] = ("accountId", "userId", "createdAt", "sessionId")
"""Base properties every Freshsuccess event carries besides ``action`` (all required)."""


@dataclass(frozen=True)
class ActionSpec:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


FRESHSUCCESS_ACTIONS: Mapping[str, ActionSpec] = {
    "feature": ActionSpec(required=("feature", "module", "total"), optional=("product",)),
    "moduleEnd": ActionSpec(required=("module", "timeSpent")),
    "sessionSync": ActionSpec(required=("activeDuration",)),
    "identifyUser": ActionSpec(required=("details",)),
    "identifyAccount": ActionSpec(required=("details",)),
}

FRESHPAINT_REQUIRED_PROPERTIES: tuple[str, ...] = ("distinct_id", "time")
FRESHPAINT_RESERVED_PROPERTIES: Mapping[str, str] = {
    "token": "the Freshpaint sink adds the environment token itself",
    "$options": "use 'integrations:' on the output",
    "$user_props": "use 'identify: true' with 'user_props:'",
}
FRESHPAINT_PASS_THROUGH_RESERVED: frozenset[str] = frozenset({
    "token", "$options", "$user_props", "$ip", "$device_id", "$insert_id",
})
"""Keys the Freshpaint contract gives a meaning to: ``pass_properties`` never copies them (a producer must
not be able to re-route an event, attach user properties to a track event, spoof the IP or device, or
choose the de-duplication id); only the mapping's explicit entries set them."""
IDENTIFY_EVENT = "$identify"
INSERT_ID_RULE = "1 to 36 characters of [A-Za-z0-9-]"
is_valid_insert_id = re.compile(r"[A-Za-z0-9-]{1,36}").fullmatch
"""An ``$insert_id`` that Freshpaint and the Mixpanel-style destinations behind it accept (destinations.md)."""

FRESHSUCCESS_REQUIRED_TEXT: frozenset[str] = frozenset({"accountId", "userId", "sessionId", "feature", "module"})
FRESHPAINT_REQUIRED_TEXT: frozenset[str] = frozenset({"distinct_id"})
"""Required text slots (plus the Freshpaint event name) where a blank value (empty or only whitespace)
counts as missing: it falls back to the ``default:``, else the event is dead-lettered. Freshsuccess drops
such events silently inside a 200, and a blank id would merge unrelated users."""

# What JSON type each well-known output slot takes.  Kinds: string, int, float, bool, object, array, bytes.
STRING = frozenset({"string"})
INTEGER = frozenset({"int"})
NUMBER = frozenset({"int", "float"})
OBJECT = frozenset({"object"})
JSON_KINDS = frozenset({"string", "int", "float", "bool", "object", "array"})

FRESHSUCCESS_SLOTS: Mapping[str, frozenset[str]] = {
    "accountId": STRING, "userId": STRING, "sessionId": STRING, "createdAt": INTEGER,
    "feature": STRING, "module": STRING, "product": STRING,
    "total": NUMBER, "timeSpent": NUMBER, "activeDuration": NUMBER,
    "details": OBJECT,
}
FRESHPAINT_SLOTS: Mapping[str, frozenset[str]] = {
    "distinct_id": STRING, "time": NUMBER, "$device_id": STRING, "$insert_id": STRING, "$ip": STRING,
}


# ---------------------------------------------------------------------------------------------------------
# Conversions.  Each takes a non-None value and a context string (names rule and output field) used only
# in the error message; each raises MappingFailed when the value does not convert.

ConvertFn: TypeAlias = Callable[[Any, str], Any]

_TRUE_STRINGS = frozenset({"true", "1", "yes", "y", "on"})
_FALSE_STRINGS = frozenset({"false", "0", "no", "n", "off"})


def _fail(value: Any, convert: Convert, ctx: str, why: str = "") -> MappingFailed:
    # The value's type, never the value: event data has no business in logs and metric labels.
    detail = f": {why}" if why else ""
    return MappingFailed(f"{ctx}: cannot apply convert '{convert}' to a {type(value).__name__} value{detail}")


def _as_int(value: Any, convert: Convert, ctx: str) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise _fail(value, convert, ctx)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(value, convert, ctx, "not a finite number")
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise _fail(value, convert, ctx, "not a number") from None
            if not math.isfinite(number) or not number.is_integer():
                raise _fail(value, convert, ctx, "not an integer") from None
            return int(number)
    if isinstance(value, int):  # int subclasses
        return int(value)
    raise _fail(value, convert, ctx)


def _as_float(value: Any, convert: Convert, ctx: str) -> float:
    if isinstance(value, bool):
        raise _fail(value, convert, ctx)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise _fail(value, convert, ctx, "not a number") from None
    else:
        raise _fail(value, convert, ctx)
    if not math.isfinite(number):
        raise _fail(value, convert, ctx, "not a finite number")
    return number


EPOCH_MS_MIN = 100_000_000_000
"""1973-03-03: anything earlier is a producer bug (seconds sent as milliseconds, or a zero), and the
destinations would drop it silently (Freshsuccess inside a 200) or misfile it."""
EPOCH_MS_MAX = 4_102_444_800_000
"""2100-01-01."""


def _in_range(ms: int, convert: Convert, ctx: str) -> int:
    if EPOCH_MS_MIN <= ms <= EPOCH_MS_MAX:
        return ms
    raise _fail(ms, convert, ctx, "outside 1973-2100 epoch milliseconds")


def to_epoch_ms(value: Any, ctx: str) -> int:
    """Epoch milliseconds as an int, 1973-2100: ints pass, floats truncate, datetimes convert (naive = UTC)."""
    if type(value) is int:
        return value if EPOCH_MS_MIN <= value <= EPOCH_MS_MAX else _in_range(value, Convert.EPOCH_MS, ctx)
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return _in_range(int(aware.timestamp() * 1000), Convert.EPOCH_MS, ctx)
    if isinstance(value, str):
        raise _fail(value, Convert.EPOCH_MS, ctx)
    return _in_range(_as_int(value, Convert.EPOCH_MS, ctx), Convert.EPOCH_MS, ctx)


def epoch_ms_to_s(value: Any, ctx: str) -> float:
    """Epoch milliseconds (1973-2100) to float seconds keeping the millisecond fraction (Freshpaint ``time``)."""
    if type(value) is int and EPOCH_MS_MIN <= value <= EPOCH_MS_MAX:
        return value / 1000
    if isinstance(value, datetime) or type(value) is int:
        return to_epoch_ms(value, ctx) / 1000
    if isinstance(value, bool | str):
        raise _fail(value, Convert.EPOCH_MS_TO_S, ctx)
    return _in_range(round(_as_float(value, Convert.EPOCH_MS_TO_S, ctx)), Convert.EPOCH_MS_TO_S, ctx) / 1000


def ms_to_s(value: Any, ctx: str) -> float:
    """A duration in milliseconds as float seconds."""
    if type(value) is int:
        return value / 1000
    if isinstance(value, str):
        raise _fail(value, Convert.MS_TO_S, ctx)
    return _as_float(value, Convert.MS_TO_S, ctx) / 1000


def s_to_ms(value: Any, ctx: str) -> int:
    """Seconds (int or float) as whole milliseconds, rounded to nearest."""
    if isinstance(value, str):
        raise _fail(value, Convert.S_TO_MS, ctx)
    return round(_as_float(value, Convert.S_TO_MS, ctx) * 1000)


def to_string(value: Any, ctx: str) -> str:
    """Scalars as text: booleans as ``true``/``false`` (JSON spelling), numbers as Python prints them."""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(value, Convert.STRING, ctx, "not a finite number")
        return repr(value)
    raise _fail(value, Convert.STRING, ctx)


def to_int(value: Any, ctx: str) -> int:
    """Integers from numbers (truncating), numeric strings and booleans (0/1)."""
    if isinstance(value, bool):
        return int(value)
    return _as_int(value, Convert.INT, ctx)


def to_float(value: Any, ctx: str) -> float:
    """Finite floats from numbers and numeric strings."""
    return _as_float(value, Convert.FLOAT, ctx)


def to_bool(value: Any, ctx: str) -> bool:
    """Booleans; 0/1; strings true/false, yes/no, on/off, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE_STRINGS:
            return True
        if lowered in _FALSE_STRINGS:
            return False
        raise _fail(value, Convert.BOOL, ctx, "not a recognised boolean word")
    raise _fail(value, Convert.BOOL, ctx)


def _as_bytes(value: Any, convert: Convert, ctx: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise _fail(value, convert, ctx)


def to_base64(value: Any, ctx: str) -> str:
    """Bytes (Avro ``bytes``/``fixed``) as standard base64 text with padding."""
    return base64.b64encode(_as_bytes(value, Convert.BASE64, ctx)).decode("ascii")


def to_hex(value: Any, ctx: str) -> str:
    """Bytes (Avro ``bytes``/``fixed``) as lower-case hexadecimal text."""
    return _as_bytes(value, Convert.HEX, ctx).hex()


def _decimal(value: Any, scale: int) -> Decimal | None:
    """An Avro decimal as decoded without logical types (big-endian two's complement of the unscaled
    value), or a ``Decimal`` already; ``None`` for anything else."""
    if isinstance(value, bytes | bytearray | memoryview):
        # From text, so no context precision rounds it (Decimal arithmetic would, at 28 digits).
        return Decimal(f"{int.from_bytes(value, 'big', signed=True)}E-{scale}")
    if isinstance(value, Decimal):
        return value
    return None


def decimal_converter(convert: Convert, scale: int) -> ConvertFn:
    """``convert`` (``string`` or ``float``) for a field holding an Avro decimal of ``scale``.

    ``string`` gives the exact value in plain notation (``"-123.45"``, never an exponent); ``float`` the
    nearest float. Values that are not decimals (a ``default:``) go through the ordinary converter.
    """
    if convert is Convert.STRING:
        def decimal_to_string(value: Any, ctx: str) -> str:
            number = _decimal(value, scale)
            if number is None:
                return to_string(value, ctx)
            if not number.is_finite():
                raise _fail(value, convert, ctx, "not a finite number")
            return format(number, "f")
        return decimal_to_string
    if convert is Convert.FLOAT:
        def decimal_to_float(value: Any, ctx: str) -> float:
            number = _decimal(value, scale)
            if number is None:
                return to_float(value, ctx)
            result = float(number)
            if not math.isfinite(result):
                raise _fail(value, convert, ctx, "too large for a float")
            return result
        return decimal_to_float
    raise ValueError(f"convert {convert.value!r} does not read decimals")


DECIMAL_CONVERTS = frozenset({Convert.STRING, Convert.FLOAT})


CONVERTERS: Mapping[Convert, ConvertFn] = {
    Convert.EPOCH_MS: to_epoch_ms,
    Convert.EPOCH_MS_TO_S: epoch_ms_to_s,
    Convert.MS_TO_S: ms_to_s,
    Convert.S_TO_MS: s_to_ms,
    Convert.STRING: to_string,
    Convert.INT: to_int,
    Convert.FLOAT: to_float,
    Convert.BOOL: to_bool,
    Convert.BASE64: to_base64,
    Convert.HEX: to_hex,
}

CONVERT_INPUT_KINDS: Mapping[Convert, frozenset[str]] = {
    Convert.EPOCH_MS: NUMBER,
    Convert.EPOCH_MS_TO_S: NUMBER,
    Convert.MS_TO_S: NUMBER,
    Convert.S_TO_MS: NUMBER,
    Convert.STRING: frozenset({"string", "int", "float", "bool"}),
    Convert.INT: frozenset({"string", "int", "float", "bool"}),
    Convert.FLOAT: frozenset({"string", "int", "float"}),
    Convert.BOOL: frozenset({"string", "int", "bool"}),
    Convert.BASE64: frozenset({"bytes"}),
    Convert.HEX: frozenset({"bytes"}),
}

CONVERT_OUTPUT_KINDS: Mapping[Convert, frozenset[str]] = {
    Convert.EPOCH_MS: INTEGER,
    Convert.EPOCH_MS_TO_S: frozenset({"float"}),
    Convert.MS_TO_S: frozenset({"float"}),
    Convert.S_TO_MS: INTEGER,
    Convert.STRING: STRING,
    Convert.INT: INTEGER,
    Convert.FLOAT: frozenset({"float"}),
    Convert.BOOL: frozenset({"bool"}),
    Convert.BASE64: STRING,
    Convert.HEX: STRING,
}


# ---------------------------------------------------------------------------------------------------------
# What a destination's rules read


def fields_read(model: MappingModel, destination: Destination, *, event_id_field: str) -> frozenset[str]:
    """The top-level record fields that ``destination``'s mapping function can read: the ``when:`` of each
    rule with outputs for it and those outputs' values (``$insert_id`` reads ``event_id_field``). A decoder
    may leave every other field out (``$topic`` and ``$record_name`` are not record fields)."""
    found: set[str] = set()

    def value(item: Value | None) -> None:
        while item is not None:
            expression(item.expr)
            item = item.default

    def expression(expr: Expr) -> None:
        if isinstance(expr, FieldRef):
            found.add(expr.path[0])
        elif isinstance(expr, Template):
            for part in expr.parts:
                if isinstance(part, FieldRef):
                    found.add(part.path[0])
        elif isinstance(expr, ObjectOf):
            for _, entry in expr.entries:
                value(entry)
            value(expr.merge)
        elif isinstance(expr, InsertId):
            found.add(event_id_field)

    def predicate(when: Predicate) -> None:
        if isinstance(when, Compare):
            found.add(when.path[0])
        elif isinstance(when, AllOf | AnyOf):
            for item in when.items:
                predicate(item)
        elif isinstance(when, Not):
            predicate(when.item)

    for rule in model.rules:
        if destination is Destination.FRESHSUCCESS and rule.freshsuccess:
            predicate(rule.when)
            for fs in rule.freshsuccess:
                for _, field_value in fs.fields:
                    value(field_value)
        elif destination is Destination.FRESHPAINT and rule.freshpaint:
            predicate(rule.when)
            for fp in rule.freshpaint:
                value(fp.event)
                value(fp.user_props)
                for _, field_value in fp.properties:
                    value(field_value)
                if fp.pass_properties is not None:
                    found.add(fp.pass_properties.path[0])
    return frozenset(name for name in found if not name.startswith("$"))
