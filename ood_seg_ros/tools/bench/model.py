"""
Network timing: plain vs OoD outputs in PyTorch and ONNX Runtime, and a peer network.

Every figure is a median over timed runs of contenders *interleaved* in one process on
the same input (the order rotates every run), so load from other processes hits all of
them alike and the ratios hold on a shared CPU where absolute times do not. Ratios are
medians of the per-round ratios (:func:`round_ratio`: both contenders of a ratio ran in
the same round), not ratios of medians.

The torch model is the one the node's torch backend runs: BatchNorms folded into the
convolutions (:func:`ood_seg_ros.model.fold.fold_batch_norms`). ONNX Runtime runs the
graph of the chosen precision (fp32, or the int8 QDQ graph of :mod:`ood_seg_ros.tools.quantize`).

- ``plain``: ``semantic`` only (what a segmentation-only network computes);
- ``node``: the outputs the node requests (:func:`node_outputs`: heatmap score, the
  segment feature maps, ``probs``); ``overhead_<backend>`` = node / plain;
- ``full`` (torch): every score the bundle can compute; ``overhead`` = full / plain.
"""

import os
import statistics
import time
from typing import Callable, Dict

PLAIN_OUTPUTS = ('semantic',)   # a segmentation-only network


def median_ms(samples) -> float:
    """Median of seconds, in milliseconds (3 decimals)."""
    return round(statistics.median(samples) * 1e3, 3)


def interleaved(fns: Dict[str, Callable[[], object]], runs: int, warmup: int,
                sync: Callable[[], None] = None) -> Dict[str, float]:
    """
    Return the median ms of each no-argument callable; runs alternate, order rotating.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before and after every run.
    """
    return {n: median_ms(v) for n, v in interleaved_samples(fns, runs, warmup, sync).items()}


def round_ratio(samples: Dict[str, list], num: str, den: str) -> float:
    """Median over rounds of ``num`` / ``den`` time (both ran in the same round)."""
    return round(statistics.median(a / b for a, b in zip(samples[num], samples[den])), 4)


def interleaved_samples(fns: Dict[str, Callable[[], object]], runs: int, warmup: int,
                        sync: Callable[[], None] = None) -> Dict[str, list]:
    """Seconds of every timed run of each callable, per round (see :func:`interleaved`)."""
    names = list(fns)
    times = {n: [] for n in names}
    for i in range(warmup + runs):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            if sync:
                sync()
            t = time.perf_counter()
            fns[name]()
            if sync:
                sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def node_outputs(bundle_path, input_size) -> list:
    """Network outputs the node requests for this bundle at ``input_size`` (H, W)."""
    from ...model.bundle import read_bundle_json
    from ...pipeline import Pipeline, runtime_for_size, usable_score
    rt = runtime_for_size(read_bundle_json(bundle_path).get('runtime', {}), input_size)[0]
    return Pipeline.required_outputs(rt, usable_score(rt))


def bench_torch(bundle_path, device, height, width, fp16, runs, warmup,
                cuda_graphs=False, compile_scores=False, compile_model=False) -> dict:
    """
    Interleaved plain / node / full network timing with PyTorch; returns a dict.

    With ``cuda_graphs`` each variant is captured once as a CUDA graph and replayed,
    which removes the per-kernel launch cost of small-kernel networks in eager mode.
    """
    import torch
    from ...model import load_bundle, ModelConfig, OodSegNet
    from ...model.fold import fold_batch_norms
    if bundle_path:
        model = load_bundle(bundle_path).model
        node = node_outputs(bundle_path, (height, width))
    else:
        model = OodSegNet(ModelConfig())
        node = ['probs']
    dtype = torch.float16 if fp16 else torch.float32
    model.to(device=device, dtype=dtype).eval()
    folded = fold_batch_norms(model)        # as the node's torch backend runs it
    if compile_scores:
        model.compile_scores()
    x = torch.rand(1, 3, height, width, device=device, dtype=dtype)
    variants = {'plain': list(PLAIN_OUTPUTS), 'node': node,
                'full': ['probs'] + list(model.config.available_scores())}
    fn = torch.compile(model) if compile_model else model
    graphs = cuda_graphs and device == 'cuda'
    with torch.inference_mode():
        runners = {k: _runner(model, fn, v, x, graphs) for k, v in variants.items()}
        if device == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        samples = interleaved_samples(runners, runs, warmup,
                                      torch.cuda.synchronize if device == 'cuda' else None)
    ms = {k: median_ms(v) for k, v in samples.items()}
    res = {'plain_ms': ms['plain'], 'node_ms': ms['node'], 'full_ms': ms['full'],
           'overhead': round_ratio(samples, 'full', 'plain'),
           'overhead_torch': round_ratio(samples, 'node', 'plain'),
           'torch_batchnorms_folded': folded,
           'node_outputs': node, 'torch_threads': torch.get_num_threads(),
           'model_cuda_graphs': bool(graphs), 'model_compile_scores': bool(compile_scores),
           'model_compiled': bool(compile_model),
           'params': sum(p.numel() for p in model.parameters()),
           'params_base': sum(p.numel() for p in model.base_parameters())}
    if device == 'cuda':
        res['peak_gpu_mem_mb'] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return res


