"""The installed package carries copies of the schemas (package data); they must not drift."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "schemas").glob("*.avsc")))
def test_packaged_schema_matches_the_repository_schema(name: str) -> None:
    packaged = REPO / "consumer" / "defaults" / name
    assert packaged.is_file(), f"copy schemas/{name} to consumer/defaults/"
    assert packaged.read_bytes() == (REPO / "schemas" / name).read_bytes()
