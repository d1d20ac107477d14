"""
The ROS 2 node ``ood_node``: camera frames in, OoD heatmap, segments and diagnostics out.

A thin layer over :class:`ood_seg_ros.pipeline.Pipeline`: inputs (``image`` or
``image/compressed``, ``camera_info``; relative names) in :mod:`.inputs`, parameters in
:mod:`.params`, outputs in :mod:`.outputs`, ``/diagnostics`` and the rate-limited
bad-frame log in :mod:`.diagnostics`. Bad frames are counted, logged and skipped.
"""

from contextlib import contextmanager
import sys
import time
from typing import Optional

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.task import Future

from .diagnostics import DiagnosticsPublisher, FrameStats
from .input_loss import HINT, InputLossMonitor, transport_limit_bytes
from .inputs import Inputs
from .outputs import load_vision_msgs, Outputs
from .params import apply_set, check_set, descriptor, NODE_NAME, PARAMETERS, \
    pipeline_settings, read_config, RUNTIME, with_bundle_defaults
from .rebuild import Rebuilder
from .stop_signals import STOP
from ..errors import OodSegError
from ..imagecodec.image_codec import FrameError
from ..pipeline import Pipeline


@contextmanager
def destroyed_on_error(node):
    """
    Destroy ``node`` if the block raises (a signal, a bad parameter), then re-raise.

    A node still alive when the process ends keeps its DDS participant, and Fast DDS then
    leaves the participant's shared-memory segment (32 MiB with ``config/fastdds.xml``)
    in ``/dev/shm`` until a reboot or ``fastdds shm clean``: every interrupted start-up
    would cost that much memory.
    """
    try:
        yield node
    except BaseException:
        try:
            node.destroy_node()
        except Exception:  # noqa: B902 - the context may be gone already
            pass
        raise


