"""
``ood-seg bench``: speed and memory of the network, post-processing and pipeline.

Prints one JSON object (``--json``). Figures are medians over ``--runs`` timed runs
after ``--warmup`` runs, measured in one process on the same input:

- ``plain_ms``: network with segmentation output only; ``full_ms``: with every OoD
  output; ``overhead`` = full_ms / plain_ms (plain and full runs interleaved);
- ``postprocess_ms``: heatmap + segments + features + meta classifier on realistic
  synthetic network outputs with ``--segments`` blobs (``--postprocess``);
- ``end_to_end_ms`` / ``fps``: frame in -> FrameResult through a backend, with
  per-stage medians (``--backend``);
- ``node_*``: input -> output latency through a running node over real DDS (``--node``).
"""

import json
import os
import platform
import statistics
import time

HELP = 'measure network, post-processing and pipeline speed (JSON)'


def add_arguments(parser):
    """Benchmark options."""
    parser.add_argument('--bundle', default=None,
                        help='model bundle (default: the package default bundle)')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--height', type=int, default=360)
    parser.add_argument('--width', type=int, default=480)
    parser.add_argument('--fp16', action='store_true', help='half precision (CUDA)')
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: all)')
    parser.add_argument('--skip-model', action='store_true', help='skip plain/full timing')
    parser.add_argument('--postprocess', action='store_true',
                        help='time post-processing at the frame size')
    parser.add_argument('--segments', type=int, default=50,
                        help='blobs in the synthetic heatmap for --postprocess')
    parser.add_argument('--backend', default=None,
                        choices=['torch', 'onnxruntime', 'tensorrt'],
                        help='time the end-to-end pipeline with this backend')
    parser.add_argument('--model-input', default='bundle', choices=['bundle', 'frame'],
                        help='end to end: run the network at the bundle input size (frames '
                             'resized, as the node does) or at the frame size')
    parser.add_argument('--cuda-graphs', action='store_true',
                        help='on CUDA: replay captured CUDA graphs (model and torch backend)')
    parser.add_argument('--compile-scores', action='store_true',
                        help='fuse the score head with torch.compile (model and torch backend)')
    parser.add_argument('--compile-model', action='store_true',
                        help='network timing: torch.compile the whole network (both variants)')
    parser.add_argument('--node', action='store_true',
                        help='time input->output latency through the ROS 2 node')
    parser.add_argument('--soak', type=int, default=0, metavar='N',
                        help='with --node: soak N frames (bad frames mixed in); report '
                             'VmRSS/VmHWM, fds and threads every 100 frames')
    parser.add_argument('--soak-large', type=int, default=5, metavar='K',
                        help='with --soak: then K frames of 4320x7680 (8K); report VmRSS '
                             'after the first and the last (default: 5; 0: none)')
    parser.add_argument('--json', action='store_true', help='print one JSON object')


def _median_ms(samples):
    return round(statistics.median(samples) * 1e3, 3)


