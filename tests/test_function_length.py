"""No function in ``tfcompress/`` is over 80 lines (``make lint`` runs this file too).

A function's length is every line from its ``def`` to the last line of its body, docstring
and comments included (decorators not).
"""

import ast
from pathlib import Path

MAX_LINES = 80
PACKAGE = Path(__file__).resolve().parent.parent / "tfcompress"


def function_lengths(source: str) -> dict[str, int]:
    """``{qualified name: lines}`` of every function and method in ``source``, nested ones
    as ``outer.inner``.

    Example:
        >>> function_lengths("def f():\\n    return 1\\n")
        {'f': 2}
    """
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    lengths[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return lengths


def long_functions(root: Path = PACKAGE, limit: int = MAX_LINES) -> dict[str, int]:
    """``{"path::name": lines}`` of the functions under ``root`` longer than ``limit``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root.parent).as_posix()
        for name, lines in function_lengths(path.read_text(encoding="utf-8")).items():
            if lines > limit:
                found[f"{where}::{name}"] = lines
    return found


def test_function_lengths_count_def_to_last_line_per_qualified_name():
    source = (
        "@decorator\n"             # 1: not counted
        "def outer(x):\n"          # 2
        '    """Doc."""\n'         # 3
        "    def inner():\n"       # 4
        "        return (x,\n"     # 5
        "                x)\n"     # 6
        "    # a comment\n"        # 7
        "    return inner\n"       # 8
        "\n"
        "class A:\n"
        "    async def m(self):\n"  # 11
        "        pass\n"           # 12
    )
    assert function_lengths(source) == {"outer": 7, "outer.inner": 3, "A.m": 2}


def test_long_functions_finds_one_over_the_limit(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    (package / "mod.py").write_text(f"def long():\n{body}\ndef short():\n    pass\n")
    assert long_functions(package) == {"pkg/mod.py::long": 81}
    assert long_functions(package, limit=81) == {}


def test_no_function_over_the_limit():
    found = long_functions()
    assert not found, (f"functions over {MAX_LINES} lines: {found}; split them (small "
                       "functions that each do one thing)")
