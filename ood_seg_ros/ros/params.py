"""
Parameters of ``ood_node``: the table, descriptors, validation and start-up checks.

Every parameter is declared from :data:`PARAMETERS` (default, type, read-only,
description; the defaults match ``config/ood.yaml``). :func:`validate` gives the one-line
reason a value is refused, at start (exit code 2) and for ``ros2 param set`` (rejected).
:func:`pipeline_settings` maps the parameters onto :class:`PipelineSettings`, and
:func:`node_parameters` maps settings back for tools that start the node. No ROS graph
is needed: everything here is testable without a node.
"""

import re
from typing import Dict, Iterable, List, Optional, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, \
    ParameterType
from rclpy.parameter import Parameter
import yaml

from ..errors import OodSegError
from ..imagecodec import MAX_FRAME_PIXELS
from ..model.bundle import default_bundle_path
from ..model.config import parse_size
from ..obstacle import check_contrast_gain, check_contrast_window, parse_band_rows, REGIONS
from ..pipeline import GEOMETRIES, Pipeline, PipelineSettings
from ..runtime import BACKENDS
from ..runtime.int8_graph import PRECISIONS
from ..scores import ALL_SCORES

NODE_NAME = 'ood_node'
TRANSPORTS = ('raw', 'compressed')
RELIABILITIES = ('best_effort', 'reliable')
# Parameters rclpy itself declares or reads: never reported as unknown.
ROS_PARAMETERS = ('use_sim_time', 'start_type_description_service')
ROS_PARAMETER_PREFIXES = ('qos_overrides.',)
MIN_DIAGNOSTICS_PERIOD = 0.1        # s: at most 10 messages/s on /diagnostics
MAX_DIAGNOSTICS_PERIOD = 3600.0
# read by main() before the node exists: they decide which node to build
STARTUP = ('lifecycle', 'autostart', 'exit_on_error')
# applied to the running pipeline
RUNTIME = ('heatmap_score', 'segment_threshold', 'heatmap_region')

