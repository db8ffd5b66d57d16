"""yamlsource: safe_load values, line numbers for every key and item, duplicate and unknown keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.errors import ConfigError
from consumer.yamlsource import (
    Located,
    closest,
    dotted,
    find_unknown_keys,
    load_yaml,
    load_yaml_text,
    reject_unknown_keys,
)

DOC = """\
version: 1
defaults:
  freshpaint:
    time: {field: occurred_at}
rules:
  - name: first
    when: {event_type: a}
  - name: second
    freshpaint:
      - event: X
        properties: {a: 1,
          b: 2}
"""


def test_line_of_points_at_keys_and_items() -> None:
    located = load_yaml_text(DOC, source="m.yaml")
    assert located.line_of(()) == 1
    assert located.line_of(("version",)) == 1
    assert located.line_of(("defaults", "freshpaint", "time")) == 4
    assert located.line_of(("defaults", "freshpaint", "time", "field")) == 4
    assert located.line_of(("rules", 0)) == 6
    assert located.line_of(("rules", 1, "name")) == 8
    assert located.line_of(("rules", 1, "freshpaint", 0, "event")) == 10
    assert located.line_of(["rules", 1, "freshpaint", 0, "properties", "b"]) == 12
    assert located.line_of(("rules", 5)) is None


def test_nearest_line_where_and_get() -> None:
    located = load_yaml_text(DOC, source="m.yaml")
    assert located.nearest_line(("rules", 1, "freshpaint", 0, "missing", "deeper")) == 10
    assert located.where(("rules", 0, "nope")) == "m.yaml:6"
    assert located.get(("rules", 0, "when", "event_type")) == "a"
    assert located.get(("rules", 9), "dflt") == "dflt"
    assert located.get(("version", "x")) is None


def test_values_are_what_safe_load_gives() -> None:
    text = """\
base: &base {x: 1, y: 2}
merged:
  <<: *base
  y: 3
when: 2024-01-02
flag: yes
octal: 010
alias: *base
"""
    located = load_yaml_text(text)
    assert located.value == yaml.safe_load(text)
    # A key that overrides a merged one is not a duplicate, and its line is its own.
    assert located.line_of(("merged", "y")) == 4
    assert located.line_of(("merged", "x")) == 1


def test_duplicate_key_names_file_line_and_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml_text("a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\n", source="conf.yaml")
    err = caught.value
    assert (err.file, err.line, err.key) == ("conf.yaml", 5, "c")
    assert str(err) == "conf.yaml:5: c: duplicate key 'c' (first defined on line 3)"


def test_quoted_and_plain_spellings_of_a_key_are_duplicates() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_yaml_text('a: 1\n"a": 2\n')


def test_duplicate_inside_sequence_item() -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml_text("rules:\n  - name: x\n    name: y\n", source="m.yaml")
    assert caught.value.line == 3


def test_syntax_error_names_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml_text("a: 1\nb: [1, 2\nc: 3\n", source="bad.yaml")
    assert caught.value.file == "bad.yaml"
    assert caught.value.line == 3
    assert "invalid YAML" in str(caught.value)


def test_python_tags_are_refused() -> None:
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_yaml_text("a: !!python/object/apply:os.system ['true']\n")


def test_several_documents_are_refused() -> None:
    with pytest.raises(ConfigError, match="single document"):
        load_yaml_text("a: 1\n---\nb: 2\n")


def test_empty_file_is_none() -> None:
    located = load_yaml_text("# only a comment\n")
    assert located.value is None
    assert located.line_of(()) is None


def test_load_yaml_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  topics: [a]\n", encoding="utf-8")
    located = load_yaml(path)
    assert located.source == str(path)
    assert located.value == {"kafka": {"topics": ["a"]}}
    assert located.line_of(("kafka", "topics", 0)) == 2


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_yaml(tmp_path / "absent.yaml")
    assert caught.value.file == str(tmp_path / "absent.yaml")
    assert "cannot read" in str(caught.value)


def test_reject_unknown_keys_suggests_the_closest_known_key() -> None:
    located = load_yaml_text("kafka:\n  topics: [a]\n  bootstrap_server: x\n", source="c.yaml")
    with pytest.raises(ConfigError) as caught:
        reject_unknown_keys(located, ("kafka",), {"topics", "bootstrap_servers", "group_id"})
    err = caught.value
    assert (err.file, err.line, err.key) == ("c.yaml", 3, "kafka.bootstrap_server")
    assert str(err) == ("c.yaml:3: kafka.bootstrap_server: unknown key 'bootstrap_server' "
                        "(did you mean 'bootstrap_servers'?)")
    reject_unknown_keys(located, ("kafka",), {"topics", "bootstrap_server"})  # all known: no error


def test_find_unknown_keys_lists_all_in_file_order() -> None:
    located = load_yaml_text("rules:\n  - nme: a\n    zzz: 1\n    when: {}\n")
    found = find_unknown_keys(located, ("rules", 0), ("name", "when"))
    assert [(u.key, u.line, u.suggestion) for u in found] == [("nme", 2, "name"), ("zzz", 3, None)]
    assert found[0].message == "unknown key 'nme' (did you mean 'name'?)"
    assert dotted(found[0].path) == "rules[0].nme"


def test_dotted_and_closest() -> None:
    assert dotted(("rules", 2, "freshpaint", 0, "event")) == "rules[2].freshpaint[0].event"
    assert dotted(()) == ""
    assert closest("evnt", ["event", "identify"]) == "event"
    assert closest("ACTION", ["action"]) == "action"
    assert closest("qqqq", ["event"]) is None


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10),
                     st.floats(allow_nan=False, allow_infinity=False))
_keys = st.text(min_size=1, max_size=8)
_docs = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(_keys, inner, max_size=4)), max_leaves=20)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append((*prefix, key))
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.append((*prefix, index))
            out.extend(_paths(item, (*prefix, index)))
    return out


@settings(max_examples=200, deadline=None)
@given(_docs, st.booleans())
def test_any_document_loads_like_safe_load_and_every_path_has_a_line(doc: Any, flow: bool) -> None:
    text = yaml.dump(doc, Dumper=_NoAliasDumper, default_flow_style=flow, allow_unicode=True)
    located = load_yaml_text(text)
    assert located.value == yaml.safe_load(text)
    line_count = len(re.findall("\r\n|[\r\n\x85\u2028\u2029]", text)) + 1  # YAML's own line breaks
    for path in _paths(located.value):
        line = located.line_of(path)
        assert line is not None, path
        assert 1 <= line <= line_count, path


def test_aliases_are_walked_once() -> None:
    # 10 levels of 10 aliases each would be 10**10 paths if every alias were walked again.
    text = "a0: &a0 [x, y]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 11))
    located = load_yaml_text(text)
    lines = (located.line_of(("a0", 1)), located.line_of(("a10",)), located.nearest_line(("a10", 3, 2, 1)))
    # An aliased value is located where its anchor defines it (a10's items are *a9, defined on line 10).
    assert lines == (1, 11, 10)


def test_located_is_immutable() -> None:
    located = Located(value={}, source="x")
    with pytest.raises(AttributeError):
        located.source = "y"  # type: ignore[misc]
