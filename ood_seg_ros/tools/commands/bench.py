"""
``ood-seg bench``: speed and memory of the network, post-processing and pipeline.

Prints one JSON object (``--json``). Figures are medians over ``--runs`` timed runs
after ``--warmup`` runs, measured in one process on the same input:

- ``plain_ms``: network with segmentation output only; ``node_ms``: with the outputs
  the node needs; ``full_ms``: with every OoD output; ``overhead_torch`` = node / plain,
  ``overhead`` = full / plain (runs interleaved; ratios are medians of per-round
  ratios); the torch model has its BatchNorms folded, as the node's torch backend runs
  it; ``--backend onnxruntime`` adds ``ort_plain_ms``, ``ort_node_ms`` and
  ``overhead_ort``, in the graph of ``--precision`` (int8: the quantised graph, made
  from ``--camvid`` train frames when missing, and ``ort_int8_vs_fp32``);
- ``--profile-ort [DIR]``: the same two ONNX Runtime graphs under its profiler; the node
  graph's time by region (segmentation, probes, score head parts) and its extra time per
  op type (``ort_profile``; every node in ``DIR/ort_profile.json``,
  :mod:`ood_seg_ros.tools.bench.ort_profile`);
- ``--compare-onnx FILE``: another ONNX network timed interleaved with ours (our
  network with the node's outputs, and our whole frame with ``--backend``);
- ``meta_<n>_segments_ms``: meta classification + segment records (``--meta-segments``);
- ``growth``: network time per input size (``--growth``), cost per pixel vs the first;
- ``postprocess_ms``: heatmap + segments + features + meta classifier on realistic
  synthetic network outputs with ``--segments`` blobs (``--postprocess``);
- ``end_to_end_ms`` / ``fps``: frame in -> FrameResult through a backend, with
  per-stage medians (``--backend``);
- ``node_*``: input -> output latency through a running node over real DDS (``--node``);
- ``cold_*`` / ``warm_*``: seconds from starting the node to its first heatmap, first
  with nothing cached and then with the cached graph (``--startup``).
"""

import os
import platform

from .base import add_bundle_option, add_json_option, Command, print_result


