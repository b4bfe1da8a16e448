"""The package's shape (issue 16): no import cycle, no vicap import inside a function, every other
local import explained, and the line budgets of a thin library."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vicap_utils"
# Issue 16 asks for at most 6,500 lines (from 8,892) with the top-level essence at most 3,000;
# both are met (6,496 and 2,785 when it closed). Raise a budget only with a feature, saying so in
# the closing note; lower it as the library thins.
PACKAGE_LINES, ESSENCE_LINES = 6500, 3000


def modules() -> dict[str, Path]:
    """{dotted name: file} of every module in the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, ast.stmt, bool]]:
    """(imported module, node, outside every function) for each import statement."""
    tree = ast.parse(path.read_text())
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    local = {id(inner) for node in ast.walk(tree) if isinstance(node, functions)
             for inner in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                stem = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(stem + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        found += [(t, node, id(node) not in local) for t in targets]
    return found


def graph() -> dict[str, set[str]]:
    """Module → the vicap modules it imports, inside functions too."""
    known = modules()
    return {name: {t for t, _, _ in imports(path, name, known) if t in known and t != name}
            for name, path in known.items()}


def test_no_import_cycle_counting_imports_inside_functions():
    edges, state, cycles = graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_imports_at_the_top_and_local_ones_explained():
    known, problems = modules(), []
    for name, path in known.items():
        lines = path.read_text().splitlines()
        for target, node, at_top in imports(path, name, known):
            if at_top or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if target.startswith("vicap_utils"):
                problems.append(f"{where}: vicap import inside a function ({target})")
            elif "#" not in lines[node.lineno - 1] and "#" not in lines[node.lineno - 2]:
                problems.append(f"{where}: local import of {target} without a comment saying why")
    assert not problems, "\n".join(problems)


def test_the_library_is_thin():
    counts = {path: len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    essence = sum(n for path, n in counts.items() if path.parent == PACKAGE)
    assert sum(counts.values()) <= PACKAGE_LINES, sorted(counts.items(), key=lambda kv: -kv[1])
    assert essence <= ESSENCE_LINES, essence


def test_the_checks_see_a_cycle_and_a_local_import(tmp_path, monkeypatch):
    package = tmp_path / "vicap_utils"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from vicap_utils import b\n")
    (package / "b.py").write_text("def f():\n    from vicap_utils import a\n    import json\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    assert graph()["vicap_utils.a"] == {"vicap_utils.b"}
    assert graph()["vicap_utils.b"] == {"vicap_utils.a"}
    for check in (test_no_import_cycle_counting_imports_inside_functions,
                  test_imports_at_the_top_and_local_ones_explained):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} passed on a cycle and a local import")