def bench_model(bundle_path, device, height, width, fp16, runs, warmup,
                cuda_graphs=False, compile_scores=False, compile_model=False):
    """
    Interleaved plain vs full network timing with PyTorch; returns a dict.

    With ``cuda_graphs`` each variant is captured once as a CUDA graph and replayed, which
    removes the per-kernel launch cost that dominates small-kernel networks in eager mode.
    """
    import torch
    from ..model import load_bundle, ModelConfig, OodSegNet
    from ..scores import ALL_SCORES
    if bundle_path:
        model = load_bundle(bundle_path).model
    else:
        model = OodSegNet(ModelConfig())
    dtype = torch.float16 if fp16 else torch.float32
    model.to(device=device, dtype=dtype).eval()
    if compile_scores:
        model.compile_scores()
    x = torch.rand(1, 3, height, width, device=device, dtype=dtype)
    variants = {'plain': ['semantic'], 'full': ['probs'] + list(ALL_SCORES)}
    fn = torch.compile(model) if compile_model else model
    runners = {}
    with torch.inference_mode():
        for name, outputs in variants.items():
            runners[name] = _runner(model, fn, outputs, x, cuda_graphs and device == 'cuda')

    def once(name):
        if device == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        runners[name]()
        if device == 'cuda':
            torch.cuda.synchronize()
        return time.perf_counter() - t

    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    times = {'plain': [], 'full': []}
    with torch.inference_mode():
        for _ in range(warmup):
            once('plain')
            once('full')
        for i in range(runs):
            order = ('plain', 'full') if i % 2 == 0 else ('full', 'plain')
            for name in order:
                times[name].append(once(name))
    res = {'plain_ms': _median_ms(times['plain']), 'full_ms': _median_ms(times['full'])}
    res['overhead'] = round(res['full_ms'] / res['plain_ms'], 4)
    res['model_cuda_graphs'] = bool(cuda_graphs and device == 'cuda')
    res['model_compile_scores'] = bool(compile_scores)
    res['model_compiled'] = bool(compile_model)
    res['params'] = sum(p.numel() for p in model.parameters())
    res['params_base'] = sum(p.numel() for p in model.base_parameters())
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