class BenchCommand(Command):
    """Measure network, post-processing and pipeline speed (JSON)."""

    def add_arguments(self, parser) -> None:
        """Benchmark options."""
        add_bundle_option(parser)
        parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
        parser.add_argument('--height', type=int, default=360)
        parser.add_argument('--width', type=int, default=480)
        parser.add_argument('--fp16', action='store_true', help='half precision (CUDA)')
        parser.add_argument('--precision', default=None, choices=['fp32', 'fp16', 'int8'],
                            help='fp16: as --fp16; int8: the quantised graph on onnxruntime '
                                 '(ONNX Runtime timing, --backend and --compare-onnx), '
                                 'interleaved with the fp32 graph')
        from ..data.datasets import add_dataset_option
        add_dataset_option(parser, required=False)
        parser.add_argument('--runs', type=int, default=20)
        parser.add_argument('--warmup', type=int, default=5)
        parser.add_argument('--threads', type=int, default=0,
                            help='CPU threads of the backends (0: their defaults)')
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
        torch_options = parser.add_argument_group('torch (network timing and torch backend)')
        torch_options.add_argument('--cuda-graphs', action='store_true', help='CUDA graphs')
        torch_options.add_argument('--compile-scores', action='store_true',
                                   help='fuse the score head with torch.compile')
        torch_options.add_argument('--compile-model', action='store_true',
                                   help='torch.compile the whole network (network timing)')
        parser.add_argument('--node', action='store_true',
                            help='time input->output latency through the ROS 2 node')
        parser.add_argument('--soak', type=int, default=0, metavar='N',
                            help='with --node: soak N frames (bad frames mixed in); report '
                                 'VmRSS/VmHWM, fds and threads every 100 frames')
        parser.add_argument('--soak-large', type=int, default=5, metavar='K',
                            help='with --soak: then K frames of 4320x7680 (8K); report VmRSS '
                                 'after the first and the last (default: 5; 0: none)')
        parser.add_argument('--compare-onnx', default=None, metavar='FILE',
                            help='time this ONNX network (one float32 1x3xHxW input) '
                                 'interleaved with ours and print the ratios')
        parser.add_argument('--profile-ort', nargs='?', const='out/ort_profile', default=None,
                            metavar='DIR',
                            help='profile the ONNX Runtime plain and node graphs (CPU); '
                                 'write the per-node breakdown to DIR (default: '
                                 'out/ort_profile)')
        parser.add_argument('--meta-segments', default='', metavar='N,N',
                            help='time meta classification at these segment counts')
        parser.add_argument('--startup', action='store_true',
                            help='seconds from starting ood_node to its first heatmap: cold '
                                 '(nothing cached) and warm (graph cached), on a copy of '
                                 'the bundle')
        parser.add_argument('--obstacle', action='store_true',
                            help='cost of the obstacle-mode options end to end (drivable '
                                 'prior, road band, flip, small-object contrast, the whole '
                                 'frame at band resolution)')
        parser.add_argument('--band-width', type=int, default=0,
                            help='--obstacle: band network width at most (0: frame width)')
        parser.add_argument('--growth', default='', metavar='HxW,HxW',
                            help='network time at these input sizes (torch unless --backend)')
        add_json_option(parser)

    def main(self, args) -> int:
        """Run the requested benchmarks and print the result."""
        import resource
        import torch
        from ..bench import model as M
        from ..bench import pipeline as P
        from ...errors import OodSegError
        from ...model.bundle import default_bundle_path
        from ...model.config import parse_size
        if args.precision == 'fp16':
            args.fp16 = True
        elif args.fp16 and args.precision:
            raise OodSegError(f'--fp16 and --precision {args.precision}: choose one')
        int8 = _int8_options(args)
        if int8 and args.backend not in (None, 'onnxruntime'):
            raise OodSegError('--precision int8 runs on onnxruntime: use --backend onnxruntime')
        if int8 and args.device != 'cpu':
            raise OodSegError('--precision int8 is timed on the CPU (--device cpu)')
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.device == 'cuda' and not torch.cuda.is_available():
            raise OodSegError('--device cuda: no CUDA GPU available')
        if args.fp16 and args.device != 'cuda':
            raise OodSegError('--fp16 needs --device cuda')
        if args.soak and not args.node:
            raise OodSegError('--soak needs --node')
        if args.profile_ort and args.device != 'cpu':
            raise OodSegError('--profile-ort profiles ONNX Runtime on the CPU (--device cpu)')
        bundle = args.bundle or default_bundle_path()
        res = {'device': args.device, 'height': args.height, 'width': args.width,
               'precision': 'int8' if int8 else 'fp16' if args.fp16 else 'fp32',
               'runs': args.runs,
               'bundle': os.path.basename(str(bundle).rstrip('/')) if bundle else None,
               'machine': _machine(args.device), 'load_average': list(os.getloadavg())}
        ort_cpu = (args.backend == 'onnxruntime' or int8) and args.device == 'cpu'
        if not args.skip_model:
            res.update(M.bench_torch(bundle, args.device, args.height, args.width, args.fp16,
                                     args.runs, args.warmup, args.cuda_graphs,
                                     args.compile_scores, args.compile_model))
            if ort_cpu:
                res.update(M.bench_ort(bundle, args.height, args.width, args.runs, args.warmup,
                                       args.threads, **int8))
        if args.profile_ort:
            from ..bench.ort_profile import profile_ort
            res.update(profile_ort(bundle, args.height, args.width, args.runs, args.warmup,
                                   args.threads, args.profile_ort, **int8))
        pipe = None
        if args.postprocess or args.backend or args.meta_segments or args.compare_onnx:
            pipe = _pipeline(args, bundle, res)
        if args.postprocess:
            res.update(P.bench_postprocess(pipe, args.height, args.width, args.segments,
                                           args.runs, args.warmup))
        for n in _ints(args.meta_segments):
            res.update(P.bench_meta(pipe, n, args.runs, args.warmup,
                                    (args.height, args.width)))
        if args.backend:
            res['backend'] = pipe.backend.name
            res.update(P.bench_end_to_end(pipe, args.height, args.width, args.runs,
                                          args.warmup))
        if args.compare_onnx:
            res.update(_compare(args, bundle, pipe))
        if args.growth:
            sizes = [parse_size(s) for s in args.growth.split(',')]
            opts = {'threads': args.threads} if args.threads else {}
            res.update(P.bench_growth(bundle, sizes, args.runs, args.warmup,
                                      args.backend or 'torch', **opts))
        if args.obstacle:
            res.update(P.bench_obstacle(bundle, args.height, args.width, args.runs,
                                        args.warmup, args.backend or 'torch', args.band_width,
                                        args.threads, **int8))
        if args.node and args.soak:
            from ..bench.soak import soak_node
            res.update(soak_node(bundle, args.height, args.width, args.soak,
                                 backend=args.backend or 'auto', device=args.device,
                                 large_frames=args.soak_large))
        elif args.node:
            from ..bench.node import bench_node
            res.update(bench_node(bundle, args.height, args.width, args.runs, args.warmup))
        if args.startup:
            from ..bench.startup import bench_startup
            res.update(bench_startup(bundle, args.height, args.width,
                                     args.backend or 'auto', args.device))
        res['torch_threads'] = torch.get_num_threads()
        res['load_average_end'] = list(os.getloadavg())
        res['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print_result(res, args.json)
        return 0


def _ints(text):
    """``'40,1000'`` -> [40, 1000]; '' -> []."""
    from ...errors import OodSegError
    try:
        return [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise OodSegError(f'expected comma-separated integers, got {text!r}') from None


def _int8_options(args) -> dict:
    """Return the OnnxRuntimeBackend keywords of --precision int8 ({} otherwise)."""
    from ..data.datasets import dataset_spec
    if args.precision != 'int8':
        return {}
    from ..quantize import int8_maker
    spec = dataset_spec(args)
    return {'int8': True, 'make_int8': int8_maker(spec) if spec else None}


def _pipeline(args, bundle, res):
    """Build the bundle's Pipeline for --postprocess, --backend, --meta-segments, ..."""
    from ..bench.pipeline import build_pipeline
    int8 = _int8_options(args)
    backend = args.backend or ('onnxruntime' if args.compare_onnx or int8 else 'torch')
    pipe = build_pipeline(bundle, backend, args.device, args.fp16, args.threads, args.cuda_graphs,
                          args.compile_scores,
                          (args.height, args.width) if args.model_input == 'frame' else None,
                          **int8)
    res['heatmap_score'] = pipe.score_name
    res['network_input'] = list(pipe.input_size)
    return pipe


def _compare(args, bundle, pipe):
    """Time --compare-onnx: the peer vs our network (node outputs) and our whole frame."""
    from ..bench.pipeline import compare_with_peer
    return compare_with_peer(args.compare_onnx, bundle, pipe, (args.height, args.width),
                             args.runs, args.warmup, args.threads, **_int8_options(args))


def _machine(device):
    if device == 'cuda':
        import torch
        return torch.cuda.get_device_name(0)
    return f'{platform.machine()} cpu, {os.cpu_count()} cores'
