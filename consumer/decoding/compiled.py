"""Avro readers generated per writer schema: the body read straight from the record's bytes.

fastavro's ``schemaless_reader`` interprets the schema for every value: a dispatch on the type name per field
and a Python-level ``read()`` per byte of every number. A lane reads one or a few writer schemas for
millions of records, so :func:`compile_reader` writes, once per schema, a plain Python function that reads
exactly that layout from a ``bytes`` and an offset: no file object, no slicing off the framing header, no
dispatch. It produces the same values as fastavro (``tests/unit/test_compiled_reader.py`` checks that as a
property over generated schemas and records), about twice as fast (``bench/hotpath.py``).

Given the top-level fields a caller reads (``keep``), the others are skipped where they lie: a string is
stepped over by its length, without decoding it, and nothing is built for them, as fastavro does for fields a
projected reader schema leaves out (their bytes are not checked either).

Only reading without resolution is generated: a writer schema read as itself, or as a prefix of its
fields. Resolution against a different reader schema stays with fastavro, as do schemas this module does
not generate (recursive types, arrays of items that take no bytes); :func:`compile_reader` returns None for
those. Errors: a truncated body raises ``EOFError``, an out-of-range union or enum index or a negative
length raises ``ValueError``, bad UTF-8 raises ``UnicodeDecodeError``; the decoder turns each into a
dead-letter reason.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

Reader = Callable[[bytes, int], tuple[dict[str, Any], int]]
"""``read(buffer, offset) -> (record, offset after it)``; the offset may pass the end on a truncated body
(the caller compares it with ``len(buffer)``)."""

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class Unsupported(Exception):
    """The schema uses something this module does not generate: read it with fastavro."""


def _varint_tail(buffer: bytes, offset: int, first: int) -> tuple[int, int]:
    """The rest of a variable-length integer whose first byte ``first`` had its high bit set."""
    value = first & 0x7F
    shift = 7
    while True:
        byte = buffer[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise ValueError("a variable-length integer runs past 10 bytes")


def _bad(message: str) -> None:
    raise ValueError(message)


def compile_reader(schema: Mapping[str, Any], keep: frozenset[str] | None = None) -> Reader | None:
    """A reader for bodies written with the fastavro-parsed record ``schema`` (logical types stripped), or None
    when this module does not generate one for it. ``keep``: the top-level fields to read (None: every one);
    the record it returns holds only those."""
    try:
        source = _Generator().function(schema, keep)
    except Unsupported:
        return None
    namespace: dict[str, Any] = {"_tail": _varint_tail, "_bad": _bad, "_float": struct.Struct("<f").unpack_from,
                                 "_double": struct.Struct("<d").unpack_from}
    exec(compile(source, f"<avro reader {schema.get('name', '')}>", "exec"), namespace)
    read: Reader = namespace["read"]
    return read


class _Generator:
    """Writes the statements that read one value of a schema into a local variable."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names = 0
        self.named: dict[str, Mapping[str, Any]] = {}
        self.expanding: set[str] = set()

    def function(self, schema: Mapping[str, Any], keep: frozenset[str] | None = None) -> str:
        if schema.get("type") != "record":
            raise Unsupported("not a record")
        self.lines = ["def read(b, i):"]
        result = self.value(schema, 1, keep)
        self.lines.append(f"    return {result}, i")
        return "\n".join(self.lines) + "\n"

    def fresh(self) -> str:
        self.names += 1
        return f"v{self.names}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def long(self, depth: int, target: str) -> None:
        """``target`` = the next zig-zag variable-length long (one byte, the usual case, without a call)."""
        self.emit(depth, f"{target} = b[i]; i += 1")
        self.emit(depth, f"if {target} > 127: {target}, i = _tail(b, i, {target})")
        self.emit(depth, f"{target} = ({target} >> 1) ^ -({target} & 1)")

    def length(self, depth: int, target: str, what: str) -> None:
        """``target`` = the next length: a zig-zag long, refused when odd (negative), halved."""
        self.emit(depth, f"{target} = b[i]; i += 1")
        self.emit(depth, f"if {target} > 127: {target}, i = _tail(b, i, {target})")
        self.emit(depth, f"if {target} & 1: _bad('negative {what} length')")
        self.emit(depth, f"{target} >>= 1")

    def branch_index(self, depth: int, branches: list[Any]) -> tuple[str, list[str]]:
        """Read a union's branch index; returns the variable and, per branch, the value it is compared with.

        Up to 64 branches every writer writes the index as one byte, zig-zag encoded (branch k is ``2k``), so that
        byte is compared as it is; anything else (a negative index, one past the branches) is out of range."""
        index = self.fresh()
        if len(branches) <= 64:
            self.emit(depth, f"{index} = b[i]; i += 1")
            return index, [str(2 * position) for position in range(len(branches))]
        self.long(depth, index)
        return index, [str(position) for position in range(len(branches))]

    def resolved(self, schema: Any) -> Any:
        """``schema`` with named references and nested type objects unwrapped (registering the names it
        defines): a list (a union), a primitive's name, or a complex type's dict."""
        while True:
            if isinstance(schema, list):
                return schema
            if isinstance(schema, str):
                if schema in _PRIMITIVES:
                    return schema
                if schema not in self.named:
                    raise Unsupported(f"unknown named type {schema}")
                schema = self.named[schema]
            kind = schema.get("type")
            if isinstance(kind, (list, dict)):
                schema = kind
                continue
            if kind in _PRIMITIVES:
                return kind
            name = schema.get("name")
            if kind in ("record", "enum", "fixed") and isinstance(name, str):
                self.named.setdefault(name, schema)
            return schema

    def value(self, schema: Any, depth: int, keep: frozenset[str] | None = None) -> str:
        """Emit the reading of one ``schema`` value; returns the expression that holds it. ``keep``: of a record,
        the fields to read (None: every one); the others are skipped."""
        schema = self.resolved(schema)
        if isinstance(schema, list):
            return self.union(schema, depth)
        if isinstance(schema, str):
            return self.primitive(schema, depth)
        kind, name = schema.get("type"), schema.get("name")
        if kind == "record":
            if name in self.expanding:
                raise Unsupported(f"recursive type {name}")
            self.expanding.add(name)
            fields = []
            for f in schema.get("fields", []):
                if keep is None or f["name"] in keep:
                    fields.append((str(f["name"]), self.value(f["type"], depth)))
                else:
                    self.skip(f["type"], depth)
            self.expanding.discard(name)
            target = self.fresh()
            self.emit(depth, f"{target} = {{" + ", ".join(f"{n!r}: {v}" for n, v in fields) + "}")
            return target
        if kind == "enum":
            symbols = tuple(schema["symbols"])
            target = self.fresh()
            self.long(depth, target)
            self.emit(depth, f"if not 0 <= {target} < {len(symbols)}: _bad('enum index out of range')")
            self.emit(depth, f"{target} = {symbols!r}[{target}]")
            return target
        if kind == "fixed":
            target = self.fresh()
            size = int(schema["size"])
            self.emit(depth, f"{target} = b[i:i + {size}]; i += {size}")
            return target
        if kind in ("array", "map"):
            return self.blocks(schema, kind, depth)
        raise Unsupported(f"type {kind!r}")

    def primitive(self, kind: str, depth: int) -> str:
        if kind == "null":
            return "None"
        target = self.fresh()
        if kind in ("int", "long"):
            self.long(depth, target)
        elif kind == "boolean":
            self.emit(depth, f"{target} = b[i] != 0; i += 1")
        elif kind == "float":
            self.emit(depth, f"{target} = _float(b, i)[0]; i += 4")
        elif kind == "double":
            self.emit(depth, f"{target} = _double(b, i)[0]; i += 8")
        else:  # bytes, string
            self.length(depth, target, kind)
            end = "e" + target
            self.emit(depth, f"{end} = i + {target}")
            decode = ".decode()" if kind == "string" else ""
            self.emit(depth, f"{target} = b[i:{end}]{decode}; i = {end}")
        return target

    def union(self, branches: list[Any], depth: int) -> str:
        index, expected = self.branch_index(depth, branches)
        target = self.fresh()
        for position, branch in enumerate(branches):
            self.emit(depth, f"{'if' if position == 0 else 'elif'} {index} == {expected[position]}:")
            self.emit(depth + 1, f"{target} = {self.value(branch, depth + 1)}")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"_bad('union index out of range'); {target} = None")
        return target

    def blocks(self, schema: Mapping[str, Any], kind: str, depth: int) -> str:
        """Arrays and maps: blocks of ``count`` items until a zero count; a negative count is followed by the
        block's size in bytes. A count above the bytes left is refused: every item takes at least one."""
        items = schema["items"] if kind == "array" else schema["values"]
        if kind == "array" and not _takes_bytes(items, self.named):
            raise Unsupported("array of items that take no bytes")
        target, count, size, step = self.fresh(), self.fresh(), self.fresh(), self.fresh()
        self.emit(depth, f"{target} = {'[]' if kind == 'array' else '{}'}")
        self.long(depth, count)
        self.emit(depth, f"while {count}:")
        inner = depth + 1
        self.emit(inner, f"if {count} < 0:")
        self.emit(inner + 1, f"{count} = -{count}")
        self.long(inner + 1, size)
        self.emit(inner, f"if {count} > len(b) - i: raise EOFError('{kind} block of ' + str({count}) + ' items "
                         "exceeds the body')")
        self.emit(inner, f"for {step} in range({count}):")
        if kind == "map":
            key = self.primitive("string", inner + 1)
            item = self.value(items, inner + 1)
            self.emit(inner + 1, f"{target}[{key}] = {item}")
        else:
            item = self.value(items, inner + 1)
            self.emit(inner + 1, f"{target}.append({item})")
        self.long(inner, count)
        return target

    def skip(self, schema: Any, depth: int) -> None:
        """Emit the stepping over of one ``schema`` value: the offset moves past it and nothing is built."""
        schema = self.resolved(schema)
        if isinstance(schema, list):
            index, expected = self.branch_index(depth, schema)
            for position, branch in enumerate(schema):
                self.emit(depth, f"{'if' if position == 0 else 'elif'} {index} == {expected[position]}:")
                self.skip_or_pass(branch, depth + 1)
            self.emit(depth, "else:")
            self.emit(depth + 1, "_bad('union index out of range')")
            return
        if isinstance(schema, str):
            self.skip_primitive(schema, depth)
            return
        kind, name = schema.get("type"), schema.get("name")
        if kind == "record":
            if name in self.expanding:
                raise Unsupported(f"recursive type {name}")
            self.expanding.add(name)
            for f in schema.get("fields", []):
                self.skip(f["type"], depth)
            self.expanding.discard(name)
        elif kind == "enum":
            self.skip_primitive("long", depth)
        elif kind == "fixed":
            self.emit(depth, f"i += {int(schema['size'])}")
        elif kind in ("array", "map"):
            self.skip_blocks(schema, kind, depth)
        else:
            raise Unsupported(f"type {kind!r}")

    def skip_or_pass(self, schema: Any, depth: int) -> None:
        before = len(self.lines)
        self.skip(schema, depth)
        if len(self.lines) == before:
            self.emit(depth, "pass")

    def skip_primitive(self, kind: str, depth: int) -> None:
        if kind in ("int", "long"):  # every byte but the last has its high bit set
            target = self.fresh()
            self.emit(depth, f"{target} = b[i]; i += 1")
            self.emit(depth, f"while {target} > 127: {target} = b[i]; i += 1")
        elif kind == "boolean":
            self.emit(depth, "i += 1")
        elif kind == "float":
            self.emit(depth, "i += 4")
        elif kind == "double":
            self.emit(depth, "i += 8")
        elif kind in ("bytes", "string"):
            target = self.fresh()
            self.length(depth, target, kind)
            self.emit(depth, f"i += {target}")

    def skip_blocks(self, schema: Mapping[str, Any], kind: str, depth: int) -> None:
        """Arrays and maps: a block written with its size in bytes is stepped over whole."""
        items = schema["items"] if kind == "array" else schema["values"]
        if kind == "array" and not _takes_bytes(items, self.named):
            raise Unsupported("array of items that take no bytes")
        count, size, step = self.fresh(), self.fresh(), self.fresh()
        self.long(depth, count)
        self.emit(depth, f"while {count}:")
        inner = depth + 1
        self.emit(inner, f"if {count} < 0:")
        self.long(inner + 1, size)
        self.emit(inner + 1, f"if {size} < 0: _bad('negative {kind} block size')")
        self.emit(inner + 1, f"i += {size}")
        self.emit(inner, "else:")
        self.emit(inner + 1, f"if {count} > len(b) - i: raise EOFError('{kind} block of ' + str({count}) + ' items "
                             "exceeds the body')")
        self.emit(inner + 1, f"for {step} in range({count}):")
        if kind == "map":
            self.skip_primitive("string", inner + 2)
        self.skip_or_pass(items, inner + 2)
        self.long(inner, count)


def _takes_bytes(schema: Any, named: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether every value of ``schema`` takes at least one byte (so a block count can be checked against the
    bytes left)."""
    if isinstance(schema, list):
        return True  # the branch index
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return schema != "null"
        schema = named.get(schema, {"type": "record", "fields": []})
    kind = schema.get("type")
    if isinstance(kind, (list, dict)):
        return _takes_bytes(kind, named)
    if kind in _PRIMITIVES:
        return bool(kind != "null")
    if kind == "fixed":
        return int(schema.get("size", 0)) > 0
    if kind == "record":
        return any(_takes_bytes(f["type"], named) for f in schema.get("fields", []))
    return True  # enum index; array/map block count
