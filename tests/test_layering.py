"""classp_hf's imports: no circle (deferred imports inside functions included) and none that climbs the layers.

The layers, lowest first: the shared checker of user values (``classp_hf.validation``), the optimizer
(``classp_hf.optim``, and the package root that re-exports it), metrics and methods, the Hugging Face layer
(``trainer``, ``training_args``), ``continual``, the command line (``cli``). A module may import its own layer and the
ones below. Imports under ``if TYPE_CHECKING:`` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "classp_hf"

LAYERS = [
    ("checks", ("classp_hf.validation",)),
    ("optim", ("classp_hf", "classp_hf.optim")),
    ("metrics/methods", ("classp_hf.metrics", "classp_hf.methods")),
    ("HF layer", ("classp_hf.trainer", "classp_hf.training_args")),
    ("continual", ("classp_hf.continual",)),
    ("cli", ("classp_hf.cli",)),
]


def _modules(package: Path) -> dict[str, Path]:
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement (module level, in functions and classes), ``if TYPE_CHECKING:`` bodies aside."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children = node.orelse
        stack.extend(children)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: the classp_hf modules it imports}``; ``from pkg import name`` counts the submodule ``pkg.name``
    when there is one, else ``pkg``."""
    modules = _modules(package)

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names if alias.name.split(".")[0] == "classp_hf"}
                continue
            base = node.module or ""
            if node.level:  # relative: from . import x, from .y import z
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "classp_hf":
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in modules else owner(base))
        graph[module] = {target for target in targets if target is not None and target != module}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or `None`."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the longest prefix naming ``module`` or a package above it."""
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank is None:
        raise AssertionError(f"{module}: in no layer; add it to LAYERS in tests/test_layering.py")
    return rank


def climbing_imports(graph: dict[str, set[str]]) -> list[str]:
    """``module (layer) -> target (higher layer)`` for every import that climbs."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                found.append(f"{module} ({LAYERS[layer_of(module)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})")
    return found


def test_classp_hf_has_no_import_circle():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_no_import_climbs_the_layers():
    assert climbing_imports(import_graph()) == []


def test_the_graph_sees_deferred_relative_and_submodule_imports():
    graph = import_graph()
    assert "classp_hf.continual.launch" in graph["classp_hf.continual.config.sections"]  # module level
    assert "classp_hf.trainer" in graph["classp_hf.continual.config.sections"]  # inside a function
    assert "classp_hf.metrics.continual" in graph["classp_hf.metrics"]  # from .continual import ...
    assert "classp_hf.optim.factory" in graph["classp_hf.optim"]  # from classp_hf.optim.factory import ...
    assert "classp_hf.trainer" not in graph["classp_hf.methods.base"]  # only under TYPE_CHECKING


def test_one_checker_below_every_layer_serves_the_config_methods_and_optim_args():
    graph = import_graph()
    assert graph["classp_hf.validation"] == set()
    for user in ("classp_hf.optim.factory", "classp_hf.methods.base", "classp_hf.continual.config.validate"):
        assert "classp_hf.validation" in graph[user], user


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "classp_hf" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "classp_hf"


def test_a_circle_through_a_deferred_import_is_found(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "continual/__init__.py": "",
            "continual/a.py": "from classp_hf.continual.b import x\n",
            "continual/b.py": "def f():\n    from classp_hf.continual import a\n",
        },
    )
    a, b = "classp_hf.continual.a", "classp_hf.continual.b"
    assert find_circle(import_graph(package)) == [a, b, a]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f():\n    from classp_hf.continual.runner import x\n", ["classp_hf.optim.classp (optim) -> "]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from classp_hf.trainer import T\n", []),
        ("from ..trainer import T\n", ["classp_hf.optim.classp (optim) -> classp_hf.trainer (HF layer)"]),
    ],
)
def test_a_climbing_import_is_found(tmp_path, source, expected):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "trainer.py": "",
            "optim/__init__.py": "",
            "optim/classp.py": source,
            "continual/__init__.py": "",
            "continual/runner.py": "",
        },
    )
    found = climbing_imports(import_graph(package))
    assert len(found) == len(expected) and all(line.startswith(start) for line, start in zip(found, expected))


def test_error_classes_live_in_errors_and_keep_their_old_names():
    from classp_hf.continual import checkpoint, config, errors, io, outputs, results

    assert config.ConfigError is errors.ConfigError and checkpoint.ConfigError is errors.ConfigError
    assert outputs.OutputDirError is errors.OutputDirError and checkpoint.ResumeError is errors.ResumeError
    assert results.ResultsVersionError is errors.ResultsVersionError and io.OutputWriteError is errors.OutputWriteError
    assert import_graph()["classp_hf.continual.errors"] == set()
