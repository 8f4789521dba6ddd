"""The framework's module layering: no import circle, a light ``import conch``, every Op in its home."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"conch": ROOT / "framework", "conch.kernels": ROOT / "kernels"}


def _modules():
    """module name -> path, for every .py file under framework/ (conch.*) and kernels/ (conch.kernels.*)."""
    mods = {}
    for pkg, base in PACKAGES.items():
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if pkg == "conch" and parts[:1] == ["kernels"]:
                continue
            mods[name] = path
    return mods


def _module_level_imports(name, path, mods):
    """The conch modules ``name`` imports at module level. Importing ``a.b.c`` also runs ``a.b``'s __init__, so
    parent packages count, except the root ``conch``: its __init__ gathers the public API from every layer and
    runs first anyway. A module's own ancestor packages do not count either (a package gathering its
    submodules is not a circle)."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    out = set()

    def add(target):
        while target and target != "conch":
            if target in mods and target != name and not name.startswith(target + "."):  # not its own package
                out.add(target)
            target = target.rpartition(".")[0]

    for node in tree.body:  # module level only: function bodies run later, after every module has loaded
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                for a in sub.names:
                    add(a.name)
            elif isinstance(sub, ast.ImportFrom):
                if sub.level:
                    base = name if is_pkg else name.rpartition(".")[0]
                    for _ in range(sub.level - 1):
                        base = base.rpartition(".")[0]
                    mod = f"{base}.{sub.module}" if sub.module else base
                else:
                    mod = sub.module
                add(mod)
                for a in sub.names:  # ``from pkg import submodule``
                    add(f"{mod}.{a.name}")
    return out


def _graph():
    mods = _modules()
    return {m: _module_level_imports(m, p, mods) for m, p in mods.items()}


def _cycle(graph):
    """A cycle as a list of module names, or None (iterative DFS with colours)."""
    colour, parent = {}, {}
    for start in graph:
        if start in colour:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        colour[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                continue
            if colour.get(nxt) == 1:
                cyc, cur = [nxt], node
                while cur != nxt:
                    cyc.append(cur)
                    cur = parent[cur]
                return [nxt] + cyc[1:][::-1] + [nxt]
            if nxt not in colour:
                colour[nxt], parent[nxt] = 1, node
                stack.append((nxt, iter(sorted(graph[nxt]))))
    return None


def test_framework_modules_import_without_a_circle():
    graph = _graph()
    assert "conch.tensor" in graph and "conch.ops.elementwise" in graph
    cyc = _cycle({m: {d for d in deps if not d.startswith("conch.kernels")} for m, deps in graph.items()})
    assert cyc is None, "import circle: " + " -> ".join(cyc)


def test_kernels_never_import_the_framework():
    for m, deps in _graph().items():
        if m.startswith("conch.kernels"):
            assert all(d.startswith("conch.kernels") for d in deps), (m, deps)


def test_core_layers_import_only_downwards():
    """Tensor imports ops, autograd and the backend modules; ops import autograd; autograd imports neither."""
    graph = _graph()

    def closure(m):
        seen, todo = set(), [m]
        while todo:
            for d in graph[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    upper = {"conch.creation", "conch.tensor_api", "conch.nn", "conch.optim", "conch.checkpoint"}
    assert not closure("conch.tensor") & (upper | {"conch.fused"})
    assert "conch.tensor" not in closure("conch.ops") and "conch.tensor" not in closure("conch.autograd")
    assert not {m for m in closure("conch.autograd") if m.startswith("conch.ops")}


def test_every_op_class_lives_in_ops_or_fused():
    """Op subclasses (a Function is the user's extension point, not a built-in op) are defined only in conch.ops
    and conch.fused."""
    homes = {}
    for m, path in _modules().items():
        if m.startswith("conch.kernels"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).split(".")[-1] == "Op" for b in node.bases):
                homes[node.name] = m
    assert len(homes) > 60
    stray = {c: m for c, m in homes.items() if not m.startswith(("conch.ops", "conch.fused", "conch.autograd"))}
    assert not stray, stray


def test_no_module_assigns_attributes_on_tensor():
    """No module patches Tensor at import time (``Tensor.x = ...``): attach() in tensor_api is the one place."""
    for m, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    assert not (isinstance(t, ast.Attribute) and ast.unparse(t.value) == "Tensor"), (m, ast.unparse(t))


@pytest.mark.parametrize(
    "mod", ["conch", "conch.ops", "conch.fused", "conch.nn", "conch.optim", "conch.distributed", "conch.nn.parallel"]
)
def test_import_conch_loads_neither_cupy_nor_triton(mod):
    """Nor mpi4py (MPI starts in init_process_group, so a plain ``import conch`` never initialises MPI), nor
    Numba (~0.3 s to import: kernels/_numba loads at the first compiled CPU kernel)."""
    code = (
        f"import sys, {mod}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'triton', 'mpi4py', 'numba', 'llvmlite')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env_py = [sys.executable, "-c", code]
    r = subprocess.run(env_py, capture_output=True, text=True, cwd=ROOT / "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_package_is_listed_in_pyproject():
    # a package missing from pyproject's list imports in an editable install but not from a wheel
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("framework", "conch"), ("kernels", "conch.kernels")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert listed - found == set(), f"pyproject.toml lists packages that do not exist: {sorted(listed - found)}"
