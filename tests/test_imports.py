"""The shape of the package, read from its source (ast): no library module reaches the toy world, no
import cycles, imports at module top unless the target is heavy, no reach into another module's
private names, and the table contracts in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "rlaif"
# Not the library: the command line and the toy world itself may use the toy world.
NOT_LIBRARY = {"rlaif.cli", "rlaif.toy"}
# Imported inside functions on purpose: slow to import or optional (`pip install 'rlaif[ray]'`, `[vllm]`).
HEAVY_THIRD_PARTY = {"torch", "vllm", "ray", "trl", "transformers", "peft", "accelerate", "matplotlib", "tokenizers"}
# The command line imports a command's stage when the command runs, so `rlaif --help` starts in a second:
# anything that pulls in these (seconds to import) waits for its command.
SLOW_THIRD_PARTY = HEAVY_THIRD_PARTY | {"datasets", "scipy", "sklearn", "fastapi", "uvicorn", "pyarrow"}
TOY_SPEC = re.compile(r"rlaif\.toy([.:][\w.]*)?")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


class Imports(ast.NodeVisitor):
    """Every import of a module, with whether it runs at import time (top) or inside a function (lazy)."""

    def __init__(self, name: str, is_package: bool):
        self.name, self.package = name, name if is_package else name.rpartition(".")[0]
        self.found: list[tuple[str, bool, int]] = []  # (module, lazy, line)
        self.names: list[tuple[str, str, int]] = []  # (module, imported name, line)
        self.depth = 0

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((alias.name, self.depth > 0, node.lineno))

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self.found.append((sub if sub in MODULES else base, self.depth > 0, node.lineno))
            self.names.append((base, alias.name, node.lineno))


def parse(name: str) -> tuple[ast.Module, Imports]:
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    visitor = Imports(name, path.name == "__init__.py")
    visitor.visit(tree)
    return tree, visitor


PARSED = {name: parse(name) for name in MODULES}


def edges(name: str, lazy: bool | None = None) -> set[str]:
    """The rlaif modules `name` imports (top-level only, lazy only, or both when None)."""
    return {m for m, is_lazy, _ in PARSED[name][1].found if m in MODULES and m != name and lazy in (None, is_lazy)}


def top_closure(name: str) -> set[str]:
    """Every module, rlaif's and third-party roots, that importing `name` imports."""
    seen, todo, roots = set(), [name], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for m, lazy, _ in PARSED[current][1].found:
            if lazy:
                continue
            if m in MODULES:
                todo.append(m)
                todo.extend(p for p in MODULES if m.startswith(p + ".") or p == m.rpartition(".")[0])
            else:
                roots.add(m.split(".")[0])
    return seen | roots


def is_heavy(module: str, heavy: set[str] = HEAVY_THIRD_PARTY) -> bool:
    if module in MODULES:
        return bool(top_closure(module) & heavy)
    return module.split(".")[0] in heavy


def test_the_walk_sees_the_package():
    assert {"rlaif.cli", "rlaif.toy", "rlaif.runs", "rlaif.stages.filter.dedup"} <= set(MODULES)
    assert "rlaif.stages.generate" in edges("rlaif.cli") | edges("rlaif.cli", lazy=True)
    assert is_heavy("rlaif.engines.transformers") and not is_heavy("rlaif.runs")


@pytest.mark.parametrize("name", sorted(set(MODULES) - NOT_LIBRARY))
def test_no_library_module_imports_the_toy_world(name):
    tree, imports = PARSED[name]
    assert not [m for m, _, _ in imports.found if m == "rlaif.toy" or m.startswith("rlaif.toy.")], \
        f"{MODULES[name]} imports rlaif.toy; resolve names through rlaif.sources instead"
    strings = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
               and TOY_SPEC.fullmatch(n.value)]
    assert not strings, f"{MODULES[name]}:{strings[0].lineno}: {strings[0].value!r} names the toy world by string"


def test_no_import_cycles():
    graph = {name: edges(name) for name in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_imports_inside_functions_are_heavy():
    # rlaif.toy is a script of build steps (tokenizer, model, training): each step imports what it uses
    light = [f"{MODULES[name].relative_to(REPO)}:{line}: {m}" for name in set(MODULES) - {"rlaif.toy"}
             for m, lazy, line in PARSED[name][1].found
             if lazy and not is_heavy(m, SLOW_THIRD_PARTY if name == "rlaif.cli" else HEAVY_THIRD_PARTY)]
    assert not light, "import these at module top (they are cheap):\n" + "\n".join(light)


def test_no_reach_into_private_names():
    private = [f"{MODULES[name].relative_to(REPO)}:{line}: from {base} import {what}" for name in MODULES
               for base, what, line in PARSED[name][1].names
               if base.startswith("rlaif") and what.startswith("_") and base != name]
    for name in MODULES:  # `module._name` on an imported rlaif module
        tree, imports = PARSED[name]
        aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and (node.module or "").startswith("rlaif") for alias in node.names
                   if f"{node.module}.{alias.name}" in MODULES}
        private += [f"{MODULES[name].relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}"
                    for node in ast.walk(tree) if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not private, "\n".join(private)


def test_table_contracts_live_in_records():
    """Arrow Features are built in rlaif/records.py only; its pydantic records match the tables they describe."""
    builders = [f"{MODULES[name].relative_to(REPO)}:{node.lineno}" for name in MODULES if name != "rlaif.records"
                for node in ast.walk(PARSED[name][0]) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute) and node.func.attr in ("Features", "Value")]
    assert not builders, "define the table's features in rlaif/records.py: " + ", ".join(builders)
    from rlaif.records import COMPARISON_FEATURES, PAIR_FEATURES, Judgment, PreferencePair

    assert set(Judgment.model_fields) == set(COMPARISON_FEATURES)
    assert set(PreferencePair.model_fields) == set(PAIR_FEATURES)
