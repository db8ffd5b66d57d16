"""Mapping YAML -> model objects, checked against the reader schema, with every problem collected.

An operator who fixes one typo should not have to redeploy to find the next one, so nothing here stops at
the first problem: each check appends ``"FILE:LINE: rule 'NAME': where: message"`` and carries on with
what it can still understand.  The result is used only when the problem list is empty.

What is checked: the shape of the file (unknown keys with "did you mean"), field paths against the reader
schema, conversions against field types, value types against what each destination slot takes, and that
every destination-required field is provided by the output or by ``defaults:``.  A nullable field mapped
to a required slot without a ``default:`` is allowed: it is checked per event (``MissingRequiredField``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from typing import Any, TypeVar

from consumer.errors import MappingFailed
from consumer.mapping.model import (
    CONVERT_INPUT_KINDS,
    CONVERT_OUTPUT_KINDS,
    CONVERTERS,
    DECIMAL_CONVERTS,
    FRESHPAINT_REQUIRED_PROPERTIES,
    FRESHPAINT_REQUIRED_TEXT,
    FRESHPAINT_RESERVED_PROPERTIES,
    FRESHPAINT_SLOTS,
    FRESHSUCCESS_ACTIONS,
    FRESHSUCCESS_BASE_FIELDS,
    FRESHSUCCESS_REQUIRED_TEXT,
    FRESHSUCCESS_SLOTS,
    INSERT_ID_RULE,
    JSON_KINDS,
    NUMBER,
    OBJECT,
    ORDERING_OPS,
    RECORD_NAME_FIELD,
    STRING,
    TOPIC_FIELD,
    AllOf,
    Always,
    AnyOf,
    Compare,
    Const,
    Convert,
    Expr,
    FieldPath,
    FieldRef,
    FreshpaintOutput,
    FreshsuccessOutput,
    InsertId,
    MappingModel,
    Not,
    ObjectOf,
    Op,
    Output,
    Predicate,
    Rule,
    Template,
    Value,
    is_valid_insert_id,
)
from consumer.yamlsource import Located, PathKey, closest, dotted, find_unknown_keys

__all__ = ["SchemaType", "build_model", "parse_schema", "parse_template"]

SUPPORTED_VERSIONS = (1,)
TOP_KEYS = ("version", "defaults", "rules")
DEFAULTS_KEYS = ("freshsuccess", "freshpaint")
RULE_KEYS = ("name", "description", "when", "freshsuccess", "freshpaint")
FRESHSUCCESS_OUTPUT_KEYS = ("action", "fields")
FRESHPAINT_OUTPUT_KEYS = ("event", "identify", "properties", "pass_properties", "integrations", "user_props")
EXPR_KEYS = ("field", "const", "template", "object", "insert_id")
VALUE_KEYS = (*EXPR_KEYS, "default", "convert", "merge")
COMBINATOR_KEYS = ("all", "any", "not")
OP_KEYS = tuple(op.value for op in Op)
PASS_PROPERTIES_DEFAULT_FIELD = "properties"
MILLIS_LOGICAL = frozenset({"timestamp-millis", "local-timestamp-millis", "time-millis"})
MICROS_LOGICAL = frozenset({"timestamp-micros", "local-timestamp-micros", "time-micros"})
TIMESTAMP_LOGICAL = MILLIS_LOGICAL | MICROS_LOGICAL

_O = TypeVar("_O", bound=Output)


# ---------------------------------------------------------------------------------------------------------
# Reader schema, reduced to what the checks need


@dataclass(frozen=True, eq=False)
class _Kinds:
    """What values look like in JSON: kinds (empty = always null), whether null is possible, the Avro logical
    type and decimal scale they carry. The checks ask this alike of schema types and of expressions."""

    kinds: frozenset[str]
    nullable: bool
    logical: str | None = field(default=None, kw_only=True)
    scale: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True, eq=False)
class SchemaType(_Kinds):
    """One Avro type as the mapping sees it: JSON kinds it decodes to, nullability, and what is inside."""

    avro: str
    fields: dict[str, SchemaType] | None = None  # a record (or a union holding one)
    values: SchemaType | None = None  # a map (or a union holding one)
    items: SchemaType | None = None  # an array (or a union holding one)
    branches: tuple[SchemaType, ...] = ()  # a union: its non-null branches


_PRIMITIVES: Mapping[str, tuple[frozenset[str], bool]] = {
    "null": (frozenset(), True),
    "boolean": (frozenset({"bool"}), False),
    "int": (frozenset({"int"}), False),
    "long": (frozenset({"int"}), False),
    "float": (frozenset({"float"}), False),
    "double": (frozenset({"float"}), False),
    "string": (frozenset({"string"}), False),
    "bytes": (frozenset({"bytes"}), False),
}


class SchemaUnsupported(ValueError):
    """The reader schema is not one this module can reason about (a bug in the schema, not the mapping)."""


def parse_schema(schema: Any) -> SchemaType:
    """Reduce an Avro schema (parsed JSON) to ``SchemaType``; named types may refer to one another."""
    return _SchemaParser().parse(schema, None)


class _SchemaParser:
    def __init__(self) -> None:
        self.names: dict[str, SchemaType] = {}

    def parse(self, schema: Any, namespace: str | None) -> SchemaType:
        if isinstance(schema, str):
            return self._named_or_primitive(schema, namespace)
        if isinstance(schema, list):
            return self._union([self.parse(branch, namespace) for branch in schema])
        if not isinstance(schema, dict) or "type" not in schema:
            raise SchemaUnsupported(f"not an Avro type: {schema!r:.80}")
        kind = schema["type"]
        logical = schema.get("logicalType")
        if kind in ("record", "error"):
            return self._record(schema, namespace)
        if kind == "enum":
            return self._register(schema, namespace, SchemaType(frozenset({"string"}), False, "enum"))
        if kind == "fixed":
            if logical == "decimal":
                node = SchemaType(frozenset({"bytes"}), False, "fixed", logical="decimal", scale=_scale(schema))
                return self._register(schema, namespace, node, suffix=" (decimal)")
            return self._register(schema, namespace, SchemaType(frozenset({"bytes"}), False, "fixed"))
        if kind == "array":
            items = self.parse(schema.get("items", "null"), namespace)
            return SchemaType(frozenset({"array"}), False, f"array<{items.avro}>", items=items)
        if kind == "map":
            values = self.parse(schema.get("values", "null"), namespace)
            return SchemaType(OBJECT, False, f"map<{values.avro}>", values=values)
        if isinstance(kind, str) and kind in _PRIMITIVES:
            kinds, nullable = _PRIMITIVES[kind]
            avro = f"{kind} ({logical})" if isinstance(logical, str) else kind
            scale = _scale(schema) if kind == "bytes" and logical == "decimal" else None
            return SchemaType(kinds, nullable, avro, logical=logical if isinstance(logical, str) else None,
                              scale=scale)
        return self.parse(kind, namespace)  # {"type": "SomeNamedType"} or {"type": {...}}

    def _named_or_primitive(self, name: str, namespace: str | None) -> SchemaType:
        if name in _PRIMITIVES:
            kinds, nullable = _PRIMITIVES[name]
            return SchemaType(kinds, nullable, name)
        for candidate in (f"{namespace}.{name}" if namespace and "." not in name else name, name):
            if candidate in self.names:
                return self.names[candidate]
        raise SchemaUnsupported(f"unknown named type {name!r}")

    def _register(self, schema: dict[str, Any], namespace: str | None, node: SchemaType,
                  suffix: str = "") -> SchemaType:
        """``node`` named after the schema's name (then ``suffix``) in its ``avro``, and known by that name."""
        name = str(schema.get("name", ""))
        space = schema.get("namespace", namespace)
        full = name if "." in name or not space else f"{space}.{name}"
        node = replace(node, avro=f"{node.avro} {name.rsplit('.', 1)[-1]}".strip() + suffix)
        self.names[full] = node
        self.names.setdefault(name, node)
        return node

    def _record(self, schema: dict[str, Any], namespace: str | None) -> SchemaType:
        node = self._register(schema, namespace, SchemaType(OBJECT, False, "record", fields={}))
        name = str(schema.get("name", ""))
        space = name.rsplit(".", 1)[0] if "." in name else schema.get("namespace", namespace)
        assert node.fields is not None
        for spec in schema.get("fields", []):
            node.fields[str(spec["name"])] = self.parse(spec["type"], space)
        return node

    @staticmethod
    def _union(branches: list[SchemaType]) -> SchemaType:
        kinds = frozenset().union(*(b.kinds for b in branches))
        non_null = [b for b in branches if b.kinds]
        records = [b for b in non_null if b.fields is not None]
        maps = [b for b in non_null if b.values is not None]
        arrays = [b for b in non_null if b.items is not None]
        logicals = {b.logical for b in non_null}
        scales = {b.scale for b in non_null}
        return SchemaType(
            kinds=kinds,
            nullable=any(b.nullable for b in branches),
            avro=" | ".join(b.avro for b in branches),
            logical=logicals.pop() if len(logicals) == 1 else None,
            fields=records[0].fields if len(records) == 1 else None,
            values=maps[0].values if len(maps) == 1 else None,
            items=arrays[0].items if len(arrays) == 1 else None,
            scale=scales.pop() if len(scales) == 1 else None,
            branches=tuple(non_null),
        )


