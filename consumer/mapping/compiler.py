"""Compile a checked mapping into plain Python functions, once, at start-up.

The per-event budget is about a microsecond, so nothing here interprets rule objects per event.  Each
rule's outputs become straight-line Python generated from fixed templates; the only pieces of the mapping
file that reach the generated text are field names, property names and literal text, always as ``repr()``
of a ``str`` (or of an ``int``).  Every other constant (floats, objects, messages, rule names) is bound in
the function's namespace under a generated name.  Predicates (``when:``) become closures; the common
``event_type: x`` test becomes a dictionary lookup that picks the rules to run (all matching rules still
run in file order).
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import structlog

from consumer.errors import ConfigError, MappingInvalid, MissingRequiredField
from consumer.mapping.model import (
    CONVERTERS,
    EPOCH_MS_MAX,
    EPOCH_MS_MIN,
    FRESHPAINT_PASS_THROUGH_RESERVED,
    FRESHPAINT_REQUIRED_PROPERTIES,
    FRESHPAINT_REQUIRED_TEXT,
    FRESHSUCCESS_ACTIONS,
    FRESHSUCCESS_BASE_FIELDS,
    FRESHSUCCESS_REQUIRED_TEXT,
    IDENTIFY_EVENT,
    TOPIC_FIELD,
    AllOf,
    Always,
    AnyOf,
    Compare,
    Const,
    Convert,
    Destination,
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
    decimal_converter,
    fields_read,
    is_valid_insert_id,
)
from consumer.mapping.validate import build_model
from consumer.yamlsource import Located, load_yaml

__all__ = [
    "INSERT_ID_NAMESPACE",
    "CompiledMapping",
    "MapFn",
    "compile_mapping",
    "insert_id",
    "insert_id_base",
    "load_mapping",
    "mapped_insert_id",
]

log = structlog.get_logger(__name__)

MapFn: TypeAlias = Callable[[dict[str, Any], str, int, int], list[dict[str, Any]]]
"""``(record, topic, partition, offset) -> outputs`` for one destination; ``[]`` when no rule selects it."""

_RuleFn: TypeAlias = Callable[[dict[str, Any], str, int, int, list[dict[str, Any]]], None]
_O = TypeVar("_O", bound=Output)

EVENT_ID_FIELD = "event_id"

# ---------------------------------------------------------------------------------------------------------
# Deterministic $insert_id

INSERT_ID_NAMESPACE = uuid.UUID("5d0c3c3e-6f2b-5a7e-9f41-7a1b2c3d4e5f")
"""Namespace of the uuid5 values made for ``$insert_id``; changing it would re-send duplicates as new."""

_NAMESPACE_BYTES = INSERT_ID_NAMESPACE.bytes
_is_valid_insert_id = is_valid_insert_id


def _uuid5_text(name: str) -> str:
    """``str(uuid.uuid5(INSERT_ID_NAMESPACE, name))`` without building UUID objects (~3x faster)."""
    digest = hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8", "surrogatepass"), usedforsecurity=False)
    h = digest.hexdigest()
    return f"{h[0:8]}-{h[8:12]}-5{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def insert_id(event_id: Any, topic: str, partition: int, offset: int, index: int) -> str:
    """``$insert_id`` of the ``index``-th Freshpaint output (0-based, in emission order) made from one event.

    - An ``event_id`` that is already a valid id (1 to 36 characters of ``[A-Za-z0-9-]``, as a UUID is)
      is the first output's id as is.
    - Otherwise, with a non-empty ``event_id`` (an int counts as its decimal text):
      ``uuid5("event_id:" + len(event_id) + ":" + event_id + "#" + index)``.
    - Without one: ``uuid5("kafka:" + len(topic) + ":" + topic + ":" + partition + ":" + offset + "#" + index)``.

    Each name starts with its kind and length-prefixes the only free text in it, so the encoding is
    injective: two different (kind, parts, index) never share a name, hence (short of a SHA-1 collision)
    never an id. The same event under the same mapping always gets the same ids.
    """
    if event_id.__class__ is not str:
        event_id = str(event_id) if isinstance(event_id, int) and not isinstance(event_id, bool) else ""
    if event_id:
        if index == 0 and _is_valid_insert_id(event_id):
            return event_id  # type: ignore[no-any-return]
        return _uuid5_text(f"event_id:{len(event_id)}:{event_id}#{index}")
    return _uuid5_text(f"kafka:{len(topic)}:{topic}:{partition}:{offset}#{index}")


def insert_id_base(event_id: Any, topic: str, partition: int, offset: int) -> str:
    """The ``$insert_id`` of an event's first Freshpaint output (``insert_id(..., 0)``)."""
    return insert_id(event_id, topic, partition, offset, 0)