_S, _B, _I, _F = 'string', 'bool', 'int', 'float'
# name: (default, type, read_only, description). Defaults match config/ood.yaml.
PARAMETERS = {
    'lifecycle': (False, _B, True, 'run as a lifecycle node (managed: configure, '
                  'activate, deactivate, cleanup, shutdown)'),
    'autostart': (True, _B, True, 'lifecycle node: main() configures and activates it; '
                  'false: wait for a lifecycle manager'),
    'exit_on_error': (False, _B, True, 'exit with code 1 when the model cannot be loaded '
                      '(default: stay up with ERROR diagnostics)'),
    'model_path': ('', _S, True, 'model bundle folder; empty: the package default bundle'),
    'backend': ('auto', _S, True, 'auto, torch, onnxruntime or tensorrt'),
    'device': ('auto', _S, True, 'auto, cpu, cuda or cuda:N'),
    'fp16': (False, _B, True, 'half precision (CUDA backends); same as precision fp16'),
    'precision': ('', _S, True, 'fp32, fp16 or int8 (int8: onnxruntime or tensorrt, the '
                  'quantised graph made by ood-seg export --int8); empty: fp16 decides'),
    'engine_path': ('', _S, True, 'TensorRT engine file; empty: cached in the bundle'),
    'force_engine_update': (False, _B, True, 'rebuild the TensorRT engine at start'),
    'cuda_graphs': (True, _B, True, 'torch backend on CUDA: replay a CUDA graph'),
    'threads': (0, _I, True, 'CPU threads of the torch and ONNX Runtime backends '
                '(ORT: intra-op threads); 0: library default'),
    'input_size': ('', _S, True, 'network input HxW, e.g. 480x960 for a 2:1 camera; '
                   'empty: the bundle input size'),
    'geometry': ('letterbox', _S, True, 'letterbox (keep the frame aspect) or stretch'),
    'all_scores': (False, _B, True, 'compute every score so heatmap_score switches '
                   'instantly (slower per frame)'),
    'warmup_runs': (1, _I, True, 'frames run through the model before subscribing'),
    'heatmap_score': ('', _S, False, 'score shown in the heatmap; reads the score in '
                      'use once the model is loaded; set empty: the bundle default '
                      '(changeable at run time)'),
    'segment_threshold': (0.0, _F, False, 'segment threshold on the heatmap in (0, 1); '
                          'reads the threshold in use once the model is loaded; set 0: the '
                          'bundle default (changeable at run time)'),
    'heatmap_region': ('', _S, False, 'all: the whole frame; drivable: obstacle mode, the '
                       'score weighted by the drivable-area prior and segments touching it; '
                       'reads the mode in use once the model is loaded; set empty: the '
                       "bundle's (changeable at run time, no rebuild)"),
    'high_res_band': (False, _B, True, 'second, full-resolution pass over the road band '
                      '(rows: band_rows), fused into the heatmap'),
    'band_rows': ('', _S, True, 'road band TOP:BOTTOM as fractions of the frame height, or '
                  "auto (from the drivable region); empty: the bundle's"),
    'band_width': (0, _I, True, 'network width of the band pass at most; 0: the '
                   "bundle's (its default: the frame's own width)"),
    'flip_average': (False, _B, True, "average the heatmap with the mirrored frame's, each "
                     'weighed by its own drivable prior (2x the network time)'),
    'small_object_contrast': (-1.0, _F, True, "add this gain x the score's excess over its "
                              'local box mean: small obstacles rise, large anomalies lose '
                              "some AP; 0: off; -1: the bundle's (off in the default bundle)"),
    'contrast_window': (0, _I, True, 'box-mean window of small_object_contrast, odd, '
                        "decoder pixels; 0: the bundle's (9)"),
    'input_transport': ('raw', _S, True, 'raw (image) or compressed (image/compressed)'),
    'qos_reliability': ('best_effort', _S, True, 'input QoS: best_effort or reliable'),
    'qos_depth': (1, _I, True, 'input queue depth (1: always the newest frame)'),
    'publish_color': (True, _B, False, 'publish ood/heatmap/color while subscribed'),
    'max_frame_pixels': (MAX_FRAME_PIXELS, _I, True,
                         'larger input frames are rejected (width x height)'),
    'diagnostics_period': (1.0, _F, True, 'seconds between /diagnostics messages'),
    'processing_budget_ms': (200.0, _F, False, 'diagnostics WARN when the p95 '
                             'processing time exceeds this (ms)'),
    'log_throttle_sec': (5.0, _F, True, 'minimum seconds between repeated error logs'),
}
# PipelineSettings field: node parameter, for the fields whose values carry over as they
# are; bundle, score, threshold and input size use '' / 0.0 for "the bundle's".
SETTINGS = {'backend': 'backend', 'device': 'device', 'fp16': 'fp16',
            'all_scores': 'all_scores', 'geometry': 'geometry', 'cuda_graphs': 'cuda_graphs',
            'threads': 'threads', 'engine_path': 'engine_path',
            'force_engine_update': 'force_engine_update', 'max_pixels': 'max_frame_pixels',
            'region': 'heatmap_region', 'band': 'high_res_band', 'flip': 'flip_average',
            'precision': 'precision'}
_ONE_OF = {'backend': BACKENDS, 'precision': ('',) + PRECISIONS,
           'input_transport': TRANSPORTS, 'qos_reliability': RELIABILITIES,
           'geometry': GEOMETRIES, 'heatmap_region': ('',) + REGIONS}


def validate(name: str, value) -> None:
    """Raise OodSegError with a clear one-line message when a parameter value is invalid."""
    if name in _ONE_OF and value not in _ONE_OF[name]:
        raise OodSegError(f'parameter {name}: {value!r} is not one of '
                          f'{", ".join(_ONE_OF[name])}')
    if name == 'device' and not (value in ('auto', 'cpu', 'cuda') or
                                 (value.startswith('cuda:') and value[5:].isdigit())):
        raise OodSegError(f'parameter device: {value!r} is not auto, cpu, cuda or cuda:N')
    if name in ('qos_depth', 'max_frame_pixels') and value < 1:
        raise OodSegError(f'parameter {name}: must be >= 1, got {value}')
    if name in ('threads', 'warmup_runs', 'log_throttle_sec', 'band_width') and value < 0:
        raise OodSegError(f'parameter {name}: must be >= 0, got {value}')
    if name in ('diagnostics_period', 'processing_budget_ms') and not value > 0:
        raise OodSegError(f'parameter {name}: must be > 0, got {value}')
    if name == 'diagnostics_period' and not (
            MIN_DIAGNOSTICS_PERIOD <= value <= MAX_DIAGNOSTICS_PERIOD):
        raise OodSegError(f'parameter diagnostics_period: must be in '
                          f'[{MIN_DIAGNOSTICS_PERIOD:g}, {MAX_DIAGNOSTICS_PERIOD:g}] s, '
                          f'got {value}')
    if name == 'segment_threshold' and not (value == 0.0 or 0.0 < value < 1.0):
        raise OodSegError(f'parameter segment_threshold: must be in (0, 1) or 0 for the '
                          f'bundle default, got {value}')
    if name == 'small_object_contrast' and value != -1.0:
        try:
            check_contrast_gain(value)
        except OodSegError as err:
            raise OodSegError(f"parameter small_object_contrast: -1 (the bundle's) or "
                              f'{err}') from None
    if name == 'contrast_window' and value != 0:
        try:
            check_contrast_window(value)
        except OodSegError as err:
            raise OodSegError(f"parameter contrast_window: 0 (the bundle's) or {err}") \
                from None
    if name == 'input_size' and value:
        parse_size(value)
    if name == 'band_rows' and value and value != 'auto':
        parse_band_rows(value)
    if name == 'heatmap_score' and value and value not in ALL_SCORES:
        raise OodSegError(f'parameter heatmap_score: unknown score {value!r}; known: '
                          f'{", ".join(ALL_SCORES)}')