def _scale(schema: dict[str, Any]) -> int:
    scale = schema.get("scale", 0)
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 0:
        raise SchemaUnsupported(f"decimal scale must be a non-negative integer, got {scale!r:.40}")
    return scale


def _parts(node: SchemaType) -> tuple[SchemaType, ...]:
    """The types a value of ``node`` can be: a union's non-null branches, else ``node`` itself."""
    return node.branches or (node,)


def _members(node: SchemaType) -> list[SchemaType]:
    """The types of the direct members (record fields, map values) a value of ``node`` can hold."""
    members: list[SchemaType] = []
    for part in _parts(node):
        if part.fields is not None:
            members.extend(part.fields.values())
        if part.values is not None:
            members.append(part.values)
    return members


def _json_fix(node: _Kinds) -> tuple[str, str]:
    """(what the value is, the conversion that makes it JSON) for a bytes-like type."""
    if node.logical == "decimal":
        return "a decimal", "'convert: string' (exact text) or 'convert: float'"
    return "bytes", "'convert: base64' or 'convert: hex'"


def _nested_unjsonable(node: SchemaType, where: str) -> str | None:
    """Why a value of ``node`` (a record, map or list) would hold bytes JSON cannot carry, or None.

    Looks at every depth, shallowest first (so the message names the nearest offender); a named type that
    refers to itself is visited once. ``node``'s own bytes are not its business: a conversion can apply
    to them (check_slot reports them otherwise).
    """
    seen: set[int] = set()
    queue: deque[tuple[SchemaType, str, bool]] = deque([(node, where, True)])
    while queue:
        current, path, top = queue.popleft()
        for part in _parts(current):
            if id(part) in seen:
                continue
            seen.add(id(part))
            for name, child in (part.fields or {}).items():
                inner = f"{path}.{name}"
                if "bytes" in child.kinds:
                    thing, fix = _json_fix(child)
                    return (f"holds {thing} in '{inner}' ({child.avro}), which JSON cannot carry; map '{inner}' "
                            f"on its own with {fix} (and the other fields you need as entries of an object)")
                queue.append((child, inner, False))
            what = "is" if top else f"holds in '{path}'"
            if part.values is not None:
                if "bytes" in part.values.kinds:
                    thing, fix = _json_fix(part.values)
                    return (f"{what} a map of {thing}, which JSON cannot carry; map the keys you need one by "
                            f"one, e.g. {{field: {path}.KEY}} with {fix}")
                queue.append((part.values, f"{path}.KEY", False))
            if part.items is not None:
                if "bytes" in part.items.kinds:
                    thing, fix = _json_fix(part.items)
                    return (f"{what} a list of {thing}, which JSON cannot carry; {fix} apply to single values, "
                            "not to lists, so leave it out of the output")
                queue.append((part.items, f"{path}[]", False))
    return None


def field_ref(ref: FieldPath, node: SchemaType) -> FieldRef:
    """A ``FieldRef`` carrying what the compiler needs to know about NaN/infinity and null members."""
    members = _members(node)
    return FieldRef(
        ref,
        may_be_float="float" in node.kinds,
        members_may_be_float=any("float" in m.kinds for m in members),
        members_may_be_null=any(m.nullable for m in members),
    )


# ---------------------------------------------------------------------------------------------------------
# Static types of value expressions


