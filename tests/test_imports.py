"""The import graph of the minivgg package: no cycle among module-level imports.

The graph is read from the source (ast), not by importing: every ``import`` and
``from ... import`` of every module under minivgg/, relative imports resolved. Imports
at module level (including those under ``if``/``try`` at the top) run when the module
is imported, so a cycle among them makes the import order matter; imports inside a
function run later and are listed apart (they may close a loop without harm, but
they are shown so a reader can see where code reaches back).
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "minivgg"



def _modules():
    """{dotted name: path} of every module of the package."""
    out = {}
    base = os.path.join(ROOT, PACKAGE)
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join(rel)] = os.path.join(folder, f)
    return out


def _resolve(module, is_package, node, modules):
    """The package modules an import node names."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [_known(n, modules) for n in names if _known(n, modules)]
    if node.level:
        parts = module.split(".")
        if not is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in modules:  # `from . import x` where x is a module
            found.append(sub)
        elif _known(base, modules):
            found.append(_known(base, modules))
    return found


def _known(name, modules):
    """``name`` or its closest enclosing module, when it is one of the package's."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_module_level(node, parents):
    return not any(isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) for p in parents)


def import_graph():
    """({module: {imported}} at module level, {module: {imported}} inside functions)."""
    modules = _modules()
    top, inner = {m: set() for m in modules}, {m: set() for m in modules}

    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")

        def visit(node, parents):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph = top if _is_module_level(node, parents) else inner
                graph[module].update(t for t in _resolve(module, is_package, node, modules) if t != module)
            for child in ast.iter_child_nodes(node):
                visit(child, parents + [node])

        visit(tree, [])
    return top, inner


def cycles(graph):
    """Every elementary cycle's set of modules, found as the strongly connected
    components with more than one module (Tarjan), each with one path through it."""
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return comps


def _path(graph, comp):
    """One cycle through the component, as a -> b -> ... -> a."""
    start, members = comp[0], set(comp)
    seen, path = {start}, [start]
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in members)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return " -> ".join(path + [start])
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            return " -> ".join(path + [nxt[0]]) if nxt else " -> ".join(path)
        path.append(fresh[0])
        seen.add(fresh[0])


def test_the_graph_sees_the_package():
    top, inner = import_graph()
    assert "minivgg.cli" in top and "minivgg.experiments.sweep" in top
    assert "minivgg.experiments.params" in top["minivgg.experiments.sweep"]
    assert "minivgg.cli.common" in top["minivgg.cli.style"]  # `from . import common`
    assert "minivgg.methods" in inner["minivgg.cli.style"]  # imported inside run()


def test_no_cycles_among_module_level_imports():
    top, inner = import_graph()
    found = cycles(top)
    report = "\n".join(f"  {_path(top, c)}" for c in found)
    assert not found, f"import cycles among module-level imports:\n{report}"


def test_function_level_cycles_are_listed(capsys):
    """Not a failure: loops closed by imports inside functions, printed for the reader."""
    top, inner = import_graph()
    both = {m: top[m] | inner[m] for m in top}
    with capsys.disabled():
        for c in cycles(both):
            if c not in cycles(top):
                print(f"\nnote: a loop through function-level imports: {_path(both, c)}")
