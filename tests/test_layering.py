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


# --- inside the chip package ------------------------------------------------------------------------------
CHIP = SRC / "chip"
CHIP_RANK = {"state": 0, "readout": 1, "test": 1, "stats": 1, "program": 2, "archive": 2, "core": 3, "__init__": 4}
"""The chip package's modules (all in the ``chip`` layer above), in the order they may import each other:
the state, then what reads or writes it, then the façade, then the package. A module imports only modules of
a strictly lower rank, so no import cycle among them can pass."""


def chip_imports(path: Path) -> list[tuple[int, str]]:
    """(line, chip submodule) for every import of a module of ``ittrna.chip`` in ``path`` (the package
    itself, or a name it re-exports, as ``__init__``)."""
    package = ["ittrna", *path.relative_to(SRC).parts[:-1]]
    submodules = {p.stem for p in CHIP.glob("*.py")}
    found: list[tuple[int, str]] = []

    def add(line: int, dotted: str) -> None:
        parts = dotted.split(".")
        if parts[:2] == ["ittrna", "chip"]:
            found.append((line, parts[2] if len(parts) > 2 else "__init__"))

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                            ) if node.level else (node.module or "")
            for alias in node.names:
                sub = base == "ittrna.chip" and alias.name in submodules
                add(node.lineno, f"{base}.{alias.name}" if sub else base)
    return found


def chip_violations(path: Path) -> list[str]:
    me = path.stem
    out = []
    for line, target in chip_imports(path):
        if target == me:
            continue
        if target not in CHIP_RANK:
            out.append(f"chip/{path.name}:{line}: unknown chip module {target!r}; add it to CHIP_RANK")
        elif CHIP_RANK[target] >= CHIP_RANK[me]:
            out.append(f"chip.{me} imports chip.{target} (line {line}): ranks {CHIP_RANK[me]} -> {CHIP_RANK[target]}")
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (as a path that ends where it starts), or [] when there is none."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return []


def _chip_graph() -> dict[str, set[str]]:
    return {p.stem: {t for _, t in chip_imports(p) if t != p.stem} for p in CHIP.glob("*.py")}


@pytest.mark.parametrize("path", sorted(CHIP.glob("*.py")), ids=lambda p: p.name)
def test_chip_modules_import_down(path):
    assert path.stem in CHIP_RANK, f"chip/{path.name} has no rank; add it to CHIP_RANK"
    assert _layer(path) == "chip"  # and the package as a whole is the chip layer of RANK
    assert not chip_violations(path)


def test_chip_rule_sees_every_import_form_and_a_cycle(monkeypatch):
    """The control: state importing the façade (every form) is refused, and such an edge makes a cycle."""
    fake = CHIP / "state.py"
    code = ("from ittrna.chip.core import Chip\nfrom . import program\nfrom .readout import set_layout\n"
            "import ittrna.chip.archive\nfrom ittrna.chip import LayerTiles\nfrom ittrna.chip import test as t\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: code if self == fake else real(self, *a, **k))
    assert [t for _, t in chip_imports(fake)] == ["core", "program", "readout", "archive", "__init__", "test"]
    assert len(chip_violations(fake)) == 6
    graph = _chip_graph()
    cycle = _cycle(graph)
    assert cycle and cycle[0] == cycle[-1] and "state" in cycle


def test_chip_package_has_no_import_cycle():
    graph = _chip_graph()
    assert set(graph) == set(CHIP_RANK)
    assert _cycle(graph) == []
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the finder finds one


# --- who writes a chip's state ----------------------------------------------------------------------------
WRITERS = {
    # cell state: programming is its only writer (theta is fixed at fabrication)
    "g": {"program"}, "eps": {"program"}, "writes": {"program"}, "fault": {"program"}, "theta": set(),
    "scale": {"program"}, "write_epoch": {"program"}, "writes_issued": {"program"},
    "writes_performed": {"program"},
    "version": {"program", "readout"},  # advanced by programming and by a layout change
    "arrays": {"state"},  # moved to a device
    # the periphery and the reads: the readout only
    "layout": {"readout"}, "adc_fs": {"readout"}, "adc_version": {"readout"}, "gain": {"readout"},
    "offset": {"readout"}, "_read_gen": {"readout"}, "_reads": {"readout"},
}
"""Field of a chip, chip layer or cell array -> the ``ittrna.chip`` modules that may change it. No module
outside the package may (an object's own ``self.<field>``, e.g. a host model's ``self.offset``, is not a
chip's)."""


def _field_of(node: ast.expr) -> str | None:
    """The chip field ``node`` writes into: ``x.field`` or ``x.field[...]`` with ``x`` not ``self``."""
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute) and node.attr in WRITERS:
        if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
            return node.attr
    return None