@dataclass(frozen=True)
class ExprType(_Kinds):
    """What an expression can produce, and how messages describe the expression."""

    describe: str


def _kind_of_constant(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, bool):
        return frozenset({"bool"})
    if isinstance(value, int):
        return frozenset({"int"})
    if isinstance(value, float):
        return frozenset({"float"})
    if isinstance(value, str):
        return STRING
    if isinstance(value, dict):
        return OBJECT
    if isinstance(value, list):
        return frozenset({"array"})
    return frozenset({type(value).__name__})


def _describe_kinds(kinds: Iterable[str]) -> str:
    names = {"string": "a string", "int": "an integer", "float": "a float", "bool": "a boolean",
             "object": "an object", "array": "a list", "bytes": "bytes"}
    ordered = sorted(kinds)
    return " or ".join(names.get(k, k) for k in ordered) if ordered else "null"


def _not_json(value: Any) -> str | None:
    """Why a YAML constant cannot go into JSON (YAML turns unquoted dates into date objects), or None."""
    if isinstance(value, datetime | date | time):
        return "is a date/time, which JSON cannot carry; quote it to make it a string"
    if isinstance(value, bytes):
        return "is binary, which JSON cannot carry"
    if isinstance(value, float) and not math.isfinite(value):
        return "is NaN or infinite, which JSON cannot carry"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"has a non-string key {key!r}"
            why = _not_json(item)
            if why:
                return why
    if isinstance(value, list):
        for item in value:
            why = _not_json(item)
            if why:
                return why
    return None


# ---------------------------------------------------------------------------------------------------------
# Templates


def parse_template(text: str) -> tuple[tuple[str | FieldPath, ...], str | None]:
    """Split ``"{feature} Used"`` into literal text and field paths; ``{{``/``}}`` are literal braces.

    Returns ``(parts, error)``; field paths are dotted names split on ``.``.
    """
    parts: list[str | FieldPath] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "{" and text.startswith("{{", i):
            literal.append("{")
            i += 2
        elif char == "}" and text.startswith("}}", i):
            literal.append("}")
            i += 2
        elif char == "{":
            end = text.find("}", i + 1)
            if end < 0:
                return (), f"unclosed '{{' at position {i} (write '{{{{' for a literal brace)"
            name = text[i + 1:end].strip()
            if not name or "{" in name:
                return (), f"empty or malformed placeholder at position {i}"
            segments = tuple(s.strip() for s in name.split("."))
            if any(not s for s in segments):
                return (), f"malformed field path {name!r} in placeholder"
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(segments)
            i = end + 1
        elif char == "}":
            return (), f"unmatched '}}' at position {i} (write '}}}}' for a literal brace)"
        else:
            literal.append(char)
            i += 1
    if literal:
        parts.append("".join(literal))
    return tuple(parts), None


# ---------------------------------------------------------------------------------------------------------
# The builder


@dataclass(frozen=True)
class _Typed:
    value: Value
    type: ExprType


def build_model(located: Located, reader_schema: Any, *, source: str) -> tuple[MappingModel | None, list[str]]:
    """Parse and check the mapping; returns ``(model, [])`` or ``(None, problems)``."""
    try:
        schema = parse_schema(reader_schema)
    except (SchemaUnsupported, KeyError, TypeError) as exc:
        return None, [f"{source}: the reader schema cannot be used: {exc}"]
    if schema.fields is None:
        return None, [f"{source}: the reader schema is not a record"]
    assert schema.fields is not None
    topic = SchemaType(frozenset({"string"}), False, "string (the record's topic)")
    record_name = SchemaType(frozenset({"string"}), False, "string (the writer schema's full name)")
    origin = {TOPIC_FIELD: topic, RECORD_NAME_FIELD: record_name}
    builder = _Builder(located, replace(schema, fields={**schema.fields, **origin}), source)
    model = builder.build()
    if builder.problems:
        return None, builder.problems
    return model, []


