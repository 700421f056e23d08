"""The package's modules import one another without a cycle, imports made
only for type checking included: each module can be read knowing only the
ones it imports."""

from __future__ import annotations

import ast
import pathlib

import txfanout

SRC = pathlib.Path(txfanout.__file__).parent


def package_imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The modules of the package that the module at ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and module:  # from .x import y
                found.add(module.split(".")[0])
            elif node.level == 1 or module == "txfanout":  # from . import x
                found.update(a.name for a in node.names)
            elif module.startswith("txfanout."):  # from txfanout.x import y
                found.add(module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("txfanout."))
    return found & modules


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (``[a, b, ..., a]``), or None when it has none."""
    state: dict[str, str] = {}  # "open" while on the path, then "done"
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state:
                found = visit(imported)
                if found:
                    return found
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_a_cycle_is_found_and_shown() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_kind_of_import_is_an_edge(tmp_path: pathlib.Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from . import a, b\nfrom .c import x\nimport txfanout.d\n"
                      "from txfanout import e\nfrom txfanout.f import y\n"
                      "if TYPE_CHECKING:\n    from .g import z\n"
                      "def later():\n    from .h import w\n")
    assert package_imports(module, set("abcdefghz")) == set("abcdefgh")


def test_the_package_has_no_import_cycle() -> None:
    modules = {p.stem for p in SRC.glob("*.py")}
    graph = {p.stem: package_imports(p, modules) for p in SRC.glob("*.py")}
    assert graph["gateway"]  # the walk does see imports
    cycle = cycle_in(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
