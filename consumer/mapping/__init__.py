"""The declarative mapping: YAML rules compiled once into per-destination Python functions.

``load_mapping(path, reader_schema)`` is the entry point; see docs/mapping.md for the file format.
"""

from consumer.mapping.compiler import (
    CompiledMapping,
    MapFn,
    compile_mapping,
    insert_id,
    insert_id_base,
    load_mapping,
)

__all__ = ["CompiledMapping", "MapFn", "compile_mapping", "insert_id", "insert_id_base", "load_mapping"]
