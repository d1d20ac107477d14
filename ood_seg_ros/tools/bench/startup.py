"""
Start-up time of ``ood_node`` for ``ood-seg bench --startup``: a cold and a warm start.

The bundle is copied without its ``derived/`` cache into a temporary folder, then the node
is started on it twice, one after the other, on a private ROS domain (see
:func:`..bench.node.node_session`):

- ``cold``: nothing cached, as the first launch after install (ONNX Runtime exports the
  ONNX graph first; TensorRT would also build its engine);
- ``warm``: the same folder again, with the graph cached by the cold start.

For each: ``<phase>_ready_s``, from starting the process until its image subscription is
seen, and ``<phase>_first_heatmap_s``, until the first ``ood/heatmap`` arrives while this
process publishes a frame like a camera, every :data:`FRAME_PERIOD_S`. Both include the
Python interpreter's start and the imports; ``<phase>_exported`` says whether that start
wrote an ONNX graph.
"""

from pathlib import Path
import shutil
import tempfile
import time

import numpy as np

from .frames import sample_frame
from .node import IMAGE_TOPIC, node_session, READY_TIMEOUT_S
from ...errors import OodSegError
from ...imagecodec.topics import output_topic

FRAME_PERIOD_S = 0.1


def copy_without_cache(bundle, dest: Path) -> Path:
    """Copy a bundle folder to ``dest`` leaving out its ``derived/`` cache; return dest."""
    src = Path(bundle)
    if not (src / 'bundle.json').is_file():
        raise OodSegError(f'bench --startup: {src} is not a bundle folder (no bundle.json)')
    shutil.copytree(src, dest, ignore=lambda d, names: ['derived'] if Path(d) == src else [])
    return dest


def cached_graphs(bundle: Path) -> set:
    """Return the ONNX graphs in a bundle's cache (file names)."""
    return {p.name for p in (bundle / 'derived').rglob('*.onnx')}


def _one_start(bundle: Path, height: int, width: int, backend: str, device: str) -> dict:
    """Start the node once; return the seconds to ready and to the first heatmap."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    frame = sample_frame(height, width, np.random.default_rng(0))
    got = []
    t0 = time.perf_counter()
    with node_session(str(bundle), backend, device, height * width,
                      'ood_bench_startup') as ses:
        reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pub = ses.node.create_publisher(Image, IMAGE_TOPIC, reliable)
        ses.node.create_subscription(Image, output_topic('heatmap'),
                                     lambda m: got.append(time.perf_counter()), reliable)
        if not ses.spin_until(lambda: pub.get_subscription_count() > 0, READY_TIMEOUT_S):
            raise OodSegError(f'ood_node did not start: {ses.tail()}')
        ready = time.perf_counter() - t0
        msg = Image(height=height, width=width, encoding='rgb8', step=width * 3,
                    data=frame.tobytes())
        msg.header.frame_id = 'bench'
        end = time.monotonic() + READY_TIMEOUT_S
        while not got:
            if time.monotonic() > end or not ses.process.running():
                raise OodSegError(f'no {output_topic("heatmap")} from ood_node: {ses.tail()}')
            msg.header.stamp = ses.node.get_clock().now().to_msg()
            pub.publish(msg)
            ses.spin_until(lambda: bool(got), FRAME_PERIOD_S)
        first = got[0] - t0
    return {'ready_s': round(ready, 2), 'first_heatmap_s': round(first, 2)}


def bench_startup(bundle, height: int, width: int, backend: str = 'auto',
                  device: str = 'auto') -> dict:
    """Cold and warm start-up of ood_node on a cache-free copy of ``bundle`` (seconds)."""
    try:    # lazy: without ROS this is one clear error
        import rclpy  # noqa: F401
        from sensor_msgs.msg import Image  # noqa: F401
    except ImportError as exc:
        raise OodSegError(f'bench --startup needs rclpy and sensor_msgs: {exc}') from exc
    res = {'startup_backend': backend}
    with tempfile.TemporaryDirectory(prefix='ood_startup_') as tmp:
        copy = copy_without_cache(bundle, Path(tmp) / 'bundle')
        for phase in ('cold', 'warm'):
            before = cached_graphs(copy)
            for key, value in _one_start(copy, height, width, backend, device).items():
                res[f'{phase}_{key}'] = value
            res[f'{phase}_exported'] = bool(cached_graphs(copy) - before)
    return res
