"""The module map holds: building blocks never import the Config, and no two
dqnx modules import each other in a loop (imports read with ``ast``)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dqnx"

# Modules that take plain arguments only; ``builder`` turns a Config into them.
BLOCKS = (
    "actor",
    "envs",
    "exploration",
    "learner",
    "losses",
    "networks",
    "nstep",
    "objectives",
    "prioritized",
    "replay",
    "types",
    "errors",
    "defaults",
    "heads",
    "distributional",
    "munchausen",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def dqnx_imports(path: Path) -> set[str]:
    """The dqnx modules ``path`` imports (anywhere in the file, lazily or not)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dqnx")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if not base.startswith("dqnx"):
                continue
            for alias in node.names:  # `from dqnx import envs` imports the module dqnx.envs
                candidate = f"{base}.{alias.name}"
                found.add(candidate if (modules().get(candidate)) else base)
    return found


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {}
    for name, path in mods.items():
        targets = set()
        for imported in dqnx_imports(path):
            # `import dqnx.a.b` also runs dqnx/__init__ and dqnx/a/__init__, but those
            # are package imports, not this module's dependency on its parents.
            if imported in mods and imported != name:
                targets.add(imported)
        edges[name] = targets
    return edges


def test_blocks_never_import_the_config():
    edges = graph()
    for block in BLOCKS:
        name = f"dqnx.{block}"
        assert name in edges, f"{name} is missing"
        assert "dqnx.config" not in edges[name], f"{name} imports dqnx.config"
        # nor through another module
        seen, todo = set(), [name]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        assert "dqnx.config" not in seen, f"{name} reaches dqnx.config through {sorted(seen)}"


def test_no_import_cycles():
    edges = graph()
    # The package __init__ files re-export their modules; a module importing a
    # sibling through its package is not a cycle of modules.
    edges = {k: {t for t in v if modules()[t].name != "__init__.py"} for k, v in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def reached(name: str) -> set[str]:
    """Every dqnx module ``name`` imports, directly or through others."""
    edges = graph()
    seen, todo = set(), [name]
    while todo:
        for nxt in edges[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_shell_knows_no_execution_mode():
    """The host loop drives any ``Program``: no module of ``dqnx.shell`` reaches
    the compiled or the host-actor mode, even lazily; ``dqnx.train`` picks one."""
    for name in modules():
        if name.startswith("dqnx.shell"):
            modes = {
                m for m in reached(name) if m.startswith(("dqnx.compiled", "dqnx.host_actors"))
            }
            assert not modes, f"{name} reaches {sorted(modes)}"
    assert {"dqnx.compiled", "dqnx.host_actors"} <= reached("dqnx.train")


def test_the_graph_reader_sees_lazy_imports():
    """The checks above read imports inside functions too (a lazy import is still a
    dependency): checks' lazy import of sweep is an edge."""
    assert "dqnx.sweep" in graph()["dqnx.checks"]
    assert "dqnx.errors" in graph()["dqnx.envs"]


def test_every_public_block_is_an_attribute_of_the_package():
    """``import dqnx; dqnx.NAME`` works for every name in ``__all__`` (the lazy
    loader knows each), and each listed module exists."""
    import importlib

    import dqnx

    for name in dqnx.__all__:
        assert getattr(dqnx, name) is not None, name
    for name in ("prioritized", "nstep", "objectives", "host_actors", "frame_replay"):
        assert getattr(dqnx, name) is importlib.import_module(f"dqnx.{name}")
