"""
Where the OoD overhead goes in ONNX Runtime: a per-node profile of the node graph.

``ood-seg bench --profile-ort [DIR]`` runs the two graphs of ``overhead_ort`` (the
segmentation-only graph and the graph with the outputs the node requests, in the chosen
precision, with the backend's session options) under ONNX Runtime's profiler
(``SessionOptions.enable_profiling``), alternately, and attributes each node's kernel time
(warm-up runs left out) to

- its **op type** (as ONNX Runtime ran it, after its graph optimisations: fused Conv,
  the NCHWc ``ReorderInput`` / ``ReorderOutput``, ...);
- its **region**: ``segmentation`` (the ancestors of ``semantic`` in the optimised graph:
  what a segmentation-only network computes), ``probes`` (the MOoSe probe convolutions)
  and, for the rest (the score head), ``head:<families>``: the families of the outputs it
  feeds (``probs``, ``moose``, ``pgn``, ``fused``, ``global``, ``spatial``, ...), e.g.
  ``head:pgn`` or ``head:fused+moose``.

Written to ``DIR`` (``ort_profile.json``: every node of both graphs with its mean ms per
run, op type and region; the raw ONNX Runtime traces and the optimised graphs beside it,
the traces open in chrome://tracing); the bench JSON gets a summary (``ort_profile``):
per-run totals, the node graph by region, and the extra time of the node graph per op
type. Profiled times are larger than unprofiled ones (the profiler records every
node); the shares are what to read.
"""

from collections import defaultdict
import json
import os
from pathlib import Path
import statistics
from typing import Dict, Iterable, List, Set

DEFAULT_DIR = 'out/ort_profile'
KERNEL = '_kernel_time'
TOP_NODES = 15


def output_family(name: str) -> str:
    """Family of a graph output: a score's family (moose, pgn, ...), else its name."""
    from ...scores import SCORES
    return SCORES[name].family if name in SCORES else name


def node_regions(graph) -> Dict[str, str]:
    """
    Region of every node of an (optimised) ONNX graph (see the module docstring).

    ``graph``: an ``onnx.GraphProto``. A node is in the ``segmentation`` region when
    ``semantic`` depends on it; probe nodes are named ``.../probe_stack/...`` by the export
    (``.../probes.<i>/...`` in graphs exported before the grouped probe stack).
    """
    producer = {o: n for n in graph.node for o in n.output}
    feeds: Dict[str, Set[str]] = defaultdict(set)     # node name -> output names it feeds
    for out in graph.output:
        for name in _ancestors(out.name, producer):
            feeds[name].add(out.name)
    regions = {}
    for node in graph.node:
        outs = feeds.get(node.name, set())
        if 'semantic' in outs:
            regions[node.name] = 'segmentation'
        elif '/probes.' in node.name or '/probe_stack/' in node.name:
            regions[node.name] = 'probes'
        else:
            fams = sorted({output_family(o) for o in outs}) or ['unused']
            regions[node.name] = 'head:' + '+'.join(fams)
    return regions


def _ancestors(tensor: str, producer) -> Set[str]:
    """Names of the nodes that ``tensor`` depends on (its producer included)."""
    seen: Set[str] = set()
    stack = [tensor]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(i for i in node.input if i)
    return seen


def node_times(events: List[dict], warmup: int) -> Dict[str, object]:
    """
    Kernel time per node (µs, summed over the timed runs) from an ONNX Runtime trace.

    Runs are the ``model_run`` events; node events before the end of the first
    ``warmup`` runs are dropped. Returns {'runs': n, 'run_us': [...], 'nodes':
    {name: (op type, µs)}}.
    """
    runs = sorted((e for e in events if e.get('cat') == 'Session'
                   and e.get('name') == 'model_run'), key=lambda e: e['ts'])
    if len(runs) <= warmup:
        raise ValueError(f'the trace has {len(runs)} runs, not more than {warmup} warm-up runs')
    start = runs[warmup]['ts']
    nodes: Dict[str, list] = {}
    for e in events:
        if e.get('cat') != 'Node' or not e.get('name', '').endswith(KERNEL) \
                or e['ts'] < start:
            continue
        name = e['name'][:-len(KERNEL)]
        entry = nodes.setdefault(name, [e.get('args', {}).get('op_name', '?'), 0])
        entry[1] += e['dur']
    return {'runs': len(runs) - warmup, 'run_us': [r['dur'] for r in runs[warmup:]],
            'nodes': {k: tuple(v) for k, v in nodes.items()}}


def breakdown(times: dict, regions: Dict[str, str]) -> dict:
    """
    Per-run ms of one graph: total, per op type, per region, and per node.

    Every node's time lands in exactly one op type and one region, so both tables sum to
    ``kernel_ms`` (up to rounding). ``run_ms``: median ``model_run`` time (kernels plus
    the executor's own work).
    """
    n = times['runs']
    by_op: Dict[str, float] = defaultdict(float)
    by_region: Dict[str, float] = defaultdict(float)
    nodes = []
    for name, (op, us) in times['nodes'].items():
        ms = us / n / 1e3
        region = regions.get(name, 'unknown')
        by_op[op] += ms
        by_region[region] += ms
        nodes.append({'node': name, 'op': op, 'region': region, 'ms': round(ms, 4)})
    nodes.sort(key=lambda r: -r['ms'])
    return {'runs': n, 'run_ms': round(statistics.median(times['run_us']) / 1e3, 3),
            'kernel_ms': round(sum(by_op.values()), 4),
            'by_op': _rounded(by_op), 'by_region': _rounded(by_region), 'nodes': nodes}