def descriptor(name: str) -> ParameterDescriptor:
    """Return the ParameterDescriptor of ``name``: type, description, read-only, ranges."""
    default, kind, read_only, text = PARAMETERS[name]
    ptype = {_S: ParameterType.PARAMETER_STRING, _B: ParameterType.PARAMETER_BOOL,
             _I: ParameterType.PARAMETER_INTEGER, _F: ParameterType.PARAMETER_DOUBLE}[kind]
    desc = ParameterDescriptor(name=name, type=ptype, description=text, read_only=read_only)
    if name == 'segment_threshold':
        desc.floating_point_range = [FloatingPointRange(from_value=0.0, to_value=1.0)]
    elif name == 'qos_depth':
        desc.integer_range = [IntegerRange(from_value=1, to_value=1000, step=1)]
    elif name in ('backend', 'input_transport', 'qos_reliability', 'precision'):
        desc.additional_constraints = 'one of: ' + ', '.join(_ONE_OF[name])
    return desc


def read_config(values: Dict[str, object], overrides: Iterable[str], argv) -> dict:
    """
    Return the checked parameter values; OodSegError naming the first problem.

    ``values``: every declared parameter's value; ``overrides``: the names given on the
    command line or in params files; ``argv``: the command line (its ``-p`` entries).
    """
    problems = command_line_parameter_problems(argv, PARAMETERS)
    if problems:
        raise OodSegError('; '.join(problems))
    unknown = unknown_parameters(overrides, PARAMETERS)
    if unknown:
        raise OodSegError(f'unknown parameters {unknown} (misspelt?); known: '
                          f'{", ".join(PARAMETERS)}')
    for name, value in values.items():
        validate(name, value)
    return dict(values)


def with_bundle_defaults(params: List[Parameter], pipeline: Pipeline) -> List[Parameter]:
    """
    Pre-set step: '' / 0.0 of heatmap_score, segment_threshold, heatmap_region become the bundle's.

    ``ros2 param set /ood_node segment_threshold 0.0`` resets the threshold to the
    bundle's and ``ros2 param get`` then reads that value, the one in use.
    """
    resets = {'heatmap_region': ('', pipeline.default_region),
              'heatmap_score': ('', str(pipeline.runtime['heatmap_score'])),
              'segment_threshold': (0.0, float(pipeline.runtime['segment_threshold']))}
    return [Parameter(q.name, value=resets[q.name][1])
            if q.name in resets and q.value == resets[q.name][0] else q for q in params]


def check_set(params: List[Parameter], pipeline: Optional[Pipeline]) -> Optional[str]:
    """
    Set step: validate ``params``; return the heatmap score the set needs a rebuild for.

    A heatmap score the running pipeline does not compute needs a new pipeline, built in
    the background (:mod:`.rebuild`); nothing is built here, so the call answers at once.
    Raises OodSegError: the set is then refused whole.
    """
    for param in params:
        if param.name in PARAMETERS:
            validate(param.name, param.value)
    score = next((q.value for q in params if q.name == 'heatmap_score'), None)
    region = next((q.value for q in params if q.name == 'heatmap_region'), None)
    if pipeline is not None and region is not None:
        pipeline.region_state(region)           # raises where set_region would
    if pipeline is None or not score:
        return None
    computed = score in pipeline.backend.output_names
    pipeline.score_normalisation(score, computed=computed)   # raises as set_score would
    return None if computed else score