class OodNodeBody:
    """Parameters, model, subscription, publishing and diagnostics of both node kinds."""

    _lifecycle = False

    def _declare(self) -> None:
        self.pipeline = None
        self.model_error = 'model not loaded yet'
        self.outputs = self._diagnostics = self.inputs = None
        self._vision = load_vision_msgs()
        self.stats = FrameStats()
        self.input_loss = InputLossMonitor(transport_limit_bytes())
        self._loss_hinted = False
        self._syncing = False
        self._pending: Optional[str] = None     # score the set being checked rebuilds for
        self.rebuild_error = ''
        self._rebuilder = Rebuilder(self, self._make_pipeline, self._on_rebuilt)
        self.exit_code: Optional[int] = None
        self.finished = Future()
        self.add_pre_set_parameters_callback(self._on_pre_set_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_post_set_parameters)
        for name in PARAMETERS:
            self.declare_parameter(name, PARAMETERS[name][0], descriptor(name))

    def _finish(self, code: int) -> None:
        """Ask main() to end the process with ``code``."""
        if self.exit_code is None:
            self.exit_code = code
        if not self.finished.done():
            self.finished.set_result(code)

    def _read_config(self) -> None:
        """Read and validate every parameter; raise OodSegError naming the bad one."""
        self.cfg = read_config({n: self.get_parameter(n).value for n in PARAMETERS},
                               getattr(self, '_parameter_overrides', {}), sys.argv)

    def _create_outputs(self) -> None:
        self.outputs = Outputs(self, self._lifecycle, self._vision)
        self._diagnostics = DiagnosticsPublisher(self, self.cfg['diagnostics_period'],
                                                 self.diagnostics_status)

    def _destroy_outputs(self) -> None:
        for part in (self.outputs, self._diagnostics):
            if part is not None:
                part.destroy()
        self.outputs = self._diagnostics = None

    def _settings(self, score: Optional[str]):
        """Return (PipelineSettings, warm-up runs) of the node's parameters and ``score``."""
        settings = pipeline_settings(self.cfg, score)
        if settings.backend_name() == 'tensorrt':
            self.get_logger().warning(
                'TensorRT backend: loading or BUILDING the engine now; a first build can '
                'take several minutes (Jetson: over ten); the node subscribes when done')
        return settings, self.cfg['warmup_runs']

    @staticmethod
    def _make_pipeline(recipe, log=None) -> Pipeline:
        """Build and warm up the pipeline of ``recipe`` (settings, warm-up runs)."""
        settings, warmup_runs = recipe
        if log is not None:
            log(f'loading model {settings.bundle} (backend {settings.backend_name()}); a '
                f'first start exports the ONNX graph (ood-seg export does it ahead of time)')
        pipe = Pipeline.from_settings(settings)
        if log is not None and warmup_runs:
            log(f'warming up: {warmup_runs} run(s) at input {pipe.input_size}')
        frame = np.zeros(tuple(pipe.input_size) + (3,), np.uint8)
        for _ in range(warmup_runs):
            pipe.process(frame)
        return pipe

    def _load_model(self) -> bool:
        """Build and warm up the pipeline; on failure keep running with ERROR diagnostics."""
        t0 = time.perf_counter()
        try:
            with STOP.interruptible():      # export, warm-up: a signal ends them at once
                pipe = self._make_pipeline(self._settings(self.cfg['heatmap_score'] or None),
                                           self.get_logger().info)
        except Exception as exc:  # noqa: B902 - any failure means: no model
            self.pipeline = None
            self.model_error = f'cannot load model: {exc}'
            if self.cfg['exit_on_error']:
                self.get_logger().fatal(f'{self.model_error} (exit_on_error: exiting)')
                self._finish(1)
            else:
                self.get_logger().error(self.model_error)
            return False
        self.pipeline, self.model_error = pipe, ''
        if pipe.meta is None:
            self.get_logger().error('no meta.json in the bundle: meta classifier OFF, '
                                    'every segment is kept')
        if not pipe.calibrated_size:
            self.get_logger().warning(
                f'the bundle is not calibrated at input {pipe.input_size}: heatmap '
                f'normalisation and segment threshold come from another size (ood-seg eval '
                f'--calibrate --input-size)')
        self._show_effective_parameters()
        info = ', '.join(f'{k}={v}' for k, v in pipe.backend.describe().items())
        self.get_logger().info(
            f'model ready in {time.perf_counter() - t0:.1f} s: {info}, score '
            f'{pipe.score_name}, threshold {pipe.threshold:g}, input {pipe.input_size}')
        return True

    def destroy_node(self):
        """Stop background rebuilds from waking the executor, then destroy the node."""
        rebuilder = getattr(self, '_rebuilder', None)     # None: construction failed early
        if rebuilder is not None:
            rebuilder.destroy()
        return super().destroy_node()

    def _unload_model(self) -> None:
        self._rebuilder.cancel()
        self.pipeline = None
        self.model_error = 'model unloaded (node inactive)'
        torch = sys.modules.get('torch')     # loaded by the backend, if at all
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _subscribe(self) -> None:
        self.inputs = Inputs(self, self.cfg, self._on_frame, self.outputs.camera_info)

    def _unsubscribe(self) -> None:
        if self.inputs is not None:
            self.inputs.destroy()
            self.inputs = None

    def _publish_label_info(self) -> None:
        if self.outputs is not None:
            self.outputs.label_info(self.pipeline, self.get_clock().now().to_msg())

    # -- run-time parameters: pre-set resets, set validates, post-set applies ---------
    def _show_effective_parameters(self) -> None:
        """Set heatmap_region, _score and segment_threshold to the values in use (param get)."""
        p = self.pipeline
        self._syncing = True
        try:
            results = self.set_parameters([
                Parameter('heatmap_region', value=p.region),
                Parameter('heatmap_score', value=p.score_name),
                Parameter('segment_threshold', value=float(p.threshold))])
        finally:
            self._syncing = False
        for res in results:
            if not res.successful:
                self.get_logger().warning(f'cannot show the effective parameter value: '
                                          f'{res.reason}')

    def _on_pre_set_parameters(self, params):
        p = self.pipeline
        return params if p is None or self._syncing else with_bundle_defaults(params, p)

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Accept a set or refuse it whole with the reason; nothing is applied here."""
        self._pending = None
        if self._syncing:
            return SetParametersResult(successful=True)
        try:
            self._pending = check_set(params, self.pipeline)
        except Exception as exc:  # noqa: B902 - refuse the set with the reason
            reason = str(exc) if isinstance(exc, OodSegError) else \
                f'{type(exc).__name__}: {exc}'
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _on_post_set_parameters(self, params) -> None:
        """Apply an accepted set (the values in use: heatmap score, then threshold)."""
        rebuild, self._pending = self._pending, None
        if not hasattr(self, 'cfg'):
            return      # declaration time: _read_config reads the values
        if self._syncing:
            self.cfg.update({q.name: q.value for q in params})
            return
        apply_set(self.cfg, params, self.pipeline, rebuild)
        if rebuild is not None:
            self.get_logger().info(f'heatmap_score {rebuild}: not computed by the running '
                                   f'pipeline; building a new one in the background (the '
                                   f'running one keeps publishing)')
            self.rebuild_error = ''
            self._rebuilder.request(rebuild, self._settings(rebuild))
        elif any(q.name == 'heatmap_score' for q in params):
            self._rebuilder.cancel()     # the latest score wins over a pending rebuild
        if self.pipeline is not None and any(q.name in RUNTIME for q in params):
            self._publish_label_info()
        if self.pipeline is not None and any(q.name == 'heatmap_region' for q in params):
            # the mode brought its own score and threshold: show them (param get) once
            # this set has finished
            self._sync_timer = self.create_timer(0.0, self._sync_once)

    def _sync_once(self) -> None:
        timer, self._sync_timer = self._sync_timer, None
        if timer is not None:
            self.destroy_timer(timer)
        if self.pipeline is not None:
            self._show_effective_parameters()

    def _on_rebuilt(self, score: str, pipe: Optional[Pipeline], error) -> None:
        """Take a finished background rebuild (executor thread): swap pipelines, or report."""
        before = self.pipeline
        if before is None:
            return      # the model was unloaded meanwhile
        if pipe is None:
            self.rebuild_error = f'heatmap_score {score}: rebuild failed: ' + (
                str(error) if isinstance(error, OodSegError) else
                f'{type(error).__name__}: {error}')
            self.get_logger().error(f'{self.rebuild_error}; keeping {before.score_name}')
        else:
            pipe.set_threshold(before.threshold)
            self.pipeline = pipe
            self.get_logger().info(f'heatmap_score {score}: new pipeline in use')
        self._show_effective_parameters()
        self._publish_label_info()

    # -- per frame -------------------------------------------------------------------
    def _on_frame(self, msg, info, convert) -> None:
        """Convert a received frame (``convert``), process and publish it."""
        t0 = time.perf_counter()
        self.stats.count_input(info)
        stamp = msg.header.stamp
        self.input_loss.update(stamp.sec * 1_000_000_000 + stamp.nanosec, len(msg.data))
        try:
            frame = convert(msg)
        except FrameError as exc:
            self._bad_frame(exc.kind, str(exc))
            return
        self._process(msg.header, frame, t0)

    def _bad_frame(self, kind: str, message: str) -> None:
        """Count a bad frame; log one line, per kind at most once per log_throttle_sec."""
        line = self.stats.bad_frame(kind, message, self.cfg['log_throttle_sec'])
        if line is not None:
            self.get_logger().error(line)

    def _process(self, header, frame: np.ndarray, t0: float) -> None:
        p = self.pipeline
        if p is None:
            self._bad_frame('no_model', self.model_error)
            return
        try:
            with STOP.interruptible():
                res = p.process(frame)
        except OodSegError as exc:
            self._bad_frame(getattr(exc, 'kind', 'pipeline'), str(exc))
            return
        except Exception as exc:  # noqa: B902 - keep the node alive, count and log it
            self._bad_frame('internal', f'{type(exc).__name__}: {exc}')
            return
        self.outputs.result(header, frame, res, self.cfg['publish_color'])
        total = (time.perf_counter() - t0) * 1e3
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        latency = ((self.get_clock().now().nanoseconds - stamp_ns) / 1e6
                   if stamp_ns > 0 else None)
        self.stats.add_processed(total, res.timings.get('total_ms', total), latency)

    def diagnostics_status(self):
        """Return the node's DiagnosticStatus (see :meth:`FrameStats.status`)."""
        # the node's full name without the leading slash: 'ood_node', 'left/ood_node'
        status = self.stats.status(self.get_fully_qualified_name().lstrip('/'),
                                   self.pipeline, self.model_error, self.cfg)
        pending = self._rebuilder.pending()
        rebuild = (f'pending: heatmap_score {pending[0]} ({pending[1]:.1f} s)'
                   if pending else self.rebuild_error or 'none')
        status.values.append(KeyValue(key='rebuild', value=rebuild))
        if status.level == DiagnosticStatus.OK and rebuild != 'none':
            status.message = f'running; rebuild {rebuild}'
            if not pending:     # the last rebuild failed: the old score is still in use
                status.level = DiagnosticStatus.WARN
        self._report_input_loss(status)
        return status

    def _report_input_loss(self, status) -> None:
        """Add the lost-input estimate; WARN (and one hint line) when frames are lost."""
        values, problem = self.input_loss.window()
        status.values.extend(KeyValue(key=k, value=v) for k, v in values.items())
        if problem is None:
            return
        if status.level == DiagnosticStatus.OK:
            status.level, status.message = DiagnosticStatus.WARN, problem
        else:
            status.message = f'{status.message}; {problem}'
        if not self._loss_hinted:
            self._loss_hinted = True
            self.get_logger().warning(HINT.format(what=problem))


