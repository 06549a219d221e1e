"""DESIGN rule 1: protocol logic does no I/O and reads no clock.

The core packages must not import anything that touches file descriptors, real time, threads
or the test/lab tooling.  This test parses every module (no import side effects) and fails on
the first forbidden import, naming the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE_PACKAGES = ("tcpip", "ndis", "offload_target")
FORBIDDEN = {"os", "socket", "select", "selectors", "time", "threading", "scapy", "pyroute2",
             "subprocess", "asyncio"}
# The one sanctioned exception: the table selector reads VNIC_PURE_PYTHON from the environment
# at import time to choose the C table or its Python twin; it does no I/O on any path.
ALLOWED = {("offload_target/table.py", "os")}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _core_modules() -> list[Path]:
    return sorted(p for pkg in CORE_PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_does_no_io(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    bad = [(line, name) for line, name in _imports(path)
           if name.split(".")[0] in FORBIDDEN and (rel, name) not in ALLOWED]
    assert not bad, f"{rel} imports I/O or clock modules: {bad}"


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import os\nfrom time import monotonic\nfrom . import sibling\n")
    names = [name for _, name in _imports(sample)]
    assert [n for n in names if n.split(".")[0] in FORBIDDEN] == ["os", "time"]