def apply_set(cfg: dict, params: List[Parameter], pipeline: Optional[Pipeline],
              rebuild: Optional[str] = None) -> None:
    """
    Post-set step: store the values in ``cfg`` and apply them to ``pipeline``.

    ``rebuild``: the score a background rebuild was asked for; the running pipeline
    keeps its score until the new one takes over (it then takes the threshold in use).
    """
    cfg.update({q.name: q.value for q in params if q.name in PARAMETERS})
    if pipeline is None:
        return
    names = {q.name for q in params}
    score = next((q.value for q in params if q.name == 'heatmap_score'), None)
    if 'heatmap_region' in names and cfg['heatmap_region'] != pipeline.region:
        # the mode's score, threshold and meta classifier, unless the set gives them
        # (a score being rebuilt in the background comes with the new pipeline)
        pipeline.set_region(cfg['heatmap_region'],
                            score=score if score and rebuild is None else None,
                            threshold=(cfg['segment_threshold'] or None)
                            if 'segment_threshold' in names else None)
        if rebuild is None:
            cfg['heatmap_score'] = pipeline.score_name
        cfg['segment_threshold'] = pipeline.threshold
        return
    if score is not None and rebuild is None and score != pipeline.score_name:
        pipeline.set_score(score or pipeline.runtime['heatmap_score'])
    if 'segment_threshold' in names:
        pipeline.set_threshold(cfg['segment_threshold'] or
                               pipeline.runtime['segment_threshold'])


def pipeline_settings(cfg: Dict[str, object], score: Optional[str]) -> PipelineSettings:
    """
    Return the PipelineSettings of the parameter values ``cfg``, with heatmap ``score``.

    ``score`` None: the bundle's; an empty ``model_path``: the package default bundle.
    """
    bundle = cfg['model_path'] or default_bundle_path()
    if bundle is None:
        raise OodSegError('model_path is empty and the package default bundle '
                          'models/camvid_lite0 is not installed; set model_path')
    settings = PipelineSettings(
        bundle=str(bundle), score=score or None, threshold=cfg['segment_threshold'] or None,
        input_size=cfg['input_size'] or None, band_rows=cfg['band_rows'] or None,
        band_width=cfg['band_width'] or None,
        contrast=None if cfg['small_object_contrast'] == -1.0 else cfg['small_object_contrast'],
        contrast_window=cfg['contrast_window'] or None,
        **{field: cfg[name] for field, name in SETTINGS.items()})
    settings.precision_name()       # fp16 and precision must agree
    return settings


def node_parameters(settings: PipelineSettings,
                    fields: Sequence[str] = ('bundle', 'backend', 'device', 'score',
                                             'threshold')) -> Dict[str, object]:
    """Return the node parameters (``-p`` values) that give the node ``fields`` of ``settings``."""
    special = {'bundle': ('model_path', settings.bundle),
               'score': ('heatmap_score', settings.score or ''),
               'threshold': ('segment_threshold', float(settings.threshold or 0.0)),
               'input_size': ('input_size', settings.input_size or ''),
               'band_rows': ('band_rows', settings.band_rows or ''),
               'band_width': ('band_width', int(settings.band_width or 0)),
               'contrast': ('small_object_contrast', -1.0 if settings.contrast is None
                            else float(settings.contrast)),
               'contrast_window': ('contrast_window', int(settings.contrast_window or 0))}
    out = {}
    for field in fields:
        name, value = special.get(field) or (SETTINGS[field], getattr(settings, field))
        out[name] = value
    return out


def _ros_args(argv) -> Iterable[tuple]:
    """Yield (flag, value) of the ``--ros-args`` parts of ``argv`` that take a value."""
    in_ros, i, args = False, 0, list(argv or ())
    while i < len(args):
        arg = args[i]
        if arg == '--ros-args':
            in_ros = True
        elif arg == '--':
            in_ros = False
        elif in_ros and arg in ('-p', '--param', '-r', '--remap', '--params-file') and \
                i + 1 < len(args):
            i += 1
            yield {'--param': '-p', '--remap': '-r'}.get(arg, arg), args[i]
        i += 1


def _blocks(doc, path=''):
    """Yield (node path, ros__parameters) of a params-file document (nested keys too)."""
    if not isinstance(doc, dict):
        return
    for key, body in doc.items():
        if key == 'ros__parameters':
            if isinstance(body, dict):
                yield path, body
        else:
            yield from _blocks(body, f'{path}/{str(key).strip("/")}')


