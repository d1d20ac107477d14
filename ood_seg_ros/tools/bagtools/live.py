"""
Live bag replay: play a bag into a running ``ood_node`` over real DDS, record its outputs.

Layout (rclpy may initialise DDS only once per process, and the private network namespace
must exist before it does):

* :func:`run_live` (called by ``ood-seg bag-eval --mode live``) starts
  ``python -m ood_seg_ros.tools.bagtools.player ...`` in a child process, inside a private
  network namespace with only loopback (``unshare -n``) when the system allows it, else
  with ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a random ``ROS_DOMAIN_ID``
  (:func:`.node_process.isolation`);
* that child (:func:`.player.main`) starts the node as a subprocess exactly as
  ``launch_ros`` would (``ood_node --ros-args --params-file ... -r image:=<topic> -p
  name:=value``), waits until the node's input subscription and output publishers are
  discovered, publishes the bag's raw CDR bytes (headers unchanged) and records the
  outputs with raw subscriptions into an output bag (rosbag2, metadata version 8).

Pacing: ``lockstep`` (default, for evaluation) publishes frame i + 1 only once all image
outputs of frame i have arrived (or ``frame_timeout`` passed: the frame counts as dropped),
so every frame is processed whatever the node's speed and input QoS (depth 1 drops frames
that arrive while the node is busy). ``timed`` publishes at the bag's log times (scaled by
``rate_scale``) like ``ros2 bag play``; frames the node cannot keep up with are dropped and
counted.

Bad input: a message that is not a decodable Image (corrupt CDR, another type) is not
published; it is skipped and listed in the report (``bad_messages``), as offline bag-eval
counts it. Interrupts: Ctrl-C / SIGTERM of bag-eval is forwarded to the child as SIGINT
(:func:`.node_process.stop_process`); the child stops between callbacks, stops the node and closes
the output bag (metadata.yaml written), then exits 130.

Times: publish and receive times are taken with ``time.monotonic_ns`` in the one player
process; latency of a frame = arrival of its last image output - its publish time.
"""

import contextlib
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
from typing import Dict, Optional

from .node_process import isolation, stop_process
from .report import bad_message_fields, last_diagnostics, NODE_LOG, OUTPUT_BAG, REPLAY_JSON
from .report import timing_summary
from ...errors import OodSegError
from ...pipeline import PipelineSettings
from ...ros.params import node_parameters


def default_params_file():
    """Return the package's config/ood.yaml (source tree or installed share), or None."""
    here = Path(__file__).resolve().parents[3] / 'config' / 'ood.yaml'
    if here.is_file():
        return here
    try:    # lazy: ament_index_python exists only in a ROS install
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory('ood_seg_ros')) / 'config' / 'ood.yaml'
        if share.is_file():
            return share
    except (ImportError, LookupError, ValueError):
        pass
    return None