class OodNode(OodNodeBody, Node):
    """The OoD segmentation node: loads the model and subscribes at construction."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        Node.__init__(self, node_name, **kwargs)
        with destroyed_on_error(self):
            self._declare()
            self._read_config()
            self._create_outputs()
            if self._load_model():
                self._publish_label_info()
                self._subscribe()


class OodLifecycleNode(OodNodeBody, LifecycleNode):
    """
    Lifecycle variant: configure = parameters and publishers, activate = model + input.

    Deactivate unsubscribes and frees the model (GPU memory); cleanup removes publishers;
    shutdown releases everything and ends the process (``main()`` returns 0).
    """

    _lifecycle = True

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        LifecycleNode.__init__(self, node_name, **kwargs)
        with destroyed_on_error(self):
            self._declare()
        self.model_error = 'node not configured'

    def destroy_node(self):
        """Destroy the node, then the lifecycle state machine rclpy's destroy leaves."""
        super().destroy_node()
        # rclpy (jazzy) keeps the state machine, and it holds the node's handle: node and
        # DDS participant would live until the process ends, and the node's os._exit then
        # leaves the participant's shared-memory segment behind (destroyed_on_error)
        machine = getattr(self, '_state_machine', None)
        if machine is not None:
            machine.destroy_when_not_in_use()

    def on_configure(self, state) -> TransitionCallbackReturn:
        """Read and validate parameters, create publishers and the diagnostics timer."""
        try:
            self._read_config()
        except OodSegError as exc:
            self.get_logger().error(str(exc))
            return TransitionCallbackReturn.FAILURE
        self._create_outputs()
        self.model_error = 'node inactive'
        return super().on_configure(state)

    def on_activate(self, state) -> TransitionCallbackReturn:
        """Load and warm up the model, then subscribe to the input."""
        if not self._load_model():
            return TransitionCallbackReturn.FAILURE
        ret = super().on_activate(state)
        self._publish_label_info()
        self._subscribe()
        return ret

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        """Unsubscribe and free the model."""
        self._unsubscribe()
        self._unload_model()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        """Remove publishers and the diagnostics timer."""
        self._destroy_outputs()
        self.model_error = 'node not configured'
        return super().on_cleanup(state)

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        """Release everything; the process then exits with code 0."""
        self._unsubscribe()
        self._unload_model()
        self._destroy_outputs()
        self.get_logger().info('lifecycle shutdown: exiting')
        self._finish(0)
        return super().on_shutdown(state)