def _matches(pattern: str, fqn: str) -> bool:
    """Match a node name with rcl's wildcards: ``/**`` any namespaces, ``/*`` one name."""
    rx = ''.join('(/[^/]+)*' if tok == '**' else '/[^/]+' if tok == '*' else
                 '/' + re.escape(tok) for tok in pattern.strip('/').split('/') if tok)
    return re.fullmatch(rx, fqn) is not None


def startup_parameters(argv, node_name: str = NODE_NAME) -> Dict[str, bool]:
    """
    Return lifecycle, autostart and exit_on_error as ``argv`` sets them, without a node.

    Reads the ``--ros-args`` of ``argv`` as rcl does: ``--params-file`` entries whose node
    name matches (``/**``, ``/*/ood_node``, ``/left/ood_node``, after ``__node`` /
    ``__ns`` remaps) and ``-p name:=value``, in order, the last one winning.
    """
    args = list(_ros_args(argv))
    name, namespace = node_name, ''
    for flag, value in args:
        rule = value.split(':', 1)[1] if value.startswith(f'{node_name}:__') else value
        if flag == '-r' and rule.startswith(('__node:=', '__name:=')):
            name = rule.split(':=', 1)[1]
        elif flag == '-r' and rule.startswith('__ns:='):
            namespace = rule.split(':=', 1)[1].strip('/')
    fqn = f'/{namespace}/{name}' if namespace else f'/{name}'
    values = {n: PARAMETERS[n][0] for n in STARTUP}
    for flag, value in args:
        if flag == '--params-file':
            try:
                with open(value) as f:
                    doc = yaml.safe_load(f)
            except (OSError, yaml.YAMLError) as exc:
                raise OodSegError(f'cannot read params file {value}: {exc}') from None
            for path, params in _blocks(doc):
                if _matches(path, fqn):
                    values.update({n: params[n] for n in STARTUP if n in params})
        elif flag == '-p':
            key, _, text = value.partition(':=')
            if key in STARTUP:
                try:
                    values[key] = yaml.safe_load(text)
                except yaml.YAMLError:
                    values[key] = text
    for key, value in values.items():
        if not isinstance(value, bool):
            raise OodSegError(f'parameter {key}: {value!r} is not a bool')
    return values


def unknown_parameters(given: Iterable[str], known: Iterable[str]) -> List[str]:
    """
    Names given on the command line or in a params file that the node does not declare.

    rclpy silently ignores overrides of undeclared parameters, so a misspelt name
    (``segment_threshhold``) would leave the node on its default; the node refuses them.
    """
    known = set(known) | set(ROS_PARAMETERS)
    return sorted(n for n in given
                  if n not in known and not n.startswith(ROS_PARAMETER_PREFIXES))


_KINDS = {'string': (str,), 'bool': (bool,), 'int': (int,), 'float': (float, int)}


def command_line_parameter_problems(argv, parameters: dict) -> List[str]:
    """
    Check every ``-p name:=value`` in the ``--ros-args`` parts of ``argv``.

    ``parameters`` maps name -> (default, kind, ...) with kind string, bool, int or float.
    rcl drops a ``-p`` value whose YAML type differs from the same key in a
    ``--params-file`` (``-p segment_threshold:=abc`` left the file's 0.0 in place), so
    the node checks the command line itself. Returns one message per bad entry.
    """
    problems = []
    for flag, entry in _ros_args(argv):
        if flag != '-p':
            continue
        name, sep, text = entry.partition(':=')
        if not sep:
            problems.append(f'-p {entry!r} is not name:=value')
        elif name not in parameters:
            if unknown_parameters([name], ()):
                problems.append(f'unknown parameter {name!r} (misspelt?)')
        else:
            kind = parameters[name][1]
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                value = text
            if value is None and kind == 'string':
                value = ''                      # -p engine_path:= (empty)
            if isinstance(value, str) and kind == 'float':
                value = _number(text, float)   # rcl reads 1e-6 as a double
            ok = isinstance(value, _KINDS[kind]) and not (
                kind in ('int', 'float') and isinstance(value, bool))
            if not ok:
                article = 'an' if kind == 'int' else 'a'
                problems.append(f'parameter {name}: {text!r} is not {article} {kind}')
    return problems


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        return text
