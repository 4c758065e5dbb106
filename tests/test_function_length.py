"""House rule: no function over 80 lines in production code (tests/ and bench/ are not production)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 80
NOT_PRODUCTION = {"tests", "bench", ".venv", "build"}


def long_functions(root: Path, limit: int = MAX_LINES) -> list[str]:
    """`path:line name (n lines)` for every function or method of more than `limit` lines,
    decorators and docstring included, nested functions counted with their parent too."""
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in NOT_PRODUCTION or any(p.startswith(".") for p in rel.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > limit:
                    out.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_the_walk_finds_a_long_function(tmp_path: Path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "pkg").mkdir()
    method = "\n".join("    " + line for line in body.splitlines())
    (tmp_path / "pkg/m.py").write_text(f"class C:\n    @staticmethod\n    def long():\n{method}\n\n\ndef short():\n    pass\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/t.py").write_text(f"def long():\n{body}\n")  # tests are not production
    assert long_functions(tmp_path) == [f"pkg/m.py:3 long ({MAX_LINES + 2} lines)"]


def test_no_function_in_production_code_is_over_80_lines():
    assert long_functions(REPO) == [], "split these (house rule: no function over 80 lines)"