def mapped_insert_id(value: Any) -> str | None:
    """A mapping's own ``$insert_id`` value made valid: kept when valid, ``None`` (left out) when blank,
    else ``uuid5("insert_id:" + len(value) + ":" + value)`` (deterministic, in its own name space)."""
    if value.__class__ is not str:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        value = str(value)
    if _is_valid_insert_id(value):
        return value  # type: ignore[no-any-return]
    if not value or value.isspace():
        return None
    return _uuid5_text(f"insert_id:{len(value)}:{value}")


# ---------------------------------------------------------------------------------------------------------
# The compiled result


@dataclass(frozen=True)
class _RuleProgram:
    name: str
    matches: Callable[[dict[str, Any]], bool]
    freshsuccess: _RuleFn | None
    freshpaint: _RuleFn | None


@dataclass(frozen=True)
class CompiledMapping:
    """The per-destination mapping functions made from one mapping file."""

    freshsuccess: MapFn | None
    freshpaint: MapFn | None
    rule_names: tuple[str, ...]
    source: str = ""
    python_source: str = field(default="", repr=False, compare=False)
    _programs: tuple[_RuleProgram, ...] = field(default=(), repr=False, compare=False)
    reads_topic: bool = False
    """Some rule reads ``$topic``; ``explain`` and ``rules_matching`` then need the topic too."""
    reads_record_name: bool = False
    """Some rule reads ``$record_name``: whoever decodes puts the writer schema's full name in the record
    (:class:`consumer.pipeline.verdict.Judge` does), since the bytes are gone by the time the rules run."""
    fields_read: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False)
    """Each destination's top-level fields its function can read (a lane may decode only these)."""

    @property
    def functions(self) -> dict[str, MapFn]:
        """The mapping function of each destination that has rules, by destination name."""
        found = {Destination.FRESHSUCCESS.value: self.freshsuccess, Destination.FRESHPAINT.value: self.freshpaint}
        return {name: fn for name, fn in found.items() if fn is not None}

    def rules_matching(self, record: dict[str, Any], *, topic: str | None = None) -> list[str]:
        """The rules whose ``when:`` selects the record (read from ``topic``), in file order."""
        record = self._with_topic(record, topic)
        return [program.name for program in self._programs if program.matches(record)]

    def _with_topic(self, record: dict[str, Any], topic: str | None) -> dict[str, Any]:
        return {**record, TOPIC_FIELD: topic} if self.reads_topic else record

    def explain(self, record: dict[str, Any], topic: str, partition: int, offset: int,
                destination: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """``(rule, destination, output)`` for every output the event produces (for ``destination`` only, when
        given), for dry runs.

        Produces exactly what the ``freshsuccess``/``freshpaint`` functions produce, in the same order,
        and raises the same errors.
        """
        record = self._with_topic(record, topic)
        outputs: list[tuple[str, str, dict[str, Any]]] = []
        fs_out: list[dict[str, Any]] = []
        fp_out: list[dict[str, Any]] = []
        for program in self._programs:
            if not program.matches(record):
                continue
            for name, fn, out in ((Destination.FRESHSUCCESS, program.freshsuccess, fs_out),
                                  (Destination.FRESHPAINT, program.freshpaint, fp_out)):
                if fn is None or (destination is not None and name.value != destination):
                    continue
                before = len(out)
                fn(record, topic, partition, offset, out)
                outputs.extend((program.name, name.value, o) for o in out[before:])
        return outputs


def load_mapping(path: Path, reader_schema: dict[str, Any]) -> CompiledMapping:
    """Read, check and compile a mapping file; raise ``MappingInvalid`` listing every problem."""
    try:
        located = load_yaml(path)
    except ConfigError as exc:
        raise MappingInvalid([str(exc)]) from None
    return compile_mapping(located, reader_schema, source=str(path))


def compile_mapping(located: Located, reader_schema: dict[str, Any], *, source: str) -> CompiledMapping:
    """Check ``located`` against ``reader_schema`` and compile it; raise ``MappingInvalid`` on problems."""
    model, problems = build_model(located, reader_schema, source=source)
    if problems or model is None:
        raise MappingInvalid(problems or [f"{source}: the mapping could not be read"])
    compiled = _Compiler(model).compile()
    log.info("mapping_compiled", source=source, rules=len(model.rules),
             freshsuccess=compiled.freshsuccess is not None, freshpaint=compiled.freshpaint is not None)
    return compiled


# ---------------------------------------------------------------------------------------------------------
# Predicates -> closures


def _getter(path: FieldPath) -> Callable[[dict[str, Any]], Any]:
    if len(path) == 1:
        key = path[0]

        def get_one(r: dict[str, Any]) -> Any:
            return r.get(key)
        return get_one

    def get_path(r: dict[str, Any]) -> Any:
        value: Any = r
        for segment in path:
            if value.__class__ is not dict:
                return None
            value = value.get(segment)
        return value
    return get_path


def _exists(path: FieldPath) -> Callable[[dict[str, Any]], bool]:
    def exists(r: dict[str, Any]) -> bool:
        value: Any = r
        for segment in path:
            if value.__class__ is not dict or segment not in value:
                return False
            value = value[segment]
        return True
    return exists


def _compile_compare(p: Compare) -> Callable[[dict[str, Any]], bool]:
    get = _getter(p.path)
    operand = p.operand
    if p.op is Op.EQ:
        return lambda r: bool(get(r) == operand)
    if p.op is Op.NE:
        return lambda r: bool(get(r) != operand)
    if p.op in (Op.IN, Op.NOT_IN):
        members: frozenset[Any] | tuple[Any, ...]
        members = frozenset(operand) if all(isinstance(x, Hashable) for x in operand) else tuple(operand)
        if p.op is Op.IN:
            return lambda r: get(r) in members
        return lambda r: get(r) not in members
    if p.op is Op.EXISTS:
        exists = _exists(p.path)
        return exists if operand else (lambda r: not exists(r))
    if p.op is Op.NOT_NULL:
        if operand:
            return lambda r: get(r) is not None
        return lambda r: get(r) is None

    def ordered(r: dict[str, Any]) -> bool:
        value = get(r)
        if value is None:
            return False
        try:
            if p.op is Op.GT:
                return bool(value > operand)
            if p.op is Op.GE:
                return bool(value >= operand)
            if p.op is Op.LT:
                return bool(value < operand)
            return bool(value <= operand)
        except TypeError:
            return False
    return ordered


def compile_predicate(p: Predicate) -> Callable[[dict[str, Any]], bool]:
    """A closure answering whether a record matches ``p``."""
    if isinstance(p, Always):
        return lambda r: True
    if isinstance(p, Compare):
        return _compile_compare(p)
    if isinstance(p, Not):
        inner = compile_predicate(p.item)
        return lambda r: not inner(r)
    parts = tuple(compile_predicate(item) for item in p.items)
    if len(parts) == 1:
        return parts[0]
    if isinstance(p, AllOf):
        def all_of(r: dict[str, Any]) -> bool:
            return all(part(r) for part in parts)
        return all_of
    assert isinstance(p, AnyOf)

    def any_of(r: dict[str, Any]) -> bool:
        return any(part(r) for part in parts)
    return any_of


def _dispatch_terms(p: Predicate) -> list[Compare]:
    """Top-level ``field == x`` / ``field in [...]`` terms that a table lookup can stand in for."""
    items = p.items if isinstance(p, AllOf) else (p,)
    return [c for c in items
            if isinstance(c, Compare) and c.op in (Op.EQ, Op.IN) and len(c.path) == 1
            and all(isinstance(x, str | int | None) and not isinstance(x, bool)
                    for x in (c.operand if c.op is Op.IN else (c.operand,)))]


def _without(p: Predicate, term: Compare) -> Predicate:
    if p is term:
        return Always()
    assert isinstance(p, AllOf)
    rest = tuple(item for item in p.items if item is not term)
    return rest[0] if len(rest) == 1 else AllOf(rest)


# ---------------------------------------------------------------------------------------------------------
# Outputs -> generated code

_EPOCH_RANGE = f"{EPOCH_MS_MIN} <= {{v}} <= {EPOCH_MS_MAX}"  # the slow path raises outside it
_INLINE_CONVERT: dict[Convert, str] = {
    # {v}: the variable, {fn}: the slow-path converter, {ctx}: the message constant.
    Convert.EPOCH_MS: "if {v}.__class__ is not int or not " + _EPOCH_RANGE + ": {v} = {fn}({v}, {ctx})",
    Convert.EPOCH_MS_TO_S: "{v} = {v} / 1000 if {v}.__class__ is int and " + _EPOCH_RANGE + " else {fn}({v}, {ctx})",
    Convert.MS_TO_S: "{v} = {v} / 1000 if {v}.__class__ is int else {fn}({v}, {ctx})",
    Convert.S_TO_MS: "{v} = {fn}({v}, {ctx})",
    Convert.STRING: "if {v}.__class__ is not str: {v} = {fn}({v}, {ctx})",
    Convert.INT: "if {v}.__class__ is not int: {v} = {fn}({v}, {ctx})",
    Convert.FLOAT: "{v} = {fn}({v}, {ctx})",
    Convert.BOOL: "if {v}.__class__ is not bool: {v} = {fn}({v}, {ctx})",
    Convert.BASE64: "{v} = {fn}({v}, {ctx})",
    Convert.HEX: "{v} = {fn}({v}, {ctx})",
}
# A float minus itself is 0.0 (falsy) when finite and NaN (truthy) for NaN and both infinities: one
# subtraction tells whether JSON can carry it. Non-finite values are treated exactly like null.
_NON_FINITE = "{v}.__class__ is float and {v} - {v}"
_FINITE_MEMBER = "(x.__class__ is not float or not x - x)"
# Blank text (empty or only whitespace) in a required text slot counts as missing.
_BLANK = "{v}.__class__ is str and (not {v} or {v}.isspace())"


def _strip_reserved(props: dict[str, Any]) -> None:
    """Remove what ``pass_properties`` must never set (see FRESHPAINT_PASS_THROUGH_RESERVED)."""
    for key in FRESHPAINT_PASS_THROUGH_RESERVED:
        props.pop(key, None)


def _literal(value: str | int) -> str:
    """Source text for a str/int constant; refuses anything else so no other user text becomes code."""
    if type(value) is str or type(value) is int:
        return repr(value)
    raise TypeError(f"not a literal: {type(value).__name__}")


def _describe_source(value: Value) -> str:
    expr = value.expr
    if isinstance(expr, FieldRef):
        return f"field '{'.'.join(expr.path)}' is null"
    if isinstance(expr, Template):
        return "a field used by the template is null"
    if isinstance(expr, ObjectOf):
        return "the object has no non-null entries"
    return "the value is null"


def _describe_user_props(value: Value) -> str:
    if isinstance(value.expr, FieldRef):
        return f"field '{'.'.join(value.expr.path)}' is null or empty"
    return _describe_source(value)


def _where(rule: Rule, destination: Destination, output: Output, what: str) -> str:
    """How messages name an output: its rule, destination, 1-based position and what it makes."""
    return f"rule {rule.name!r}: {destination.value} output #{output.index + 1} ({what})"


def _rule_function_name(index: int, destination: Destination) -> str:
    """The generated function of rule ``index`` for ``destination`` (emitted once, then looked up by name)."""
    return f"_rule{index}_{destination.value}"


class _Compiler:
    def __init__(self, model: MappingModel) -> None:
        self.model = model
        self.ns: dict[str, Any] = {
            "__builtins__": {},
            "_MRF": MissingRequiredField,
            "_insert_id": insert_id,
            "_mapped_iid": mapped_insert_id,
            "_valid_iid": _is_valid_insert_id,
            "_PT_RESERVED": FRESHPAINT_PASS_THROUGH_RESERVED,
            "_strip_reserved": _strip_reserved,
            "_tostr": CONVERTERS[Convert.STRING],
            "_deepcopy": copy.deepcopy,
            "dict": dict,
            "len": len,
            "int": int,
            "str": str,
            "float": float,
            "bool": bool,
        }
        for convert, fn in CONVERTERS.items():
            self.ns[f"_cv_{convert.value}"] = fn
        self.lines: list[str] = []
        self.counter = 0
        self.prefix_vars: dict[FieldPath, str] = {}  # per generated function, see emit_path

    # -- helpers --------------------------------------------------------------------------------------

    def bind(self, value: Any, prefix: str = "_k") -> str:
        self.counter += 1
        name = f"{prefix}{self.counter}"
        self.ns[name] = value
        return name

    def tmp(self) -> str:
        self.counter += 1
        return f"v{self.counter}"

    def const_expr(self, value: Any) -> str:
        if value is None or value is True or value is False:
            return repr(value)
        if type(value) is str or type(value) is int:
            return _literal(value)
        if isinstance(value, dict | list):
            return f"_deepcopy({self.bind(value)})"
        return self.bind(value)

    def emit(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def emit_value(self, indent: int, value: Value, target: str, ctx: str, missing: str | None = None,
                   blank: bool = False) -> bool:
        """Statements that leave the value (or None) in ``target``; returns whether None is possible.

        With ``missing`` (a message), a None value raises ``MissingRequiredField`` instead, checked
        before the conversion so the converted value needs no second test. With ``blank``, blank text
        counts as None (before the default, so a default stands in for it).
        """
        expr = value.expr
        may_be_none = True
        if isinstance(expr, FieldRef):
            self.emit_path(indent, expr.path, target)
            if expr.may_be_float:
                self.emit(indent, f"if {_NON_FINITE.format(v=target)}:")
                self.emit(indent + 1, f"{target} = None")
            if blank and missing is not None and value.default is None:
                # The common required id: one test for "null or blank".
                self.emit(indent, f"if {target} is None or {_BLANK.format(v=target)}:")
                self.emit(indent + 1, f"raise _MRF({self.bind(missing, '_m')})")
                missing = None
                may_be_none = False
            elif blank:
                self.emit_blank(indent, target)
        elif isinstance(expr, Const):
            self.emit(indent, f"{target} = {self.const_expr(expr.value)}")
            may_be_none = expr.value is None
            if blank and isinstance(expr.value, str) and not expr.value.strip():
                self.emit_blank(indent, target)
                may_be_none = True
        elif isinstance(expr, Template):
            self.emit_template(indent, expr, target, ctx)
            if blank:
                self.emit_blank(indent, target)
        elif isinstance(expr, ObjectOf):
            self.emit_object(indent, expr, target, ctx)
        else:
            assert isinstance(expr, InsertId)
            # The common case (first output, event_id already a valid id) inline; the rest in insert_id().
            self.emit(indent, f"{target} = r.get({_literal(EVENT_ID_FIELD)})")
            self.emit(indent, f"if len(out) or {target}.__class__ is not str or _valid_iid({target}) is None:")
            self.emit(indent + 1, f"{target} = _insert_id({target}, topic, partition, offset, len(out))")
            may_be_none = False
        if value.default is not None and may_be_none:
            self.emit(indent, f"if {target} is None:")
            may_be_none = self.emit_value(indent + 1, value.default, target, ctx, blank=blank)
        if missing is not None and may_be_none:
            self.emit_required(indent, target, missing)
            may_be_none = False
        if value.convert is not None:
            ctx_name = self.bind(ctx, "_m")
            if value.decimal_scale is not None:
                fn = self.bind(decimal_converter(value.convert, value.decimal_scale), "_dec")
                line = f"{target} = {fn}({target}, {ctx_name})"
            else:
                fn = f"_cv_{value.convert.value}"
                line = _INLINE_CONVERT[value.convert].format(v=target, fn=fn, ctx=ctx_name)
            if may_be_none:
                self.emit(indent, f"if {target} is not None:")
                self.emit(indent + 1, line)
            else:
                self.emit(indent, line)
        return may_be_none

    def emit_blank(self, indent: int, target: str) -> None:
        self.emit(indent, f"if {_BLANK.format(v=target)}:")
        self.emit(indent + 1, f"{target} = None")

    def emit_path(self, indent: int, path: FieldPath, target: str) -> None:
        """``target = r[a][b][c]``, where a null (or non-record) step anywhere gives None.

        In straight-line code (indent 1) the record behind each path prefix is looked up once per
        function and kept in a variable that is never reassigned.
        """
        parent = "r"
        segments = path
        if len(path) > 1 and indent == 1:
            prefix = path[:-1]
            parent = self.prefix_vars.get(prefix, "")
            if not parent:
                parent = self.tmp()
                self.emit_path(indent, prefix, parent)
                self.prefix_vars[prefix] = parent
            segments = path[-1:]
            self.emit(indent, f"{target} = {parent}.get({_literal(segments[0])}) if {parent}.__class__ is dict "
                              "else None")
            return
        self.emit(indent, f"{target} = {parent}.get({_literal(segments[0])})")
        for segment in segments[1:]:
            self.emit(indent, f"{target} = {target}.get({_literal(segment)}) if {target}.__class__ is dict "
                              "else None")

    def emit_template(self, indent: int, expr: Template, target: str, ctx: str) -> None:
        pieces: list[str] = []
        temps: list[str] = []
        ctx_name = ""
        for part in expr.parts:
            if isinstance(part, str):
                pieces.append(_literal(part))
            else:
                temp = self.tmp()
                self.emit_path(indent, part.path, temp)
                if part.may_be_float:
                    self.emit(indent, f"if {_NON_FINITE.format(v=temp)}:")
                    self.emit(indent + 1, f"{temp} = None")
                temps.append(temp)
                ctx_name = ctx_name or self.bind(f"{ctx} (template)", "_m")
                pieces.append(f"({temp} if {temp}.__class__ is str else _tostr({temp}, {ctx_name}))")
        self.emit(indent, f"if {' or '.join(f'{t} is None' for t in temps)}:")
        self.emit(indent + 1, f"{target} = None")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{target} = {' + '.join(pieces)}")

    def emit_object(self, indent: int, expr: ObjectOf, target: str, ctx: str) -> None:
        obj = self.tmp()
        if expr.merge is not None:
            merged = self.tmp()
            self.emit_value(indent, expr.merge, merged, f"{ctx} (merge)")
            self.emit(indent, f"if {merged}.__class__ is dict:")
            keep = f"x is not None and {_FINITE_MEMBER}" if expr.merge_may_hold_floats else "x is not None"
            self.emit(indent + 1, f"{obj} = {{k: x for k, x in {merged}.items() if {keep}}}")
            self.emit(indent, "else:")
            self.emit(indent + 1, f"{obj} = {{}}")
        else:
            self.emit(indent, f"{obj} = {{}}")
        for key, item in expr.entries:
            temp = self.tmp()
            if self.emit_value(indent, item, temp, f"{ctx}.{key}"):
                self.emit(indent, f"if {temp} is not None:")
                self.emit(indent + 1, f"{obj}[{_literal(key)}] = {temp}")
            else:
                self.emit(indent, f"{obj}[{_literal(key)}] = {temp}")
        self.emit(indent, f"{target} = {obj} or None")

    def always_present(self, value: Value) -> bool:
        return isinstance(value.expr, Const) and value.expr.value is not None and value.convert is None

    def emit_required(self, indent: int, target: str, message: str) -> None:
        self.emit(indent, f"if {target} is None:")
        self.emit(indent + 1, f"raise _MRF({self.bind(message, '_m')})")

    # -- rules ----------------------------------------------------------------------------------------

    def rule_function(self, index: int, destination: Destination, residual: str | None,
                      outputs: Sequence[_O], emit_output: Callable[[_O], None]) -> str:
        """Emit rule ``index``'s function for ``destination`` and return its name: the ``when:`` test the
        dispatch table left (``residual``), then each output's code, in the same shape for every destination."""
        fn_name = _rule_function_name(index, destination)
        self.emit(0, f"def {fn_name}(r, topic, partition, offset, out):")
        self.prefix_vars = {}
        if residual:
            self.emit(1, f"if not {residual}(r):")
            self.emit(2, "return")
        for output in outputs:
            emit_output(output)
        self.emit(0, "")
        return fn_name

    def freshsuccess_output(self, rule: Rule, output: FreshsuccessOutput) -> None:
        where = _where(rule, Destination.FRESHSUCCESS, output, f"action {output.action!r}")
        spec = FRESHSUCCESS_ACTIONS[output.action]
        required = (*FRESHSUCCESS_BASE_FIELDS, *spec.required)
        present: dict[str, str] = {}
        optional: list[tuple[str, str]] = []
        for key, value in output.fields:
            if self.always_present(value):
                present[key] = self.const_expr(value.expr.value)  # type: ignore[union-attr]
                continue
            temp = self.tmp()
            missing = None
            if key in required:
                missing = f"{where}: required field {key!r} is missing ({_describe_source(value)})"
            if self.emit_value(1, value, temp, f"{where}: field {key!r}", missing,
                               blank=key in required and key in FRESHSUCCESS_REQUIRED_TEXT):
                optional.append((key, temp))
            else:
                present[key] = temp
        order = ["accountId", "userId", "createdAt", "action", "sessionId",
                 *(k for k in required if k not in FRESHSUCCESS_BASE_FIELDS)]
        present["action"] = _literal(output.action)
        items = [f"{_literal(k)}: {present[k]}" for k in order if k in present]
        items += [f"{_literal(k)}: {v}" for k, v in present.items() if k not in order]
        obj = self.tmp()
        self.emit(1, f"{obj} = {{{', '.join(items)}}}")
        for key, temp in optional:
            self.emit(1, f"if {temp} is not None:")
            self.emit(2, f"{obj}[{_literal(key)}] = {temp}")
        self.emit(1, f"out.append({obj})")

    def freshpaint_output(self, rule: Rule, output: FreshpaintOutput) -> None:
        where = _where(rule, Destination.FRESHPAINT, output, "$identify" if output.identify else "event")
        if output.event is None:
            event = _literal(IDENTIFY_EVENT)
        elif self.always_present(output.event):
            event = self.const_expr(output.event.expr.value)  # type: ignore[union-attr]
        else:
            event = self.tmp()
            self.emit_value(1, output.event, event, f"{where}: event name",
                            f"{where}: required field 'event' is missing ({_describe_source(output.event)})",
                            blank=True)
        props = self.tmp()
        conditional: list[tuple[str, str]] = []
        fixed: list[tuple[str, str]] = []
        for key, value in output.properties:
            if self.always_present(value):
                fixed.append((key, self.const_expr(value.expr.value)))  # type: ignore[union-attr]
                continue
            temp = self.tmp()
            missing = None
            if key in FRESHPAINT_REQUIRED_PROPERTIES:
                missing = f"{where}: required property {key!r} is missing ({_describe_source(value)})"
            may_be_none = self.emit_value(1, value, temp, f"{where}: property {key!r}", missing,
                                          blank=key in FRESHPAINT_REQUIRED_TEXT)
            if key == "$insert_id" and not isinstance(value.expr, InsertId):
                # The mapping's own id: kept when valid, left out when blank, else made valid.
                guard = f"{temp} is not None and " if may_be_none else ""
                self.emit(1, f"if {guard}_valid_iid({temp}) is None:")
                self.emit(2, f"{temp} = _mapped_iid({temp})")
                may_be_none = True
            if may_be_none:
                conditional.append((key, temp))
            else:
                fixed.append((key, temp))
        if output.pass_properties is not None:
            ref = output.pass_properties
            passed = self.tmp()
            self.emit_path(1, ref.path, passed)
            if ref.members_may_be_float or ref.members_may_be_null:
                keep = " and ".join(
                    (["x is not None"] if ref.members_may_be_null else [])
                    + ([_FINITE_MEMBER] if ref.members_may_be_float else []))
                self.emit(1, f"{props} = {{k: x for k, x in {passed}.items() if {keep}}} "
                             f"if {passed}.__class__ is dict else {{}}")
            else:
                self.emit(1, f"{props} = dict({passed}) if {passed}.__class__ is dict else {{}}")
            self.emit(1, f"if not _PT_RESERVED.isdisjoint({props}):")
            self.emit(2, f"_strip_reserved({props})")
            for key, expr in fixed:
                self.emit(1, f"{props}[{_literal(key)}] = {expr}")
        else:
            self.emit(1, f"{props} = {{{', '.join(f'{_literal(k)}: {e}' for k, e in fixed)}}}")
        for key, temp in conditional:
            self.emit(1, f"if {temp} is not None:")
            self.emit(2, f"{props}[{_literal(key)}] = {temp}")
        if output.user_props is not None:
            # $identify exists to attach user properties: without any it is not sent (dead letter).
            temp = self.tmp()
            self.emit_value(1, output.user_props, temp, f"{where}: user_props")
            self.emit(1, f"if not {temp}:")
            message = f"{where}: required property '$user_props' is missing ({_describe_user_props(output.user_props)})"
            self.emit(2, f"raise _MRF({self.bind(message, '_m')})")
            self.emit(1, f"{props}['$user_props'] = {temp}")
        if output.integrations is not None:
            integrations = self.bind(dict(output.integrations))
            self.emit(1, f"{props}['$options'] = {{'integrations': dict({integrations})}}")
        self.emit(1, f"out.append({{'event': {event}, 'properties': {props}}})")

    # -- whole mapping --------------------------------------------------------------------------------

    def dispatch_field(self) -> str | None:
        counts: dict[str, int] = {}
        for rule in self.model.rules:
            for name in dict.fromkeys(c.path[0] for c in _dispatch_terms(rule.when)):  # file order, not hash order
                counts[name] = counts.get(name, 0) + 1
        if not counts:
            return None
        return max(counts, key=lambda name: counts[name])  # first seen wins ties

    def compile(self) -> CompiledMapping:
        key_field = self.dispatch_field()
        programs: list[_RuleProgram] = []
        # (dispatch values or None for "any event", rule function names) per destination
        routes: dict[Destination, list[tuple[tuple[Any, ...] | None, str]]] = {
            Destination.FRESHSUCCESS: [], Destination.FRESHPAINT: []}
        for index, rule in enumerate(self.model.rules):
            values: tuple[Any, ...] | None = None
            residual_pred = rule.when
            if key_field is not None:
                for term in _dispatch_terms(rule.when):
                    if term.path[0] == key_field:
                        values = tuple(term.operand) if term.op is Op.IN else (term.operand,)
                        residual_pred = _without(rule.when, term)
                        break
            residual = None
            if not isinstance(residual_pred, Always):
                residual = self.bind(compile_predicate(residual_pred), "_when")
            if rule.freshsuccess:
                emit_fs = partial(self.freshsuccess_output, rule)
                fs_name = self.rule_function(index, Destination.FRESHSUCCESS, residual, rule.freshsuccess, emit_fs)
                routes[Destination.FRESHSUCCESS].append((values, fs_name))
            if rule.freshpaint:
                emit_fp = partial(self.freshpaint_output, rule)
                fp_name = self.rule_function(index, Destination.FRESHPAINT, residual, rule.freshpaint, emit_fp)
                routes[Destination.FRESHPAINT].append((values, fp_name))

        for destination, entries in routes.items():
            if not entries:
                continue
            name = f"map_{destination.value}"
            if key_field is None:
                self.emit(0, f"_{name}_all = ({''.join(f'{fn}, ' for _, fn in entries)})")
                rule_fns = f"_{name}_all"
            else:
                rule_fns = f"_{name}_table.get(r.get({_literal(key_field)}), _{name}_other)"
            self.emit(0, f"def {name}(r, topic, partition, offset):")
            if self.model.reads_topic:  # the record is the decoder's fresh dict: one store, only when read
                self.emit(1, f"r[{_literal(TOPIC_FIELD)}] = topic")
            self.emit(1, "out = []")
            self.emit(1, f"for f in {rule_fns}:")
            self.emit(2, "f(r, topic, partition, offset, out)")
            self.emit(1, "return out")
            self.emit(0, "")

        python_source = "\n".join(self.lines) + "\n"
        code = compile(python_source, f"<mapping {self.model.source}>", "exec")
        exec(code, self.ns)  # generated from fixed templates; user text appears only as repr() literals

        for destination, entries in routes.items():
            if not entries or key_field is None:
                continue
            keys: list[Any] = []
            for values, _ in entries:
                for value in values or ():
                    if value not in keys:
                        keys.append(value)
            table = {key: tuple(self.ns[fn] for values, fn in entries if values is None or key in values)
                     for key in keys}
            self.ns[f"_map_{destination.value}_table"] = table
            self.ns[f"_map_{destination.value}_other"] = tuple(self.ns[fn] for values, fn in entries
                                                                if values is None)

        for index, rule in enumerate(self.model.rules):
            programs.append(_RuleProgram(  # None where the rule has no outputs: no function was emitted
                name=rule.name,
                matches=compile_predicate(rule.when),
                freshsuccess=self.ns.get(_rule_function_name(index, Destination.FRESHSUCCESS)),
                freshpaint=self.ns.get(_rule_function_name(index, Destination.FRESHPAINT)),
            ))
        return CompiledMapping(
            freshsuccess=self.ns.get("map_freshsuccess"),
            freshpaint=self.ns.get("map_freshpaint"),
            rule_names=tuple(rule.name for rule in self.model.rules),
            source=self.model.source,
            python_source=python_source,
            _programs=tuple(programs),
            reads_topic=self.model.reads_topic,
            reads_record_name=self.model.reads_record_name,
            fields_read={d.value: fields_read(self.model, d, event_id_field=EVENT_ID_FIELD) for d in Destination},
        )