def synthetic_outputs(height, width, n_classes, n_blobs, seed=0):
    """Realistic-shaped network outputs at decoder resolution with ``n_blobs`` hot blobs."""
    import numpy as np
    from ..scores import ALL_SCORES
    rng = np.random.default_rng(seed)
    h, w = (height + 3) // 4, (width + 3) // 4
    logits = rng.normal(0, 1, (n_classes, h, w)).astype(np.float32)
    logits[rng.integers(n_classes, size=(h, w)), np.arange(h)[:, None],
           np.arange(w)[None]] += 4.0
    probs = np.exp(logits - logits.max(0))
    probs /= probs.sum(0)
    yy, xx = np.mgrid[0:h, 0:w]
    heat = np.zeros((h, w), np.float32)
    for _ in range(n_blobs):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(1.5, max(2.0, min(h, w) / 25))
        heat = np.maximum(heat, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    out = {'probs': probs, 'semantic': rng.integers(0, n_classes, (height, width),
                                                    dtype=np.int32)}
    for name in ALL_SCORES:
        out[name] = (heat + 0.05 * rng.random((h, w))).astype(np.float32)
    return out


def bench_postprocess(pipeline, height, width, n_blobs, runs, warmup):
    """Median post-processing time on synthetic outputs at a (height, width) frame."""
    ih, iw = pipeline.input_size
    out = synthetic_outputs(ih, iw, len(pipeline.class_names), n_blobs)
    # Outputs of a network run at the pipeline's input size, post-processed for a frame
    # of (height, width): what the node pays per frame. The blob map is put through the
    # inverse of the heatmap normalisation so its blobs cross the segment threshold.
    lo, hi = pipeline.norm
    out[pipeline.score_name] = (lo + out[pipeline.score_name] * (hi - lo)).astype('float32')
    samples, stages, n_seg = [], {}, 0
    for i in range(warmup + runs):
        t = time.perf_counter()
        res = pipeline.postprocess(out, (height, width))
        dt = time.perf_counter() - t
        if i >= warmup:
            samples.append(dt)
            for k, v in res.timings.items():
                stages.setdefault(k, []).append(v / 1e3)
            n_seg = len(res.segments)
    return {'postprocess_ms': _median_ms(samples), 'postprocess_segments': n_seg,
            'postprocess_stages_ms': {k: _median_ms(v) for k, v in stages.items()}}


def bench_end_to_end(pipeline, height, width, runs, warmup):
    """Median frame -> FrameResult time through the pipeline's backend."""
    import numpy as np
    rng = np.random.default_rng(0)
    frame = _sample_frame(height, width, rng)
    samples, stages = [], {}
    for i in range(warmup + runs):
        t = time.perf_counter()
        res = pipeline.process(frame)
        dt = time.perf_counter() - t
        if i >= warmup:
            samples.append(dt)
            for k, v in res.timings.items():
                stages.setdefault(k, []).append(v / 1e3)
    e2e = _median_ms(samples)
    return {'end_to_end_ms': e2e, 'fps': round(1000.0 / e2e, 2),
            'stages_ms': {k: _median_ms(v) for k, v in stages.items()},
            **{f'backend_{k}': v for k, v in pipeline.backend.describe().items()}}


def _sample_frame(height, width, rng):
    """Return a real CamVid frame resized to (height, width) when the data is present."""
    import cv2
    import numpy as np
    from pathlib import Path
    root = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'camvid' / 'test'
    files = sorted((root / 'images').glob('*.jpg')) if root.exists() else []
    if files:
        img = cv2.imread(str(files[0]))[:, :, ::-1]
        return np.ascontiguousarray(cv2.resize(img, (width, height)))
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def run(args) -> int:
    """Run the requested benchmarks and print the result."""
    import resource
    import torch
    from ..errors import OodSegError
    from ..model.bundle import default_bundle_path
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise OodSegError('--device cuda: no CUDA GPU available')
    if args.fp16 and args.device != 'cuda':
        raise OodSegError('--fp16 needs --device cuda')
    bundle = args.bundle or default_bundle_path()
    res = {'device': args.device, 'height': args.height, 'width': args.width,
           'precision': 'fp16' if args.fp16 else 'fp32', 'runs': args.runs,
           'bundle': os.path.basename(str(bundle).rstrip('/')) if bundle else None,
           'machine': _machine(args.device), 'torch_threads': torch.get_num_threads()}
    if not args.skip_model:
        res.update(bench_model(bundle, args.device, args.height, args.width, args.fp16,
                               args.runs, args.warmup, args.cuda_graphs,
                               args.compile_scores, args.compile_model))
    if args.postprocess or args.backend:
        from ..pipeline import Pipeline
        be = args.backend or 'torch'
        opts = {'cuda_graphs': True} if args.cuda_graphs else {}
        if args.compile_scores:
            opts['compile_scores'] = True
        if bundle is None:
            raise OodSegError('post-processing and end-to-end benchmarks need a bundle')
        from ..model.bundle import read_bundle_json
        from ..pipeline import runtime_for_size, usable_score
        doc = read_bundle_json(bundle)
        size = doc['config']['input_size']
        if args.model_input == 'frame':
            opts['input_size'] = size = (args.height, args.width)
        score = usable_score(runtime_for_size(doc.get('runtime', {}), size)[0])
        pipe = Pipeline.from_bundle(bundle, backend=be, device=args.device, fp16=args.fp16,
                                    score=score, **opts)
        res['heatmap_score'] = score
        res['network_input'] = list(pipe.input_size)
        if args.postprocess:
            res.update(bench_postprocess(pipe, args.height, args.width, args.segments,
                                         args.runs, args.warmup))
        if args.backend:
            res['backend'] = be
            res.update(bench_end_to_end(pipe, args.height, args.width, args.runs,
                                        args.warmup))
    if args.soak and not args.node:
        raise OodSegError('--soak needs --node')
    if args.node and args.soak:
        from ..bench.soak import soak_node
        res.update(soak_node(bundle, args.height, args.width, args.soak,
                             backend=args.backend or 'auto', device=args.device,
                             large_frames=args.soak_large))
    elif args.node:
        from ..bench.node import bench_node
        res.update(bench_node(bundle, args.height, args.width, args.runs, args.warmup))
    res['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f'{k:>24}: {v}')
    return 0


def _machine(device):
    if device == 'cuda':
        import torch
        return torch.cuda.get_device_name(0)
    return f'{platform.machine()} cpu, {os.cpu_count()} cores'
