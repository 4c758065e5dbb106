"""The test suite can be run in pieces: no test module depends on another one, and the markers
`make test-fast` leaves out are the ones pyproject.toml registers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_module_imports_another_or_conftest():
    """Shared fixtures live in conftest.py and shared helpers in plain modules (helpers.py, ...):
    a test file imported by another runs its module-level code twice and ties the two together."""
    bad = {p.name: sorted(m for m in imported_modules(p) if m.startswith("test_") or m == "conftest")
           for p in sorted(TESTS.glob("*.py"))}
    assert not {k: v for k, v in bad.items() if v}


def test_make_test_fast_leaves_out_every_registered_marker():
    registered = re.findall(r'^\s*"(\w+):', (REPO / "pyproject.toml").read_text(), re.M)
    assert sorted(registered) == ["browser", "gpu", "multiprocess", "slow"]
    fast = re.search(r"^test-fast:.*\n\t(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert fast, "Makefile has no test-fast target"
    assert all(f"not {m}" in fast.group(1) for m in registered), fast.group(1)
    assert "--strict-markers" in (REPO / "pyproject.toml").read_text()
