"""No import cycles: neither between the packages of recstack and services (recstack.serving,
recstack.rpc, ...) nor between modules. Every import statement counts, deferred ones inside
functions included: a deferred import hides a cycle from the interpreter, not from the design.
``from package import submodule`` inside the package itself is not an edge to the package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREES = ("recstack", "services")


def module_files() -> dict[str, Path]:
    out = {}
    for tree in TREES:
        for path in (ROOT / tree).rglob("*.py"):
            if "_pb2" in path.name:  # generated stubs
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported(name: str, path: Path) -> set[str]:
    """Dotted names one module imports (``from a import b`` gives both ``a`` and ``a.b``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = module_files()
    modules: dict[str, set[str]] = {m: set() for m in files}
    packages: dict[str, set[str]] = {}
    for name, path in files.items():
        for target in imported(name, path):
            # a module's own parent packages are initialised before it runs: not a cycle
            if target in files and target != name and not name.startswith(target + "."):
                modules[name].add(target)
                src, dst = ".".join(name.split(".")[:2]), ".".join(target.split(".")[:2])
                if src != dst and src in files and dst in files:
                    packages.setdefault(src, set()).add(dst)
    return modules, packages


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_packages() -> None:
    _, packages = graphs()
    assert "recstack.serving" in packages  # the graph is not empty
    assert cycles(packages) == []


def test_no_import_cycles_between_modules() -> None:
    modules, _ = graphs()
    assert cycles(modules) == []
