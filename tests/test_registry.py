"""The light registries: names known without importing torch, each built-in registered by its declared module."""

import importlib

import pytest

from ittrna.registry import DATASETS, METHODS, MODELS, Registry


@pytest.mark.parametrize("reg", [DATASETS, MODELS, METHODS], ids=lambda r: r.kind)
def test_declared_names_are_exactly_the_registered_ones(reg):
    """Importing every declared module registers each declared name and no undeclared built-in."""
    declared = reg.builtin_modules()
    for module in set(declared.values()):
        importlib.import_module(module)
    builtins = [n for n in reg.names() if n in declared]
    assert builtins == list(declared)
    for name in declared:
        assert reg[name] is not None


def test_registry_lookup_and_run_time_names():
    reg: Registry = Registry("thing", {"a": "ittrna.errors"})
    with pytest.raises(RuntimeError, match="did not register thing 'a'"):
        reg["a"]
    with pytest.raises(KeyError):
        reg["b"]
    reg.register("b", 2)
    assert reg["b"] == 2 and reg.names() == ["a", "b"] and "b" in reg
    with pytest.raises(RuntimeError, match="registered twice"):
        reg.register("b", 3)
    with pytest.raises(RuntimeError, match="does not declare"):
        reg.register("c", 4, home="ittrna.models")
    reg.unregister("b")
    assert "b" not in reg
    with pytest.raises(RuntimeError, match="built in"):
        reg.unregister("a")


def test_method_registry_is_the_one_the_methods_use():
    from ittrna import methods

    assert methods.METHODS is METHODS and list(METHODS)[:3] == ["none", "noise", "program"]
