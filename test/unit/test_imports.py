"""
The package's import graph: no cycle, and the node's world imports no tool.

Lazy imports (inside functions) count too: the graph is read from the source.
"""

import ast
import shutil

from repo_paths import ROOT

PACKAGE = ROOT / 'ood_seg_ros'
TOOLS = 'ood_seg_ros.tools'
# the ``ood-seg`` entry point (``python -m ood_seg_ros.cli``) is the tools' own
TOOL_ENTRY_POINTS = {'ood_seg_ros.cli'}


def _modules(root=ROOT):
    """Map dotted module name -> (path, is package __init__)."""
    out = {}
    for path in (root / 'ood_seg_ros').rglob('*.py'):
        parts = path.relative_to(root).with_suffix('').parts
        is_init = parts[-1] == '__init__'
        out['.'.join(parts[:-1] if is_init else parts)] = (path, is_init)
    return out


def import_graph(root=ROOT):
    """Return module -> set of package modules it imports anywhere in its code."""
    modules = _modules(root)
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


def is_tool(module: str) -> bool:
    """Tell whether a module is on the tools' side (``ood_seg_ros.tools.*``, the CLI)."""
    return module == TOOLS or module.startswith(TOOLS + '.') or module in TOOL_ENTRY_POINTS


def line_crossings(graph):
    """Sorted (node's-world module, tool module) pairs: imports across the line."""
    return sorted((m, d) for m, deps in graph.items() if not is_tool(m)
                  for d in deps if is_tool(d))


def test_the_line_finder_finds_an_import_across_the_line():
    graph = {'ood_seg_ros.pipeline': {'ood_seg_ros.scores'},
             'ood_seg_ros.scores': {'ood_seg_ros.tools.metrics'},
             'ood_seg_ros.tools.evaluate': {'ood_seg_ros.pipeline'},
             'ood_seg_ros.cli': {'ood_seg_ros.tools.commands'},
             'ood_seg_ros.tools.metrics': set(), 'ood_seg_ros.tools.commands': set()}
    assert line_crossings(graph) == [('ood_seg_ros.scores', 'ood_seg_ros.tools.metrics')]


def test_a_planted_lazy_import_into_a_tool_is_found(tmp_path):
    """A copy of the package with one lazy tool import planted in ``pipeline.py``."""
    shutil.copytree(PACKAGE, tmp_path / 'ood_seg_ros',
                    ignore=shutil.ignore_patterns('__pycache__'))
    assert line_crossings(import_graph(tmp_path)) == []
    with open(tmp_path / 'ood_seg_ros' / 'pipeline.py', 'a') as f:
        f.write('\n\ndef planted():\n    from .tools import evaluate\n    return evaluate\n')
    assert line_crossings(import_graph(tmp_path)) == [
        ('ood_seg_ros.pipeline', 'ood_seg_ros.tools.evaluate')]


def test_the_nodes_world_imports_no_tool():
    graph = import_graph()
    assert 'ood_seg_ros.tools.evaluate' in graph and 'ood_seg_ros.runtime.onnx_cache' in graph
    assert line_crossings(graph) == []
