"""Lower layers never import higher ones (config -> device -> mapping -> chip -> nn -> experiments -> cli)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ittrna"
# errors and _validate sit at the bottom with config and _io: rank 0 modules import only each other
RANK = {"errors": 0, "_validate": 0, "_io": 0, "config": 0, "device": 1, "mapping": 2, "chip": 3, "data": 3,
        "models": 3, "training": 4, "nn": 5, "methods": 6, "experiments": 7, "cli": 8, "__init__": 9, "__main__": 9}


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    me = _layer(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ittrna."):
            target = node.module.split(".")[1]
            assert RANK[target] <= RANK[me], f"{me} imports {node.module}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert not alias.name.startswith("ittrna.") or RANK[alias.name.split(".")[1]] <= RANK[me]