def _runner(model, fn, outputs, x, cuda_graphs):
    """Return a no-argument callable running ``fn`` (``model`` or its compiled form)."""
    import torch

    def eager():
        model.set_outputs(outputs)
        return fn(x)

    if not cuda_graphs:
        return eager
    model.set_outputs(outputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(x)

    def replay():
        graph.replay()
        return static_out  # the graph's output buffers, kept alive by this closure

    return replay


def ort_runner(backend, x) -> Callable[[], object]:
    """No-argument callable: one ONNX Runtime session run of ``backend`` on ``x``."""
    feed = {backend.input_name: x}
    names = backend.output_names
    return lambda: backend.session.run(names, feed)


def ort_backends(bundle_path, height, width, threads=0, **precision):
    """
    ONNX Runtime backends (CPU) of the plain and the node graph at (height, width).

    ``precision``: OnnxRuntimeBackend keywords (``int8``, ``make_int8``).
    """
    from ...runtime.onnxruntime_backend import OnnxRuntimeBackend
    size = (height, width)
    return {name: OnnxRuntimeBackend(bundle_path, outs, device='cpu', input_size=size,
                                     threads=threads, **precision)
            for name, outs in (('plain', []), ('node', node_outputs(bundle_path, size)))}


def bench_ort(bundle_path, height, width, runs, warmup, threads=0, **precision) -> dict:
    """
    Interleaved plain / node network timing in ONNX Runtime (CPU, backend settings).

    With ``int8`` the fp32 node graph joins the rotation: ``ort_int8_vs_fp32`` is the
    int8 node graph's time over the fp32 one's.
    """
    import numpy as np
    be = ort_backends(bundle_path, height, width, threads, **precision)
    if precision.get('int8'):
        be['node_fp32'] = ort_backends(bundle_path, height, width, threads)['node']
    x = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    samples = interleaved_samples({k: ort_runner(b, x) for k, b in be.items()}, runs, warmup)
    res = {'ort_plain_ms': median_ms(samples['plain']),
           'ort_node_ms': median_ms(samples['node']),
           'overhead_ort': round_ratio(samples, 'node', 'plain'),
           'ort_precision': be['node'].precision,
           'ort_threads': be['node'].threads, 'ort_spinning': be['node'].spinning}
    if 'node_fp32' in samples:
        res['ort_node_fp32_ms'] = median_ms(samples['node_fp32'])
        res['ort_int8_vs_fp32'] = round_ratio(samples, 'node', 'node_fp32')
    return res


def peer_session(path, threads=0):
    """
    ONNX Runtime CPU session of another network, with the settings of our backend.

    The peer must take one float32 (1, 3, H, W) input; the session options are those of
    :class:`~ood_seg_ros.runtime.onnxruntime_backend.OnnxRuntimeBackend`, so the two
    run under the same threads, spinning and graph optimisation.
    """
    import onnxruntime as ort
    from ...errors import OodSegError
    from ...runtime.onnxruntime_backend import session_options
    try:
        sess = ort.InferenceSession(str(path), session_options(ort, threads),
                                    providers=['CPUExecutionProvider'])
    except Exception as exc:  # noqa: B902 - ORT raises its own pybind11 types
        raise OodSegError(f'--compare-onnx: ONNX Runtime cannot load {path}: '
                          f'{str(exc).strip()[:300]}') from exc
    inputs = sess.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != 'tensor(float)':
        raise OodSegError(f'--compare-onnx: {path} must take one float32 (1, 3, H, W) input, '
                          f'got {[(i.name, i.type, i.shape) for i in inputs]}')
    return sess


def compare_onnx(path, ours: Dict[str, Callable[[], object]], height, width, runs,
                 warmup, threads=0, pairs=()) -> dict:
    """
    Time another ONNX network interleaved with ours; ratios ours / peer.

    ``pairs``: (a, b) names of ours whose per-round ratio is reported too.

    ``ours``: named no-argument callables (e.g. our network with the node's outputs, our
    whole frame). The peer runs at its fixed input size, else at (height, width), on
    random input (timing does not depend on values).
    """
    import numpy as np
    sess = peer_session(path, threads)
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else s for d, s in zip(inp.shape, (1, 3, height, width))]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    load = list(os.getloadavg())
    samples = interleaved_samples({'peer': lambda: sess.run(None, {inp.name: x}), **ours},
                                  runs, warmup)
    res = {'peer_onnx': str(getattr(path, 'name', path)).rsplit('/', 1)[-1],
           'peer_input': shape[2:], 'peer_ms': median_ms(samples['peer']),
           'compare_load_average': [load, list(os.getloadavg())]}
    for k in ours:
        res[f'ours_{k}_ms'] = median_ms(samples[k])
        res[f'ratio_{k}_vs_peer'] = round_ratio(samples, k, 'peer')
    for a, b in pairs:
        res[f'ratio_{a}_vs_{b}'] = round_ratio(samples, a, b)
    return res
