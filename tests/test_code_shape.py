"""The code's shape: no function or method in the library or the services is
longer than a reader can hold (60 lines, decorators and docstring included)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60


def _long_functions(package: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = node.end_lineno - first + 1
                if lines > limit:
                    where = path.relative_to(package.parent)
                    found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_60_lines():
    long = [f for package in ("incept", "services")
            for f in _long_functions(REPO / package, MAX_FUNCTION_LINES)]
    assert not long, (f"split these functions (at most {MAX_FUNCTION_LINES} lines each):\n"
                      + "\n".join(long))


def test_the_check_sees_a_long_method(tmp_path):
    (tmp_path / "pkg").mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg" / "m.py").write_text(
        f"class C:\n    @staticmethod\n    def long():\n{body}\n\n\ndef short():\n    return 1\n")
    assert _long_functions(tmp_path / "pkg", MAX_FUNCTION_LINES) == ["pkg/m.py:3 long (62 lines)"]
