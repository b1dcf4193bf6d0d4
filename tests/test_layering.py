"""Import rules, checked on the source's syntax tree.

1. Lower layers never import higher ones (config -> device -> mapping -> host -> chip -> nn, session -> methods ->
   experiments -> cli).
2. The host/chip boundary: the methods layer, which stands where a real host stands, imports neither the
   chip (the true cell state) nor ``nn`` (deployment on a true chip), ``experiments`` or ``cli``.

Every import form counts: ``import ittrna.x``, ``from ittrna.x import y``, ``from ittrna import x`` (the
package root re-exports the chip, so it counts as the root unless ``x`` is a submodule) and relative imports.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ittrna"
RANK = {"errors": 0, "registry": 0, "boundary": 0, "_resources": 1, "_plain": 1, "_io": 2, "config": 3,
        "_validate": 4, "device": 5, "graph": 5.5, "mapping": 6, "host": 7, "chip": 8, "data": 8, "models": 9,
        "training": 10, "nn": 11, "session": 11, "methods": 12, "experiments": 13, "cli": 14, "__init__": 15,
        "__main__": 15}
"""Each helper module has a rank of its own (the order in which they may import each other), so any import
cycle among them fails the rule."""
FORBIDDEN = {"methods": {"chip", "nn", "session", "experiments", "cli", "__init__"}}
SUBMODULES = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()}


def _layer(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def imported_layers(path: Path) -> list[tuple[int, str]]:
    """(line, top-level ittrna module) for every ittrna import in ``path`` (root imports as ``__init__``)."""
    rel = path.relative_to(SRC)
    package = ["ittrna", *rel.parts[:-1]]  # the importing module's package
    found: list[tuple[int, str]] = []

    def add(line: int, dotted: str, names: list[str]) -> None:
        parts = dotted.split(".")
        if parts[0] != "ittrna":
            return
        if len(parts) > 1:
            found.append((line, parts[1]))
        elif not names:  # import ittrna: the package root (which re-exports the chip)
            found.append((line, "__init__"))
        else:  # from ittrna import x: a submodule, or a name re-exported by the package root
            found.extend((line, n if n in SUBMODULES else "__init__") for n in names)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package[: len(package) - node.level + 1]
                dotted = ".".join(base + ([node.module] if node.module else []))
            else:
                dotted = node.module or ""
            add(node.lineno, dotted, [a.name for a in node.names])
    return found


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    me = _layer(path)
    for line, target in imported_layers(path):
        if target == me:
            continue
        assert target in RANK, f"{path.name}:{line}: unknown layer {target!r}; add it to RANK"
        assert RANK[target] <= RANK[me], f"{me} imports {target} (line {line})"
        assert target not in FORBIDDEN.get(me, set()), f"{me} must not import {target} (line {line})"


def test_rule_sees_every_import_form(tmp_path, monkeypatch):
    """The checker itself catches root, relative and plain imports (a rule that sees nothing passes all)."""
    fake = SRC / "methods" / "_probe_for_test.py"
    code = ("from ittrna import Chip\nfrom .. import chip\nfrom ..nn import deploy\nimport ittrna.chip\n"
            "from ittrna import training\nimport ittrna\nimport ittrna.nn as n\n")
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: code if self == fake else "")
    layers = [t for _, t in imported_layers(fake)]
    assert layers == ["__init__", "chip", "nn", "chip", "training", "__init__", "nn"]


def _layer_graph() -> dict[str, set[str]]:
    """Top-level module -> the top-level modules it imports anywhere (function-level imports included)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        me = _layer(path)
        graph.setdefault(me, set()).update(t for _, t in imported_layers(path) if t != me)
    return graph


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def test_the_boundary_holds_transitively():
    """A forbidden module is not reachable through any chain either (methods -> training -> chip would pass a
    direct-imports rule)."""
    graph = _layer_graph()
    for me, forbidden in FORBIDDEN.items():
        seen = _reach(graph, me)
        assert not seen & forbidden, f"{me} reaches {sorted(seen & forbidden)} through its imports"


def test_the_transitive_rule_sees_a_chain():
    """The control: a chain methods -> training -> chip is found."""
    graph = _layer_graph()
    assert "chip" not in _reach(graph, "methods")
    graph["training"] = {*graph.get("training", set()), "chip"}
    assert "chip" in _reach(graph, "methods")