def _rounded(table: Dict[str, float]) -> Dict[str, float]:
    """Largest first, ms to 4 decimals."""
    return {k: round(v, 4) for k, v in sorted(table.items(), key=lambda kv: -kv[1])}


def extra_by_op(node: dict, plain: dict) -> Dict[str, float]:
    """Per-run ms the node graph spends beyond the plain graph, per op type."""
    ops = set(node['by_op']) | set(plain['by_op'])
    return _rounded({op: node['by_op'].get(op, 0.0) - plain['by_op'].get(op, 0.0)
                     for op in ops})


def profile_graph(backend, x, warmup: int, out_dir: Path, tag: str):
    """
    Open ``backend``'s graph in an ONNX Runtime session with profiling on.

    Same session options as the backend; the optimised graph is saved as
    ``<tag>_optimised.onnx`` in ``out_dir`` (the profile's node names are its names).
    Returns (a no-argument run callable, a callable ending the profile -> breakdown).
    """
    import onnx
    ort = backend._ort
    so = backend.session_options()
    so.enable_profiling = True
    so.profile_file_prefix = str(out_dir / f'{tag}_trace')
    optimised = out_dir / f'{tag}_optimised.onnx'
    so.optimized_model_filepath = str(optimised)
    sess = ort.InferenceSession(str(backend.onnx_path), so,
                                providers=backend.session.get_providers())
    regions = node_regions(onnx.load(str(optimised), load_external_data=False).graph)
    feed = {backend.input_name: x}
    names = backend.output_names

    def finish():
        trace = Path(sess.end_profiling())
        events = json.loads(trace.read_text())
        return trace, breakdown(node_times(events, warmup), regions)

    return (lambda: sess.run(names, feed)), finish


def profile_ort(bundle_path, height: int, width: int, runs: int, warmup: int,
                threads: int = 0, out_dir=DEFAULT_DIR, **precision) -> dict:
    """
    Profile the plain and the node graph (alternating runs); write ``ort_profile.json``.

    Returns the bench JSON's ``ort_profile`` summary (see the module docstring).
    ``precision``: OnnxRuntimeBackend keywords (``int8``, ``make_int8``).
    """
    import numpy as np
    from .model import interleaved_samples, ort_backends
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backends = ort_backends(bundle_path, height, width, threads, **precision)
    x = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    load = list(os.getloadavg())
    sessions = {k: profile_graph(b, x, warmup, out, k) for k, b in backends.items()}
    interleaved_samples({k: run for k, (run, _) in sessions.items()}, runs, warmup)
    graphs, traces = {}, {}
    for k, (_, finish) in sessions.items():
        traces[k], graphs[k] = finish()
        graphs[k]['onnx'] = backends[k].onnx_path.name
        graphs[k]['trace'] = traces[k].name
    extra = extra_by_op(graphs['node'], graphs['plain'])
    doc = {'precision': backends['node'].precision, 'threads': threads,
           'input': [height, width], 'load_average': [load, list(os.getloadavg())],
           'extra_ms': round(graphs['node']['kernel_ms'] - graphs['plain']['kernel_ms'], 4),
           'extra_by_op': extra, 'graphs': graphs}
    path = out / 'ort_profile.json'
    path.write_text(json.dumps(doc, indent=1) + '\n')
    return {'ort_profile': _summary(doc, path)}


def _summary(doc: dict, path: Path) -> dict:
    """Return the bench JSON's part: totals, regions, extra per op, top OoD nodes."""
    node, plain = doc['graphs']['node'], doc['graphs']['plain']
    ood = [r for r in node['nodes'] if r['region'] != 'segmentation'][:TOP_NODES]
    return {'file': str(path), 'runs': node['runs'], 'load_average': doc['load_average'],
            'plain_kernel_ms': plain['kernel_ms'], 'node_kernel_ms': node['kernel_ms'],
            'plain_run_ms': plain['run_ms'], 'node_run_ms': node['run_ms'],
            'profiled_overhead': round(node['kernel_ms'] / plain['kernel_ms'], 4),
            'extra_ms': doc['extra_ms'], 'node_by_region': node['by_region'],
            'extra_by_op': _top(doc['extra_by_op']),
            'top_ood_nodes': [[r['node'], r['op'], r['region'], r['ms']] for r in ood]}


def _top(table: Dict[str, float], n: int = TOP_NODES) -> Dict[str, float]:
    """Keep the ``n`` largest entries by absolute value."""
    keep: Iterable[str] = sorted(table, key=lambda k: -abs(table[k]))[:n]
    return {k: table[k] for k in keep}