def field_writes(source: str) -> list[tuple[int, str]]:
    """(line, field) of every write of a chip field in ``source``: assignment (plain, augmented, annotated,
    unpacked, into a subscript), deletion, an in-place tensor method (``x.gain.mul_(2)``) or ``setattr``."""
    found: list[tuple[int, str]] = []

    def targets(t: ast.expr) -> list[ast.expr]:
        if isinstance(t, (ast.Tuple, ast.List)):
            return [e for x in t.elts for e in targets(x)]
        return targets(t.value) if isinstance(t, ast.Starred) else [t]

    for node in ast.walk(ast.parse(source)):
        written: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            written = [e for t in node.targets for e in targets(t)]
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            written = targets(node.target)
        elif isinstance(node, ast.Delete):
            written = [e for t in node.targets for e in targets(t)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name.endswith("_") and not name.startswith("__"):  # in-place: x.field.copy_(...)
                written = [node.func.value]
            elif name == "__setattr__" and len(node.args) >= 2:  # object.__setattr__(x, "field", v)
                written = [ast.Attribute(node.args[0], node.args[1].value, ast.Store())] if (
                    isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)) else []
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str)):
            written = [ast.Attribute(node.args[0], node.args[1].value, ast.Store())]
        for t in written:
            field = _field_of(t)
            if field is not None:
                found.append((node.lineno, field))
    return sorted(found)


ROOT = SRC.parents[1]
_SCANNED = sorted([*SRC.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "tools").rglob("*.py")])


@pytest.mark.parametrize("path", _SCANNED, ids=lambda p: str(p.relative_to(ROOT)))
def test_chip_state_is_written_only_by_its_owner(path):
    """Outside ``ittrna.chip`` nothing writes a chip's cells, counters or periphery (nn, session and the
    evaluator go through the chip's methods); inside it each field has its owner (:data:`WRITERS`)."""
    me = path.stem if path.parent == CHIP else None
    bad = [(line, f) for line, f in field_writes(path.read_text()) if me not in WRITERS[f]]
    assert not bad, f"{path.relative_to(ROOT)} writes chip fields {bad}; use the owner's Chip methods"


def test_the_writers_rule_sees_every_write_form():
    """The control: a deliberately bad snippet (what nn and session did before the chip owned its
    periphery, and other forms) is caught line by line; unrelated attributes are not."""
    snippet = (
        "layer.adc_fs = None\n"                                  # 1  nn.deploy / session._recalibrate
        "chip.layer(name).version += 1\n"                        # 2  session.set_layout
        "layer.gain, layer.offset = g, o\n"                      # 3
        "chip.layers['a'].arrays['pos'].g[0, 0] = 1.0\n"         # 4  into a subscript
        "layer.adc_fs.mul_(2)\n"                                 # 5  in place
        "setattr(layer, 'layout', lay)\n"                        # 6
        "object.__setattr__(layer, 'adc_version', 3)\n"          # 7
        "self.offset = True\n"                                   # 8  an object's own field: fine
        "layer.grid = grid\n"                                    # 9  not a chip field: fine
        "x = layer.gain\n"                                       # 10 a read: fine
        "del chip._reads\n"                                      # 11
        "layer.adc_fs: object = None\n"                          # 12 annotated
    )
    assert field_writes(snippet) == [(1, "adc_fs"), (2, "version"), (3, "gain"), (3, "offset"), (4, "g"),
                                     (5, "adc_fs"), (6, "layout"), (7, "adc_version"), (11, "_reads"),
                                     (12, "adc_fs")]
    scanned = {p.relative_to(SRC).as_posix() for p in _SCANNED if SRC in p.parents}
    assert {"nn.py", "session.py", "experiments/tolerate.py"} <= scanned
