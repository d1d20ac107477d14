"""The package's modules import each other without a cycle (lazy imports included)."""

import ast

from repo_paths import ROOT

PACKAGE = ROOT / 'ood_seg_ros'


def _modules():
    """Map dotted module name -> (path, is package __init__)."""
    out = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(ROOT).with_suffix('').parts
        is_init = parts[-1] == '__init__'
        out['.'.join(parts[:-1] if is_init else parts)] = (path, is_init)
    return out


def import_graph():
    """Return module -> set of package modules it imports anywhere in its code."""
    modules = _modules()
    graph = {}
    for name, (path, is_init) in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    package = name.split('.') if is_init else name.split('.')[:-1]
                    package = package[:len(package) - node.level + 1]
                    base = '.'.join(package + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f'{base}.{alias.name}'
                    deps.add(target if target in modules else base)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_no_import_cycle_between_package_modules():
    graph = import_graph()
    assert 'ood_seg_ros.ros.node' in graph and graph['ood_seg_ros.ros.node']
    assert cycles(graph) == []