def run_live(bag, out_bag, report_path, image_topic: str, node_params: Dict[str, object],
             params_file: Optional[str] = None, lockstep: bool = True,
             rate_scale: float = 1.0, limit: Optional[int] = None,
             frame_timeout: float = 60.0, startup_timeout: float = 180.0,
             node_log=None, isolation_mode: str = 'auto') -> dict:
    """
    Replay ``bag`` into a freshly started node in an isolated child; return its report.

    The child writes ``out_bag`` (the node's outputs) and ``report_path`` (JSON: per-frame
    publish / receive times, node command and exit code); see the module docstring.
    """
    prefix, env_extra, description = isolation(isolation_mode)
    pkg_root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ, **env_extra)
    env['PYTHONPATH'] = pkg_root + (os.pathsep + env['PYTHONPATH']
                                    if env.get('PYTHONPATH') else '')
    cmd = prefix + [sys.executable, '-m', 'ood_seg_ros.tools.bagtools.player', '--bag', str(bag),
                    '--out-bag', str(out_bag), '--report', str(report_path),
                    '--image-topic', image_topic, '--node-params', json.dumps(node_params),
                    '--frame-timeout', str(frame_timeout),
                    '--startup-timeout', str(startup_timeout),
                    '--rate-scale', str(rate_scale)]
    if params_file:
        cmd += ['--params-file', str(params_file)]
    if not lockstep:
        cmd += ['--timed']
    if limit is not None:
        cmd += ['--limit', str(int(limit))]
    if node_log:
        cmd += ['--node-log', str(node_log)]
    with tempfile.TemporaryFile(mode='w+') as log:
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    text=True)
        except OSError as exc:
            raise OodSegError(f'cannot start the replay process: {exc}') from None
        try:
            code = proc.wait()
        except KeyboardInterrupt:   # Ctrl-C, or SIGTERM turned into it by the CLI
            # the child stops the node and closes its output bag on SIGINT; a second
            # interrupt while waiting kills it at once
            with contextlib.suppress(KeyboardInterrupt):
                stop_process(proc, ((signal.SIGINT, 60.0),))
            raise
        log.seek(0)
        output = log.read()
    if code != 0:
        tail = '\n'.join(output.strip().splitlines()[-15:])
        raise OodSegError(f'live replay failed (exit code {code}): {tail}')
    try:
        report = json.loads(Path(report_path).read_text())
    except (OSError, ValueError) as exc:
        raise OodSegError(f'live replay wrote no readable report {report_path}: {exc}') \
            from None
    report['isolation'] = description
    return report


def evaluate_live(bag, settings: PipelineSettings, image_topic: str, out: Path,
                  params_file=None, pacing: str = 'lockstep', rate_scale: float = 1.0,
                  limit=None, frame_timeout: float = 60.0,
                  isolation_mode: str = 'auto') -> dict:
    """
    Replay ``bag`` through a fresh node; return the metrics document of this mode.

    The node gets the score, threshold and backend the offline engine would use (bundle
    defaults unless given), resolved here without loading the model. Writes
    ``output.bag``, ``replay.json`` and ``node.log`` into ``out``.
    """
    settings = settings.resolved()
    doc = {'mode': 'live', 'bag': str(bag), 'bundle': settings.bundle,
           'image_topic': image_topic,
           'backend': {'backend': settings.backend, 'device': settings.device},
           'heatmap_score': settings.score, 'segment_threshold': settings.threshold}
    params_file = params_file or default_params_file()
    lockstep = pacing == 'lockstep'
    params = node_parameters(settings, ('bundle', 'backend', 'device', 'score', 'threshold',
                                        'region', 'band', 'band_rows', 'band_width', 'flip',
                                        'contrast', 'contrast_window'))
    if lockstep:    # and a reliable input: no frame lost in transport
        params.update({'qos_reliability': 'reliable', 'qos_depth': 10})
    out_bag = out / OUTPUT_BAG
    report = run_live(bag, out_bag, out / REPLAY_JSON, image_topic, params,
                      params_file=params_file, lockstep=lockstep, rate_scale=rate_scale,
                      limit=limit, frame_timeout=frame_timeout, node_log=out / NODE_LOG,
                      isolation_mode=isolation_mode)
    timing = timing_summary(report['frames'], report['required_topics'])
    bad = report.get('bad_messages', [])   # skipped by the player, as offline
    timing.update({'frames_in': timing['frames_in'] + len(bad),
                   **bad_message_fields(bad, bag)})
    diag = last_diagnostics(out_bag)
    if diag.get('backend'):
        doc['backend'] = {k: diag[k] for k in ('backend', 'device', 'precision') if k in diag}
    doc.update({'pacing': report['pacing'], 'isolation': report['isolation'],
                'params_file': str(params_file) if params_file else None,
                'node_command': report['node_command'],
                'node_exit_code': report['node_exit_code'],
                'node_startup_s': report['startup_s'],
                'outputs_received': report['received'],
                'node_diagnostics': diag})
    doc.update(timing)
    return doc
