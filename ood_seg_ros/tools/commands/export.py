"""
``ood-seg export``: a bundle to an ONNX graph or a cached TensorRT engine.

ONNX (``--format onnx``): fp32 by default, ``--fp16`` for half weights (float32 I/O);
fixed input size unless ``--dynamic``; the report lists the operators and any the
TensorRT 10 parser lacks. TensorRT (``--format tensorrt``): builds the engine into the
bundle's engine cache (or ``--out``) without running it; FP16 by default, ``--fp32``, or
``--int8``. ``--int8`` makes the statically quantised QDQ graph (:mod:`..quantize`),
calibrated on ``--calib-frames`` frames evenly spaced over the sorted ``train`` list of
``--camvid`` / ``--dataset``, into the bundle's cache; TensorRT builds its engine from
that graph (explicit quantization).
"""

import time

from .base import add_bundle_option, add_json_option, Command, print_result


def resolve_outputs(spec: str, runtime: dict) -> list:
    """Output names for ``deploy`` / ``all`` / a comma list (validated)."""
    from ...errors import OodSegError
    from ...runtime.onnx_cache import canonical_outputs
    from ...pipeline import Pipeline
    from ...scores import ALL_SCORES, EXTRA_OUTPUTS
    spec = (spec or 'deploy').strip()
    if spec == 'deploy':
        return canonical_outputs(Pipeline.required_outputs(runtime))
    if spec == 'all':
        return list(EXTRA_OUTPUTS) + list(ALL_SCORES)
    names = [s.strip() for s in spec.split(',') if s.strip()]
    if not names:
        raise OodSegError(f'--outputs {spec!r} names no outputs')
    return canonical_outputs(names)


class ExportCommand(Command):
    """Export a model bundle to ONNX or a TensorRT engine."""

    def add_arguments(self, parser) -> None:
        """Export options."""
        add_bundle_option(parser)
        parser.add_argument('--format', default='onnx', choices=['onnx', 'tensorrt'])
        parser.add_argument('--fp16', action='store_true',
                            help='half precision (ONNX: fp16 graph; TensorRT: the default)')
        parser.add_argument('--fp32', action='store_true', help='TensorRT: build an fp32 engine')
        parser.add_argument('--int8', action='store_true',
                            help='int8 QDQ graph (ONNX) / engine built from it (TensorRT), '
                                 'calibrated on train frames of --camvid / --dataset')
        from ..data.datasets import add_dataset_option
        from ..quantize import CALIB_FRAMES
        add_dataset_option(parser, required=False)
        parser.add_argument('--int8-target', default='cpu', choices=['cpu', 'tensorrt'],
                            help='ONNX --int8: activations uint8 asymmetric for ONNX Runtime '
                                 '(cpu) or int8 symmetric for TensorRT (--format tensorrt '
                                 'makes that one itself)')
        parser.add_argument('--calib-frames', type=int, default=CALIB_FRAMES,
                            help='--int8: calibration frames, evenly spaced over the sorted '
                                 f'train list (default {CALIB_FRAMES})')
        parser.add_argument('--outputs', default='deploy',
                            help='deploy (what the pipeline needs), all (logits, probs and every '
                                 'score) or a comma list of output names')
        parser.add_argument('--height', type=int, default=None, help='input height (bundle)')
        parser.add_argument('--width', type=int, default=None, help='input width (bundle)')
        parser.add_argument('--dynamic', action='store_true', help='ONNX: dynamic height/width')
        parser.add_argument('--opset', type=int, default=17, help='ONNX opset (>= 17)')
        parser.add_argument('--out', default=None,
                            help='output file (default: inside <bundle>/derived/)')
        parser.add_argument('--workspace-mb', type=int, default=4096,
                            help='TensorRT builder workspace limit in MiB')
        parser.add_argument('--force-engine-update', action='store_true',
                            help='TensorRT: rebuild even when a matching engine is cached')
        add_json_option(parser)

    def main(self, args) -> int:
        """Export and print the result."""
        from pathlib import Path
        from ...errors import OodSegError
        from ...model.bundle import default_bundle_path, read_bundle_json
        bundle = args.bundle or default_bundle_path()
        if bundle is None:
            raise OodSegError('no --bundle given and no default bundle (models/camvid_lite0) '
                              'found')
        doc = read_bundle_json(bundle)
        outputs = resolve_outputs(args.outputs, doc.get('runtime', {}))
        h0, w0 = doc['config']['input_size']
        size = (args.height or h0, args.width or w0)
        if args.fp16 + args.fp32 + args.int8 > 1:
            raise OodSegError('choose at most one of --fp16, --fp32, --int8')
        t0 = time.perf_counter()
        res = {'format': args.format, 'bundle': str(bundle), 'input_size': list(size),
               'outputs': ['semantic'] + outputs}
        from ..data.datasets import dataset_spec
        spec = dataset_spec(args)
        if args.int8 and args.dynamic:
            raise OodSegError('--int8 is calibrated for one input size; drop --dynamic')
        if args.format == 'onnx':
            from ...runtime.onnx_cache import export_onnx, onnx_ops, TENSORRT10_SUPPORTED_OPS
            if args.int8:
                from ..quantize import calibration_frames, ensure_int8
                if not spec:
                    raise OodSegError('--int8 needs calibration frames: give --camvid or '
                                      '--dataset (its train split is used)')
                calibration_frames(spec, args.calib_frames)     # bad count: one line
                path = ensure_int8(bundle, outputs, size, camvid=spec,
                                   calib_frames=args.calib_frames, out_path=args.out,
                                   target=args.int8_target)
            else:
                path = export_onnx(bundle, outputs, args.out, size, args.fp16, args.opset,
                                   args.dynamic)
            ops = onnx_ops(path)
            if args.int8:
                from ..quantize import recorded_calibration
                res['calibration'] = recorded_calibration(path)
            res.update({'path': str(path),
                        'precision': 'int8' if args.int8 else 'fp16' if args.fp16 else 'fp32',
                        'dynamic': bool(args.dynamic), 'opset': args.opset,
                        'size_mb': round(Path(path).stat().st_size / 2**20, 2),
                        'ops': sorted(ops),
                        'tensorrt_unsupported': sorted(ops - TENSORRT10_SUPPORTED_OPS)})
        else:
            from ...runtime.tensorrt_backend import TensorRTBackend
            from ..quantize import int8_maker
            if args.dynamic:
                raise OodSegError('TensorRT engines are built for one input size; drop --dynamic '
                                  'and give --height/--width')
            be = TensorRTBackend(bundle, outputs, fp16=not args.fp32, int8=args.int8,
                                 make_int8=(int8_maker(spec, args.calib_frames)
                                            if spec else None),
                                 input_size=size, workspace_mb=args.workspace_mb,
                                 force_engine_update=args.force_engine_update, build_only=True,
                                 engine_path=args.out)
            res.update({'path': str(be.engine_path), 'precision': be.precision,
                        'size_mb': round(Path(be.engine_path).stat().st_size / 2**20, 2)})
        res['seconds'] = round(time.perf_counter() - t0, 2)
        print_result(res, args.json)
        return 0
