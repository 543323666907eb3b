"""The package's layout holds: no import cycles, no private name used outside its module, the
layer rules of DESIGN.md section 1, imports at the top of the file (a heavy or optional package
loaded later says why), and no module over 400 lines.

    .venv/bin/python -m pytest tests/test_layers.py

Read from the source with ``ast`` (nothing is imported), so an import inside a function counts
as much as one at the top: that is where cycles used to hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trainer"
MAX_LINES = 400

# Modules everything may use: the package's own metadata, its errors, its logging.
LEAVES = {"trainer", "trainer.errors", "trainer.logs"}
# What each layer may import besides itself and the leaves (DESIGN.md section 1).
# extract reads and writes the clip-file contract, which trainer.data owns; training modules
# use extract for `train --media` and for `predict` on raw media.
ALLOWED = {
    "store": set(),
    "extract": {"store", "trainer.data"},
    "training": {"store", "extract"},
    "cv": {"training", "store"},
    "bench": {"training", "store", "extract", "cv"},
    "ops": {"training", "store", "extract", "cv"},
    "cli": {"training", "store", "extract", "cv", "bench", "ops"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(mod: str) -> str:
    if mod in LEAVES:
        return "leaf"
    if mod in ("trainer.cli", "trainer.__main__"):
        return "cli"
    parts = mod.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]  # store, cv, bench, extract, ops
    return "training"


def resolve(name: str) -> str | None:
    """The package module an import of ``name`` loads (``trainer.x.y`` or its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(mod: str) -> list[tuple[ast.stmt, str, bool]]:
    """(statement, imported trainer module, at the top of the file) for each import of one."""
    tree = ast.parse(MODULES[mod].read_text())
    is_package = MODULES[mod].name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        top = node in tree.body
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = mod.split(".") if is_package else mod.split(".")[:-1]
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            # ``from trainer.store import s3`` imports the module trainer.store.s3
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] == "trainer" and (target := resolve(t)) is not None:
                out.append((node, target, top))
    return out


GRAPH = {mod: {t for _, t, _ in imports(mod) if t != mod} for mod in MODULES}


def cycles() -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_what_it_is_for():
    """The helpers see a relative, a package and a submodule import, and a cycle when there is
    one: a checker that reads nothing would pass everything."""
    assert resolve("trainer.store.s3.client") == "trainer.store.s3"
    assert "trainer.store.files" in GRAPH["trainer.store.rundir"]
    assert "trainer.store.s3" in GRAPH["trainer.cv.report"]  # inside a function
    assert layer("trainer.train") == "training" and layer("trainer.ops.flow") == "ops"
    assert layer("trainer.store") == "store" and layer("trainer.errors") == "leaf"
    GRAPH["trainer.errors"].add("trainer.train")  # errors -> train -> errors
    try:
        assert any({"trainer.errors", "trainer.train"} <= set(c) for c in cycles())
    finally:
        GRAPH["trainer.errors"].discard("trainer.train")


def test_no_import_cycles():
    assert cycles() == []


def test_each_layer_imports_only_what_it_may():
    wrong = []
    for mod in MODULES:
        mine = layer(mod)
        for node, target, _ in imports(mod):
            theirs = layer(target)
            ok = (theirs in ("leaf", mine) or theirs in ALLOWED.get(mine, set())
                  or target in ALLOWED.get(mine, set()))
            if not ok:
                wrong.append(f"{mod} ({mine}) imports {target} ({theirs}), line {node.lineno}")
    assert wrong == []


def test_nothing_but_the_command_line_imports_the_operator_side():
    users = {m for m, targets in GRAPH.items() if any(layer(t) == "ops" for t in targets)}
    assert {m for m in users if layer(m) != "ops"} == {"trainer.cli"}


def test_no_private_name_is_used_outside_its_module():
    found = []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> trainer module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainer"):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if sub in MODULES:
                        aliases[a.asname or a.name] = sub
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{mod}:{node.lineno} imports {node.module}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("trainer") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{mod}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert found == []


def test_imports_are_at_the_top_or_say_why_not():
    """An import inside a function is a heavy or optional package (torch, boto3, docker, pulumi,
    matplotlib, the extractors' packages), and its line says so in a comment."""
    silent = []
    for mod, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in tree.body:
                text = " ".join(lines[node.lineno - 1:node.end_lineno])
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                if "#" not in text and not above.startswith("#"):
                    silent.append(f"{mod}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert silent == []


@pytest.mark.parametrize("folder", ["trainer", "scripts"])
def test_no_module_or_script_over_400_lines(folder):
    files = [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sh")]
    assert files
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
