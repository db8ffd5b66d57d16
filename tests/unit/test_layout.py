"""The layout's rules, read from the source: who may import the Kafka client, who commits, who reads whose privates.

docs/architecture.md states these rules; each is checked here over every module of the package, and each check
is shown to catch a synthetic module that breaks it, so a rule cannot pass by checking nothing.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "consumer"

KAFKA_CLIENT_PLACES = ("consumer/kafka/", "consumer/tools/", "consumer/testing/", "consumer/app/startup.py",
                       "consumer/cli.py")
"""Where ``confluent_kafka`` may be imported: the Kafka edge, the tools that read or write topics, the test
support, the start-up broker check, and the command line (to name the client's refusal of its settings)."""

ALLOWED_IMPORTS: dict[str, set[str]] = {
    "errors": set(),
    "yamlsource": {"errors"},
    "config": {"errors", "yamlsource"},
    "mapping": {"errors", "yamlsource"},
    "observability": {"errors", "config"},
    "pipeline": {"errors", "config", "mapping", "observability"},
    "sinks": {"errors", "pipeline"},
    "decoding": {"errors", "config", "sinks"},
    "kafka": {"__init__", "errors", "config", "pipeline"},
    "app": {"errors", "config", "mapping", "observability", "pipeline", "sinks", "decoding", "kafka"},
    "tools": {"errors", "config", "yamlsource", "mapping", "observability", "pipeline", "sinks", "decoding", "kafka",
              "app"},
}
"""Which parts of the package each part may import: the flow runs one way (docs/architecture.md draws it).
``testing/`` and ``cli.py`` sit on top and may import anything."""

URL_PATH = re.compile(r"^/(v1|track)(/|$)")
"""The destinations' request paths: only ``consumer/sinks/`` (and the emulators in ``testing/``) spell them."""


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        name = str(path.relative_to(PACKAGE.parent))
        yield name, ast.parse(path.read_text(encoding="utf-8"), filename=name)


def imported_modules(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def kafka_client_importers(tree: ast.Module) -> bool:
    return any(name == "confluent_kafka" or name.startswith("confluent_kafka.") for name in imported_modules(tree))


def commit_calls(tree: ast.Module) -> list[int]:
    """Lines that call ``<something>.commit(offsets=...)`` (a Kafka client's commit)."""
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "commit"
            and any(keyword.arg == "offsets" for keyword in node.keywords)]


def private_imports(name: str, tree: ast.Module) -> list[str]:
    """``from consumer.other_package... import _private`` across top-level packages of ``consumer``."""
    own = name.split("/")[1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("consumer."):
            other = node.module.split(".")[1]
            found += [f"{node.module}.{alias.name}" for alias in node.names
                      if alias.name.startswith("_") and other != own.removesuffix(".py")]
    return found


def private_attributes_of_other_objects(tree: ast.Module) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls`` (reaching into another object's privates). librdkafka's
    local error codes (``KafkaError._PARTITION_EOF``, ...) are public names that happen to start with ``_``."""
    return [f"line {node.lineno}: .{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "KafkaError"))]


def part_of(name: str) -> str:
    """``consumer/pipeline/lane.py`` -> ``pipeline``; ``consumer/config.py`` -> ``config``."""
    return name.split("/")[1].removesuffix(".py")


def imported_parts(tree: ast.Module) -> set[str]:
    """The parts of ``consumer`` a module imports (``__init__`` for ``from consumer import ...``)."""
    parts = set()
    for module in imported_modules(tree):
        if module == "consumer":
            parts.add("__init__")
        elif module.startswith("consumer."):
            parts.add(module.split(".")[1])
    return parts


def import_rule_breaks(name: str, tree: ast.Module) -> set[str]:
    part = part_of(name)
    if part not in ALLOWED_IMPORTS:
        return set()
    return imported_parts(tree) - ALLOWED_IMPORTS[part] - {part}


def url_paths(tree: ast.Module) -> list[str]:
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and URL_PATH.match(node.value)]


def commit_requests(tree: ast.Module) -> list[int]:
    """Lines that ask a source to commit (``commit_async``/``commit_sync``)."""
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("commit_async", "commit_sync")]


def test_every_module_belongs_to_a_known_part() -> None:
    unknown = {name for name, _ in modules() if part_of(name) not in {*ALLOWED_IMPORTS, "testing", "cli", "__init__"}}
    assert unknown == set()


def test_each_part_imports_only_the_parts_before_it_in_the_flow() -> None:
    offenders = {name: breaks for name, tree in modules() if (breaks := import_rule_breaks(name, tree))}
    assert offenders == {}


def test_only_the_kafka_edge_imports_the_kafka_client() -> None:
    offenders = [name for name, tree in modules()
                 if kafka_client_importers(tree) and not name.startswith(KAFKA_CLIENT_PLACES)]
    assert offenders == []


def test_only_the_source_calls_a_kafka_commit_and_only_the_committer_asks_it_to() -> None:
    callers = {name for name, tree in modules() if commit_calls(tree) and not name.startswith("consumer/testing/")}
    assert callers == {"consumer/kafka/source.py"}
    requesters = {name for name, tree in modules() if commit_requests(tree)}
    assert requesters == {"consumer/pipeline/committer.py"}


def test_only_the_sinks_spell_the_destinations_request_paths() -> None:
    offenders = {name: found for name, tree in modules()
                 if not name.startswith(("consumer/sinks/", "consumer/testing/")) and (found := url_paths(tree))}
    assert offenders == {}


def test_the_tools_use_only_public_names_of_other_packages() -> None:
    offenders = {name: found for name, tree in modules() if name.startswith("consumer/tools/")
                 and (found := private_imports(name, tree) + private_attributes_of_other_objects(tree))}
    assert offenders == {}


@pytest.mark.parametrize(("source", "rule"), [
    ("from confluent_kafka import Consumer\n", kafka_client_importers),
    ("import confluent_kafka.admin\n", kafka_client_importers),
    ("consumer.commit(offsets=[], asynchronous=False)\n", commit_calls),
    ("self.source.commit_sync({})\n", commit_requests),
    ("from consumer.kafka.source import KafkaSource\n",
     lambda tree: import_rule_breaks("consumer/pipeline/lane.py", tree)),
    ("from consumer import tools\n", lambda tree: import_rule_breaks("consumer/sinks/x.py", tree)),
    ("url = base + '/v1/ping'\n", url_paths),
    ("from consumer.mapping.compiler import _RuleProgram\n", lambda tree: private_imports("consumer/tools/x.py", tree)),
    ("rules = mapping._programs\n", private_attributes_of_other_objects),
])
def test_each_rule_catches_a_module_that_breaks_it(source: str, rule: object) -> None:
    assert callable(rule)
    assert rule(ast.parse(source)), f"the rule let a breaking module through: {source!r}"
    assert not rule(ast.parse("import json\nself._ok = 1\n"))


# ------------------------------------------------------------------- docs/architecture.md names what exists

ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def named_paths(text: str) -> set[str]:
    """Repository paths the page names: link targets and backticked ``consumer/...``, ``scripts/...`` paths."""
    found = {target.removeprefix("../") for target in re.findall(r"\]\((\.\./[^)#]+)\)", text)}
    found |= set(re.findall(r"`((?:consumer|scripts|tests|helm|docs)/[\w./-]*\w/?)`", text))
    return found


def named_methods(text: str, classes: dict[str, set[str]]) -> set[tuple[str, str]]:
    """``Class.method`` spans whose class is one of the package's."""
    return {(cls, attr) for cls, attr in re.findall(r"`([A-Z]\w+)\.(\w+)`", text) if cls in classes}


def package_classes() -> dict[str, set[str]]:
    classes: dict[str, set[str]] = {}
    for _name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                members = classes.setdefault(node.name, set())
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        members.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        members.add(item.target.id)
    return classes


def test_every_path_and_method_the_architecture_page_names_exists() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    paths = named_paths(text)
    assert len(paths) > 10  # the page does name the files it describes
    missing = sorted(p for p in paths if not (PACKAGE.parent / p).exists())
    assert missing == []
    classes = package_classes()
    methods = named_methods(text, classes)
    assert ("Lane", "step") in methods
    assert sorted(f"{c}.{m}" for c, m in methods if m not in classes[c]) == []


def test_the_architecture_check_notices_a_name_that_does_not_exist() -> None:
    text = "see [`lane.py`](../consumer/no_such_module.py) and `Lane.no_such_step`"
    assert "consumer/no_such_module.py" in named_paths(text)
    assert not (PACKAGE / "no_such_module.py").exists()
    classes = package_classes()
    assert ("Lane", "no_such_step") in named_methods(text, classes)
    assert "no_such_step" not in classes["Lane"]