class _Builder:
    def __init__(self, located: Located, schema: SchemaType, source: str) -> None:
        self.loc = located
        self.schema = schema
        self.source = source
        self._problems: list[tuple[int, str]] = []
        self.rule_names: dict[int, str] = {}
        self.broken_defaults: set[str] = set()  # reported once where they stand, not again per output
        self.reads_topic = False
        self.reads_record_name = False

    # -- reporting --------------------------------------------------------------------------------------

    def problem(self, path: PathKey, message: str) -> None:
        line = self.loc.nearest_line(path)
        where = f"{self.source}:{line}" if line is not None else self.source
        if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
            name = self.rule_names.get(path[1])
            scope = f"rule '{name}'" if name is not None else f"rule #{path[1] + 1} (unnamed)"
            rest = dotted(path[2:])
            text = f"{where}: {scope}: {rest}: {message}" if rest else f"{where}: {scope}: {message}"
        elif path:
            text = f"{where}: {dotted(path)}: {message}"
        else:
            text = f"{where}: {message}"
        self._problems.append((line or 0, text))

    @property
    def problems(self) -> list[str]:
        """Every problem, in file order (a stable sort keeps same-line problems in the order found)."""
        return [text for _, text in sorted(self._problems, key=lambda item: item[0])]

    def unknown_keys(self, path: PathKey, allowed: Iterable[str]) -> None:
        for unknown in find_unknown_keys(self.loc, path, tuple(allowed)):
            self.problem(unknown.path, unknown.message)

    def mapping_at(self, path: PathKey, raw: Any, what: str, keys: Iterable[str] | None = None
                   ) -> dict[Any, Any] | None:
        """``raw`` when it is a mapping (given ``keys``, any other key it has is reported), else None."""
        if isinstance(raw, dict):
            if keys is not None:
                self.unknown_keys(path, keys)
            return raw
        self.problem(path, f"{what} must be a mapping (key: value lines), not {_yaml_kind(raw)}")
        return None

    def mapping_under(self, path: PathKey, parent: dict[Any, Any], key: str, what: str) -> dict[Any, Any] | None:
        """``parent[key]`` as a mapping; None when it is absent or null (nothing to check) or not a mapping."""
        raw = parent.get(key)
        return None if raw is None else self.mapping_at((*path, key), raw, what)

    def list_at(self, path: PathKey, raw: Any, what: str) -> list[Any] | None:
        if isinstance(raw, list):
            return raw
        hint = " (start each item with '- ')" if isinstance(raw, dict) else ""
        self.problem(path, f"{what} must be a list{hint}, not {_yaml_kind(raw)}")
        return None

    # -- top level --------------------------------------------------------------------------------------

    def build(self) -> MappingModel | None:
        doc = self.loc.value
        if doc is None:
            self.problem((), "the mapping file is empty")
            return None
        top = self.mapping_at((), doc, "the mapping file", TOP_KEYS)
        if top is None:
            return None
        version = top.get("version")
        if "version" not in top:
            self.problem((), f"'version' is missing (use: version: {SUPPORTED_VERSIONS[-1]})")
        elif version not in SUPPORTED_VERSIONS or isinstance(version, bool):
            self.problem(("version",), f"unsupported version {version!r} (supported: {SUPPORTED_VERSIONS})")

        fs_defaults, fp_defaults = self.defaults(top.get("defaults"))

        rules_raw = top.get("rules")
        rules: list[Rule] = []
        if "rules" not in top:
            self.problem((), "'rules' is missing")
        else:
            items = self.list_at(("rules",), rules_raw, "rules")
            if items is not None and not items:
                self.problem(("rules",), "there are no rules: every event would be skipped")
            for index, raw_rule in enumerate(items or []):
                rule = self.rule(index, raw_rule, fs_defaults, fp_defaults)
                if rule is not None:
                    rules.append(rule)
        version_int = version if isinstance(version, int) else 0
        return MappingModel(version=version_int, rules=tuple(rules), source=self.source,
                            reads_topic=self.reads_topic, reads_record_name=self.reads_record_name)

    def defaults(self, raw: Any) -> tuple[dict[str, _Typed], dict[str, _Typed]]:
        fs: dict[str, _Typed] = {}
        fp: dict[str, _Typed] = {}
        if raw is None:
            return fs, fp
        mapping = self.mapping_at(("defaults",), raw, "defaults", DEFAULTS_KEYS)
        if mapping is None:
            return fs, fp
        fs_map = self.mapping_under(("defaults",), mapping, "freshsuccess", "defaults.freshsuccess")
        if fs_map is not None:
            path: PathKey = ("defaults", "freshsuccess")
            self.unknown_keys(path, FRESHSUCCESS_BASE_FIELDS)
            for key, item in fs_map.items():
                if key in FRESHSUCCESS_BASE_FIELDS:
                    typed = self.value((*path, key), item, in_default=False)
                    if typed is None:
                        self.broken_defaults.add(key)
                    else:
                        self.check_slot((*path, key), key, typed, FRESHSUCCESS_SLOTS[key],
                                        required_text=key in FRESHSUCCESS_REQUIRED_TEXT)
                        fs[key] = typed
        fp_map = self.mapping_under(("defaults",), mapping, "freshpaint", "defaults.freshpaint")
        for key, item in (fp_map or {}).items():
            typed = self.property(("defaults", "freshpaint", key), key, item)
            if typed is None:
                self.broken_defaults.add(str(key))
            else:
                fp[str(key)] = typed
        return fs, fp

    # -- rules ------------------------------------------------------------------------------------------

    def rule(self, index: int, raw: Any, fs_defaults: dict[str, _Typed],
             fp_defaults: dict[str, _Typed]) -> Rule | None:
        path: PathKey = ("rules", index)
        mapping = self.mapping_at(path, raw, "a rule")
        if mapping is None:
            return None
        name = mapping.get("name")
        if not isinstance(name, str) or not name.strip():
            self.problem(path, "every rule needs a 'name' (a non-empty string)")
        elif name in self.rule_names.values():
            self.rule_names[index] = name
            self.problem((*path, "name"), f"another rule is already named {name!r}; names must be unique")
        else:
            self.rule_names[index] = name
        self.unknown_keys(path, RULE_KEYS)
        description = mapping.get("description")
        if description is not None and not isinstance(description, str):
            self.problem((*path, "description"), "description must be text")

        when = self.predicate((*path, "when"), mapping.get("when")) if "when" in mapping else Always()

        fs_outputs = self.outputs(path, mapping, "freshsuccess", fs_defaults, self.freshsuccess_output)
        fp_outputs = self.outputs(path, mapping, "freshpaint", fp_defaults, self.freshpaint_output)
        if not mapping.get("freshsuccess") and not mapping.get("freshpaint"):
            self.problem(path, "the rule has no outputs: give it 'freshsuccess:' and/or 'freshpaint:' items")
        if when is None or not isinstance(name, str):
            return None
        return Rule(name=name, when=when, freshsuccess=fs_outputs, freshpaint=fp_outputs,
                    line=self.loc.line_of(path))

    def outputs(self, path: PathKey, mapping: dict[Any, Any], key: str, defaults: dict[str, _Typed],
                build: Callable[[PathKey, int, Any, dict[str, _Typed]], _O | None]) -> tuple[_O, ...]:
        """The rule's outputs listed under ``key`` (a destination), each made by ``build``; those that could
        not be made are left out (their problems are reported)."""
        if key not in mapping:
            return ()
        items = self.list_at((*path, key), mapping[key], key)
        made = (build((*path, key, i), i, item, defaults) for i, item in enumerate(items or []))
        return tuple(output for output in made if output is not None)

    # -- outputs ----------------------------------------------------------------------------------------

    def freshsuccess_output(self, path: PathKey, index: int, raw: Any,
                            defaults: dict[str, _Typed]) -> FreshsuccessOutput | None:
        mapping = self.mapping_at(path, raw, "a freshsuccess output", FRESHSUCCESS_OUTPUT_KEYS)
        if mapping is None:
            return None
        action = mapping.get("action")
        spec = FRESHSUCCESS_ACTIONS.get(action) if isinstance(action, str) else None
        if spec is None:
            if "action" not in mapping:
                self.problem(path, f"'action' is missing (one of: {', '.join(FRESHSUCCESS_ACTIONS)})")
            else:
                hint = closest(str(action), FRESHSUCCESS_ACTIONS)
                did = f" (did you mean {hint!r}?)" if hint else f" (one of: {', '.join(FRESHSUCCESS_ACTIONS)})"
                self.problem((*path, "action"), f"unknown action {action!r}{did}")
            return None
        assert isinstance(action, str)
        allowed = (*FRESHSUCCESS_BASE_FIELDS, *spec.required, *spec.optional)
        merged: dict[str, _Typed] = dict(defaults)
        broken = set(self.broken_defaults)
        fields_map = self.mapping_under(path, mapping, "fields", "fields")
        if fields_map is not None:
            fields_path = (*path, "fields")
            for unknown in find_unknown_keys(self.loc, fields_path, allowed):
                extra = "" if unknown.suggestion else f" (action {action!r} takes: {', '.join(allowed)})"
                self.problem(unknown.path, f"{unknown.message}{extra}")
            for key, item in fields_map.items():
                if key not in allowed:
                    continue
                typed = self.value((*fields_path, key), item, in_default=False)
                if typed is None:
                    broken.add(key)
                    continue
                self.check_slot((*fields_path, key), key, typed, FRESHSUCCESS_SLOTS[key],
                                required_text=key in FRESHSUCCESS_REQUIRED_TEXT)
                merged[key] = typed
        for key in _unmapped((*FRESHSUCCESS_BASE_FIELDS, *spec.required), merged, broken):
            if key in FRESHSUCCESS_BASE_FIELDS:
                self.problem(path, f"action {action!r} requires {key!r}, but neither this output's fields "
                                   "nor defaults.freshsuccess map it to a value")
            else:
                self.problem(path, f"action {action!r} requires {key!r}, but this output's fields do not "
                                   "map it to a value")
        order = [k for k in allowed if k in merged]
        return FreshsuccessOutput(action=action, fields=tuple((k, merged[k].value) for k in order),
                                  index=index, line=self.loc.line_of(path))

    def freshpaint_output(self, path: PathKey, index: int, raw: Any,
                          defaults: dict[str, _Typed]) -> FreshpaintOutput | None:
        mapping = self.mapping_at(path, raw, "a freshpaint output", FRESHPAINT_OUTPUT_KEYS)
        if mapping is None:
            return None
        identify = mapping.get("identify", False)
        if not isinstance(identify, bool):
            self.problem((*path, "identify"), "identify must be true or false")
            identify = False
        event: Value | None = None
        if identify and "event" in mapping:
            self.problem((*path, "event"), "give either 'event:' or 'identify: true', not both")
        elif not identify:
            if "event" not in mapping:
                self.problem(path, "'event' is missing (an event name, or 'identify: true' for $identify)")
            else:
                typed = self.value((*path, "event"), mapping["event"], in_default=False)
                if typed is not None:
                    self.check_slot((*path, "event"), "event", typed, STRING, required_text=True)
                    if not typed.type.kinds:
                        self.problem((*path, "event"), "the event name is always null")
                    event = typed.value

        merged: dict[str, _Typed] = dict(defaults)
        broken = set(self.broken_defaults)
        props = self.mapping_under(path, mapping, "properties", "properties")
        for key, item in (props or {}).items():
            typed = self.property((*path, "properties", key), key, item)
            if typed is None:
                broken.add(str(key))
                merged.pop(str(key), None)
            else:
                merged[str(key)] = typed
        for key in _unmapped(FRESHPAINT_REQUIRED_PROPERTIES, merged, broken):
            self.problem(path, f"Freshpaint requires property {key!r}, but neither this output's "
                               "properties nor defaults.freshpaint map it to a value")

        pass_ref = self.pass_properties((*path, "pass_properties"), mapping.get("pass_properties", False))

        integrations: tuple[tuple[str, bool], ...] | None = None
        if "integrations" in mapping:
            ipath = (*path, "integrations")
            imap = self.mapping_at(ipath, mapping["integrations"], "integrations")
            if imap is not None:
                bad = [k for k, v in imap.items() if not isinstance(k, str) or not isinstance(v, bool)]
                if bad:
                    self.problem(ipath, "integrations maps destination names to true/false, e.g. "
                                        "{All: false, Mixpanel: true}")
                elif not imap:
                    self.problem(ipath, "integrations is empty")
                else:
                    integrations = tuple((str(k), bool(v)) for k, v in imap.items())

        user_props: Value | None = None
        if identify and "user_props" not in mapping:
            self.problem(path, "'identify: true' needs 'user_props:' (the user properties $identify attaches); "
                               "without them Freshpaint has nothing to do")
        if "user_props" in mapping:
            upath = (*path, "user_props")
            if not identify:
                self.problem(upath, "user_props only goes with 'identify: true'")
            else:
                typed = self.value(upath, mapping["user_props"], in_default=False)
                if typed is not None:
                    self.check_slot(upath, "$user_props", typed, OBJECT)
                    user_props = typed.value
        return FreshpaintOutput(
            event=event, identify=identify,
            properties=tuple((k, t.value) for k, t in merged.items()),
            pass_properties=pass_ref, integrations=integrations, user_props=user_props,
            index=index, line=self.loc.line_of(path),
        )

    def property(self, path: PathKey, key: Any, raw: Any) -> _Typed | None:
        if not isinstance(key, str) or not key:
            self.problem(path, f"property names must be non-empty strings, not {key!r}")
            return None
        if key in FRESHPAINT_RESERVED_PROPERTIES:
            self.problem(path, f"{key!r} cannot be mapped: {FRESHPAINT_RESERVED_PROPERTIES[key]}")
            return None
        typed = self.value(path, raw, in_default=False)
        if typed is not None:
            self.check_slot(path, key, typed, FRESHPAINT_SLOTS.get(key, JSON_KINDS),
                            required_text=key in FRESHPAINT_REQUIRED_TEXT)
        return typed

    def pass_properties(self, path: PathKey, raw: Any) -> FieldRef | None:
        if raw is False or raw is None:
            return None
        if raw is True:
            ref_path: FieldPath = (PASS_PROPERTIES_DEFAULT_FIELD,)
            where = path
        elif isinstance(raw, dict) and set(raw) == {"field"}:
            parsed = self.field_path((*path, "field"), raw["field"])
            if parsed is None:
                return None
            ref_path, where = parsed, (*path, "field")
        else:
            self.problem(path, "pass_properties must be true (the 'properties' map), false, or {field: some.map}")
            return None
        resolved = self.resolve(where, ref_path)
        if resolved is None:
            return None
        name = ".".join(ref_path)
        if resolved.kinds != OBJECT or resolved.values is None:
            self.problem(where, f"pass_properties needs a map field, but '{name}' is {resolved.avro}")
            return None
        why = _nested_unjsonable(resolved, name)
        if why:
            self.problem(where, f"pass_properties of field '{name}' ({resolved.avro}): it {why}")
            return None
        return field_ref(ref_path, resolved)

    # -- slots ------------------------------------------------------------------------------------------

    def check_slot(self, path: PathKey, slot: str, typed: _Typed, accepts: frozenset[str], *,
                   required_text: bool = False) -> None:
        kinds = typed.type.kinds
        wrong = kinds - accepts
        constant = typed.value.expr.value if isinstance(typed.value.expr, Const) else None
        if required_text and isinstance(constant, str) and not constant.strip():
            self.problem(path, f"{slot!r} is required and a blank text counts as missing; give it a value")
            return
        if slot == "$insert_id" and isinstance(constant, str) and not is_valid_insert_id(constant):
            self.problem(path, f"'$insert_id' must be {INSERT_ID_RULE}, which {constant!r:.50} is not "
                               "(and one constant id for every event would make Freshpaint drop all but one)")
            return
        if wrong:
            hint = ""
            if accepts == STRING and wrong <= {"int", "float", "bool"}:
                hint = "; add 'convert: string'"
            elif accepts <= NUMBER and wrong <= {"string", "bool"}:
                hint = "; add 'convert: int' or 'convert: float'"
            elif accepts == frozenset({"int"}) and wrong == {"float"}:
                hint = "; add 'convert: epoch_ms' (or 'convert: int')"
            elif "bytes" in wrong:
                thing, fix = _json_fix(typed.type)
                hint = f"; JSON cannot carry {thing}'s bytes: add {fix}" if thing == "a decimal" else \
                    f"; JSON cannot carry bytes: add {fix}"
            self.problem(path, f"{slot!r} takes {_describe_kinds(accepts)}, but {typed.type.describe} "
                               f"gives {_describe_kinds(kinds)}{hint}")
            return
        logical = typed.type.logical
        if slot == "time" and logical in TIMESTAMP_LOGICAL:
            unit = "microseconds" if logical in MICROS_LOGICAL else "milliseconds"
            fix = "; add 'convert: epoch_ms_to_s'" if unit == "milliseconds" else ""
            self.problem(path, f"'time' is in epoch seconds, but {typed.type.describe} holds {unit}{fix}")
        elif slot == "createdAt" and logical in MICROS_LOGICAL:
            self.problem(path, f"'createdAt' is in epoch milliseconds, but {typed.type.describe} holds "
                               "microseconds")

    # -- values -----------------------------------------------------------------------------------------

    def value(self, path: PathKey, raw: Any, *, in_default: bool) -> _Typed | None:
        """A value expression; a bare scalar is a constant, except under ``default:`` where text is a template."""
        line = self.loc.nearest_line(path)
        if isinstance(raw, list):
            self.problem(path, "a list is not a value expression; write {const: [...]} for a constant list")
            return None
        if not isinstance(raw, dict):
            if in_default and isinstance(raw, str):
                return self.template(path, raw, line)
            why = _not_json(raw)
            if why:
                self.problem(path, f"the constant {why}")
                return None
            return _Typed(Value(Const(raw), line=line),
                          ExprType(_kind_of_constant(raw), raw is None, f"the constant {raw!r:.40}"))

        present = [k for k in EXPR_KEYS if k in raw]
        for unknown in find_unknown_keys(self.loc, path, VALUE_KEYS):
            self.problem(unknown.path, unknown.message)
        if len(present) != 1:
            if len(present) > 1:
                self.problem(path, f"a value takes exactly one of {', '.join(EXPR_KEYS)}; "
                                   f"this one has {', '.join(present)}")
            elif all(k in VALUE_KEYS for k in raw):
                self.problem(path, f"a value needs one of {', '.join(EXPR_KEYS)} "
                                   "(write {const: {...}} for a constant object)")
            return None
        kind = present[0]
        if "merge" in raw and kind != "object":
            self.problem((*path, "merge"), "'merge' goes with 'object'")
        if kind == "insert_id" and ("default" in raw or "convert" in raw):
            self.problem(path, "insert_id takes neither 'default' nor 'convert'")
            return None

        expr_typed = self.expr(path, kind, raw)
        if expr_typed is None:
            return None
        expr, etype = expr_typed

        default: _Typed | None = None
        if "default" in raw:
            if raw["default"] is None:
                self.problem((*path, "default"), "a null default means no default; leave 'default' out")
            else:
                default = self.value((*path, "default"), raw["default"], in_default=True)
                if default is None:
                    return None

        convert: Convert | None = None
        if "convert" in raw:
            try:
                convert = Convert(raw["convert"])
            except ValueError:
                hint = closest(str(raw["convert"]), [c.value for c in Convert])
                did = f" (did you mean {hint!r}?)" if hint else f" (one of: {', '.join(c.value for c in Convert)})"
                self.problem((*path, "convert"), f"unknown convert {raw['convert']!r}{did}")
                return None

        kinds = etype.kinds | (default.type.kinds if default else frozenset())
        nullable = etype.nullable and (default is None or default.type.nullable)
        describe = etype.describe
        logical = etype.logical
        if default is not None and etype.logical != default.type.logical:
            logical = None
        decimal_scale: int | None = None
        if convert is not None:
            accepted = CONVERT_INPUT_KINDS[convert]
            if convert in DECIMAL_CONVERTS and etype.logical == "decimal" and etype.scale is not None:
                accepted = accepted | {"bytes"}  # the decimal's two's-complement bytes
                decimal_scale = etype.scale
            wrong = kinds - accepted
            if wrong:
                whose = describe if wrong & etype.kinds else f"its default ({default.type.describe})" \
                    if default else describe
                hint = ""
                if "bytes" in wrong and "bytes" not in accepted:
                    hint = f"; for bytes use {_json_fix(etype)[1]}"
                self.problem((*path, "convert"), f"convert {convert.value!r} cannot apply to {whose}, "
                                                 f"which gives {_describe_kinds(wrong)}{hint}")
                return None
            if convert in (Convert.EPOCH_MS, Convert.EPOCH_MS_TO_S) and logical in MICROS_LOGICAL:
                self.problem((*path, "convert"), f"convert {convert.value!r} expects milliseconds, "
                                                 f"but {describe} is {logical}")
                return None
            folded = False
            if isinstance(expr, Const) and expr.value is not None:
                try:
                    expr = Const(CONVERTERS[convert](expr.value, "the constant"))
                except MappingFailed as exc:
                    self.problem((*path, "convert"), str(exc))
                    return None
                folded = True
            if default is not None and isinstance(default.value.expr, Const) and default.value.convert is None:
                try:
                    CONVERTERS[convert](default.value.expr.value, dotted(path))
                except MappingFailed:
                    self.problem((*path, "default"), f"the default {default.value.expr.value!r} does not "
                                                     f"convert with {convert.value!r}")
                    return None
            kinds = CONVERT_OUTPUT_KINDS[convert] if kinds else kinds
            logical = logical if convert is Convert.EPOCH_MS else None
            describe = f"{describe} converted with {convert.value!r}"
            if folded:
                convert = None
        value = Value(expr=expr, default=default.value if default else None, convert=convert, line=line,
                      decimal_scale=decimal_scale if convert is not None else None)
        return _Typed(value, ExprType(kinds, nullable, describe, logical=logical))

    def expr(self, path: PathKey, kind: str, raw: dict[str, Any]) -> tuple[Expr, ExprType] | None:
        body = raw[kind]
        if kind == "field":
            ref_path = self.field_path((*path, "field"), body)
            if ref_path is None:
                return None
            resolved = self.resolve((*path, "field"), ref_path)
            if resolved is None:
                return None
            name = ".".join(ref_path)
            why = _nested_unjsonable(resolved, name)
            if why:
                self.problem((*path, "field"), f"field '{name}' ({resolved.avro}) {why}")
                return None
            nullable = self.path_nullable(ref_path)
            etype = ExprType(resolved.kinds, nullable, f"field '{name}' ({resolved.avro})",
                             logical=resolved.logical, scale=resolved.scale)
            return field_ref(ref_path, resolved), etype
        if kind == "const":
            why = _not_json(body)
            if why:
                self.problem((*path, "const"), f"the constant {why}")
                return None
            return Const(body), ExprType(_kind_of_constant(body), body is None, f"the constant {body!r:.40}")
        if kind == "template":
            if not isinstance(body, str):
                self.problem((*path, "template"), "a template must be text, e.g. \"{feature} Used\"")
                return None
            typed = self.template((*path, "template"), body, self.loc.nearest_line(path))
            return None if typed is None else (typed.value.expr, typed.type)
        if kind == "object":
            return self.object_expr(path, body, raw.get("merge"))
        # insert_id
        if body is not True:
            self.problem((*path, "insert_id"), "write {insert_id: true}")
            return None
        return InsertId(), ExprType(STRING, False, "the insert id")

    def template(self, path: PathKey, text: str, line: int | None) -> _Typed | None:
        parts, error = parse_template(text)
        if error:
            self.problem(path, f"bad template {text!r}: {error}")
            return None
        out: list[str | FieldRef] = []
        nullable = False
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            resolved = self.resolve(path, part)
            if resolved is None:
                return None
            wrong = resolved.kinds - {"string", "int", "float", "bool"}
            if wrong:
                self.problem(path, f"template field '{'.'.join(part)}' is {resolved.avro}, "
                                   "which cannot be written into text")
                return None
            nullable = nullable or self.path_nullable(part)
            out.append(field_ref(part, resolved))
        if all(isinstance(p, str) for p in out):
            return _Typed(Value(Const("".join(p for p in out if isinstance(p, str))), line=line),
                          ExprType(STRING, False, f"the text {text!r:.40}"))
        return _Typed(Value(Template(tuple(out)), line=line), ExprType(STRING, nullable, f"template {text!r:.40}"))

    def object_expr(self, path: PathKey, body: Any, merge_raw: Any) -> tuple[Expr, ExprType] | None:
        opath = (*path, "object")
        mapping = self.mapping_at(opath, body, "object")
        if mapping is None:
            return None
        entries: list[tuple[str, Value]] = []
        ok = True
        never_empty = False
        for key, item in mapping.items():
            if not isinstance(key, str):
                self.problem((*opath, key), f"object keys must be strings, not {key!r}")
                ok = False
                continue
            typed = self.value((*opath, key), item, in_default=False)
            if typed is None:
                ok = False
                continue
            self.check_slot((*opath, key), key, typed, JSON_KINDS)
            never_empty = never_empty or not typed.type.nullable
            entries.append((key, typed.value))
        merge: Value | None = None
        if merge_raw is not None:
            typed_merge = self.value((*path, "merge"), merge_raw, in_default=False)
            if typed_merge is None:
                ok = False
            elif typed_merge.type.kinds - OBJECT or not typed_merge.type.kinds:
                self.problem((*path, "merge"), f"merge needs a map or record, but {typed_merge.type.describe} "
                                               f"gives {_describe_kinds(typed_merge.type.kinds)}")
                ok = False
            else:
                merge = typed_merge.value
        if not ok:
            return None
        if not entries and merge is None:
            self.problem(opath, "the object is empty")
            return None
        floats = merge is not None and _merge_may_hold_floats(merge)
        return ObjectOf(tuple(entries), merge, floats), ExprType(OBJECT, not never_empty, "an object")

    # -- field paths and predicates ---------------------------------------------------------------------

    def field_path(self, path: PathKey, raw: Any) -> FieldPath | None:
        if isinstance(raw, str) and raw.strip():
            segments = tuple(s.strip() for s in raw.split("."))
        elif isinstance(raw, list) and raw and all(isinstance(s, str) for s in raw):
            segments = tuple(raw)
        else:
            self.problem(path, "a field is a dotted path such as user.email (or a list of path segments)")
            return None
        if any(not s for s in segments):
            self.problem(path, f"malformed field path {raw!r}")
            return None
        return segments

    def resolve(self, path: PathKey, ref: FieldPath) -> SchemaType | None:
        if ref[0] == TOPIC_FIELD:
            self.reads_topic = True
        elif ref[0] == RECORD_NAME_FIELD:
            self.reads_record_name = True
        current = self.schema
        for i, segment in enumerate(ref):
            if current.fields is not None:
                if segment not in current.fields:
                    where = f" in '{'.'.join(ref[:i])}'" if i else ""
                    hint = closest(segment, current.fields)
                    did = f" (did you mean {'.'.join((*ref[:i], hint))!r}?)" if hint else ""
                    self.problem(path, f"unknown field {'.'.join(ref[:i + 1])!r}{where}{did}")
                    return None
                current = current.fields[segment]
            elif current.values is not None:
                current = current.values
            else:
                self.problem(path, f"'{'.'.join(ref[:i])}' is {current.avro}; there is nothing inside it to "
                                   f"select {segment!r} from")
                return None
        return current

    def path_nullable(self, ref: FieldPath) -> bool:
        current = self.schema
        nullable = False
        for segment in ref:
            if current.fields is not None and segment in current.fields:
                current = current.fields[segment]
            elif current.values is not None:
                current = current.values
                nullable = True  # a map may lack the key
            else:
                return True
            nullable = nullable or current.nullable
        return nullable

    def predicate(self, path: PathKey, raw: Any) -> Predicate | None:
        if raw is None:
            self.problem(path, "'when' is empty; leave it out to select every event")
            return None
        mapping = self.mapping_at(path, raw, "when")
        if mapping is None:
            return None
        if not mapping:
            self.problem(path, "'when' is empty; leave it out to select every event")
            return None
        combinators = [k for k in COMBINATOR_KEYS if k in mapping]
        if combinators:
            if len(mapping) != 1:
                self.problem(path, f"'{combinators[0]}' must stand alone in its mapping; nest the other "
                                   "conditions inside it")
                return None
            key = combinators[0]
            if key == "not":
                inner = self.predicate((*path, "not"), mapping["not"])
                return None if inner is None else Not(inner)
            items = self.list_at((*path, key), mapping[key], key)
            if items is None:
                return None
            if not items:
                self.problem((*path, key), f"'{key}' needs at least one condition")
                return None
            parsed = [self.predicate((*path, key, i), item) for i, item in enumerate(items)]
            if any(p is None for p in parsed):
                return None
            done = tuple(p for p in parsed if p is not None)
            return AllOf(done) if key == "all" else AnyOf(done)
        if "field" in mapping:
            return self.operator_form(path, mapping)
        conditions: list[Predicate] = []
        ok = True
        for key, operand in mapping.items():
            cpath = (*path, key)
            if not isinstance(key, str):
                self.problem(cpath, f"condition keys are field paths, not {key!r}")
                ok = False
                continue
            ref = self.field_path(cpath, key)
            op = Op.IN if isinstance(operand, list) else Op.EQ
            compare = self.compare(cpath, ref, op, operand) if ref is not None else None
            if compare is None:
                ok = False
            else:
                conditions.append(compare)
        if not ok:
            return None
        return conditions[0] if len(conditions) == 1 else AllOf(tuple(conditions))

    def operator_form(self, path: PathKey, mapping: dict[Any, Any]) -> Predicate | None:
        for unknown in find_unknown_keys(self.loc, path, ("field", *OP_KEYS)):
            self.problem(unknown.path, unknown.message)
        ops = [k for k in OP_KEYS if k in mapping]
        if len(ops) != 1:
            self.problem(path, f"a condition with 'field' takes exactly one of {', '.join(OP_KEYS)}")
            return None
        ref = self.field_path((*path, "field"), mapping["field"])
        if ref is None:
            return None
        return self.compare((*path, ops[0]), ref, Op(ops[0]), mapping[ops[0]], field_path=(*path, "field"))

    def compare(self, path: PathKey, ref: FieldPath, op: Op, operand: Any,
                field_path: PathKey | None = None) -> Compare | None:
        resolved = self.resolve(field_path or path, ref)
        if resolved is None:
            return None
        name = ".".join(ref)
        line = self.loc.nearest_line(path)
        if op in (Op.EXISTS, Op.NOT_NULL):
            if not isinstance(operand, bool):
                self.problem(path, f"'{op.value}' takes true or false")
                return None
            return Compare(ref, op, operand, line)
        if op in (Op.IN, Op.NOT_IN):
            if not isinstance(operand, list) or not operand:
                self.problem(path, f"'{op.value}' takes a non-empty list")
                return None
            candidates = operand
        else:
            candidates = [operand]
        field_kinds = resolved.kinds
        comparable = field_kinds - {"object", "array", "bytes"}
        if not comparable or field_kinds != comparable:
            self.problem(path, f"field {name!r} is {resolved.avro}, which conditions cannot compare")
            return None
        nullable = self.path_nullable(ref)
        for candidate in candidates:
            if candidate is None:
                if op in ORDERING_OPS:
                    self.problem(path, f"'{op.value}' cannot compare with null")
                    return None
                if not nullable:
                    self.problem(path, f"field {name!r} is never null, so comparing it with null never matches")
                    return None
                continue
            ckinds = _kind_of_constant(candidate)
            if ckinds == frozenset({"int"}) and "float" in field_kinds:
                ckinds = frozenset({"float"})
            if ckinds == frozenset({"float"}) and "int" in field_kinds and float(candidate).is_integer():
                ckinds = frozenset({"int"})
            if not ckinds <= field_kinds:
                quote = " (quote it to compare text)" if "string" in field_kinds else ""
                self.problem(path, f"field {name!r} is {resolved.avro}, but {candidate!r} is "
                                   f"{_describe_kinds(_kind_of_constant(candidate))}; this never matches{quote}")
                return None
        if op in ORDERING_OPS and not (field_kinds <= NUMBER or field_kinds == STRING):
            self.problem(path, f"'{op.value}' needs a number or text field; {name!r} is {resolved.avro}")
            return None
        if op in (Op.IN, Op.NOT_IN):
            return Compare(ref, op, tuple(candidates), line)
        return Compare(ref, op, operand, line)


def _unmapped(required: Iterable[str], merged: Mapping[str, _Typed], broken: set[str]) -> list[str]:
    """The ``required`` keys that no value (or only an always-null one) provides. A key whose value was
    broken is left out: its problem was already reported where the value stands."""
    missing = []
    for key in required:
        typed = merged.get(key)
        if typed is None and key in broken:
            continue
        if typed is None or not typed.type.kinds:
            missing.append(key)
    return missing


def _merge_may_hold_floats(merge: Value) -> bool:
    """Whether a ``merge:`` value (or its default) can copy a float member, which may be NaN/infinite."""
    current: Value | None = merge
    while current is not None:
        if isinstance(current.expr, FieldRef) and current.expr.members_may_be_float:
            return True
        current = current.default
    return False


def _yaml_kind(raw: Any) -> str:
    if raw is None:
        return "nothing (null)"
    if isinstance(raw, dict):
        return "a mapping"
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, str):
        return f"the text {raw!r:.40}"
    return f"{type(raw).__name__} {raw!r:.40}"
