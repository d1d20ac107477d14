"""
Pipeline timing: post-processing, meta classification, end to end, size growth, peer.

Medians over ``runs`` timed runs after ``warmup`` runs, in one process.
"""

import time

import numpy as np

from .frames import sample_frame
from .model import interleaved, median_ms


def build_pipeline(bundle_path, backend, device='cpu', fp16=False, threads=0,
                   cuda_graphs=False, compile_scores=False, input_size=None, **precision):
    """
    Pipeline of the bundle as the node builds it: the bundle's usable heatmap score.

    ``input_size`` (H, W) runs the network at that size (e.g. the frame's) instead of the
    bundle's; ``threads`` 0 keeps the backend's default; ``precision``: backend keywords
    (``int8``, ``make_int8``).
    """
    from ...errors import OodSegError
    from ...model.bundle import read_bundle_json
    from ...pipeline import Pipeline, runtime_for_size, usable_score
    if bundle_path is None:
        raise OodSegError('post-processing and end-to-end benchmarks need a bundle')
    opts = {'cuda_graphs': True} if cuda_graphs else {}
    if compile_scores:
        opts['compile_scores'] = True
    if threads:
        opts['threads'] = threads
    opts.update(precision)
    doc = read_bundle_json(bundle_path)
    size = doc['config']['input_size']
    if input_size is not None:
        opts['input_size'] = size = tuple(input_size)
    score = usable_score(runtime_for_size(doc.get('runtime', {}), size)[0])
    return Pipeline.from_bundle(bundle_path, backend=backend, device=device, fp16=fp16,
                                score=score, **opts)


def compare_with_peer(path, bundle_path, pipeline, frame_size, runs, warmup,
                      threads=0, **precision) -> dict:
    """
    ``--compare-onnx``: the peer vs our network (node outputs, ONNX Runtime) and frame.

    Our whole frame is ``pipeline.process`` on a camera-like frame of ``frame_size``;
    the peer and our network run at the pipeline's input size. Our network is the
    pipeline's own ONNX Runtime graph (its precision) when it has one; ``plain``, our
    segmentation-only graph in that precision, runs in the same rotation
    (``ratio_network_vs_plain``: the OoD overhead).
    """
    from .model import compare_onnx, ort_backends, ort_runner
    h, w = pipeline.input_size
    be = ort_backends(bundle_path, h, w, threads, **precision)
    net = pipeline.backend if getattr(pipeline.backend, 'name', '') == 'onnxruntime' \
        else be['node']
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    frame = sample_frame(*frame_size, np.random.default_rng(0))
    ours = {'network': ort_runner(net, x), 'plain': ort_runner(be['plain'], x),
            'frame': lambda: pipeline.process(frame)}
    res = compare_onnx(path, ours, h, w, runs, warmup, threads,
                       pairs=(('network', 'plain'),))
    res['ours_precision'] = net.precision
    return res


def synthetic_outputs(height, width, n_classes, n_blobs, seed=0):
    """Realistic-shaped network outputs at decoder resolution with ``n_blobs`` hot blobs."""
    from ...scores import ALL_SCORES
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


def bench_postprocess(pipeline, height, width, n_blobs, runs, warmup) -> dict:
    """Median post-processing time on synthetic outputs at a (height, width) frame."""
    ih, iw = pipeline.input_size
    out = synthetic_outputs(ih, iw, len(pipeline.class_names), n_blobs)
    # Outputs of a network run at the pipeline's input size, post-processed for a frame
    # of (height, width): what the node pays per frame. The blob map is put through the
    # inverse of the heatmap normalisation so its blobs cross the segment threshold.
    out[pipeline.score_name] = pipeline.norm.invert(out[pipeline.score_name])
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
    return {'postprocess_ms': median_ms(samples), 'postprocess_segments': n_seg,
            'postprocess_stages_ms': {k: median_ms(v) for k, v in stages.items()}}


def segment_grid(shape, n):
    """
    (labels int32, n) with ``n`` square segments on a regular grid of a (h, w) map.

    The squares are as large as the grid allows with a one-pixel gap (8-connected
    components stay apart); raises ValueError when n do not fit.
    """
    h, w = shape
    side = 1
    while (h // (side + 2)) * (w // (side + 2)) >= n:
        side += 1
    cell = side + 1
    rows, cols = h // cell, w // cell
    if rows * cols < n:
        raise ValueError(f'{n} segments do not fit a {h}x{w} map')
    labels = np.zeros((h, w), np.int32)
    for k in range(n):
        r, c = divmod(k, cols)
        labels[r * cell:r * cell + side, c * cell:c * cell + side] = k + 1
    return labels, n


def bench_meta(pipeline, n_segments, runs, warmup, frame_size=None) -> dict:
    """
    Median time of meta classification + segment records for ``n_segments`` segments.

    Segment features are computed once from synthetic outputs on a grid of segments at
    decoder resolution; the timed part is :meth:`Pipeline.classify_segments`.
    """
    ih, iw = pipeline.input_size
    out = synthetic_outputs(ih, iw, len(pipeline.class_names), 0)
    low = out[pipeline.score_name]
    labels, n = segment_grid(low.shape, n_segments)
    feats = pipeline.extractor.extract(labels, n, out['probs'],
                                       {k: out[k] for k in pipeline.extractor.map_names})
    size = frame_size or (ih, iw)
    ms = interleaved({'meta': lambda: pipeline.classify_segments(labels, n, low, feats,
                                                                 size)}, runs, warmup)
    return {f'meta_{n_segments}_segments_ms': ms['meta']}


def bench_end_to_end(pipeline, height, width, runs, warmup) -> dict:
    """Median frame -> FrameResult time through the pipeline's backend."""
    frame = sample_frame(height, width, np.random.default_rng(0))
    samples, stages = [], {}
    for i in range(warmup + runs):
        t = time.perf_counter()
        res = pipeline.process(frame)
        dt = time.perf_counter() - t
        if i >= warmup:
            samples.append(dt)
            for k, v in res.timings.items():
                stages.setdefault(k, []).append(v / 1e3)
    e2e = median_ms(samples)
    return {'end_to_end_ms': e2e, 'fps': round(1000.0 / e2e, 2),
            'stages_ms': {k: median_ms(v) for k, v in stages.items()},
            **{f'backend_{k}': v for k, v in pipeline.backend.describe().items()}}


def bench_growth(bundle_path, sizes, runs, warmup, backend='torch', **options) -> dict:
    """
    Network (node outputs) time at each input size (H, W); cost per pixel vs the first.

    ``growth[i]`` = (ms_i / ms_0) / (pixels_i / pixels_0): 1.0 is linear growth. One
    backend per size, all built first and then run interleaved, so that load changes
    during the run do not show up as growth.
    """
    from ...runtime import make_backend
    from .model import node_outputs
    fns = {}
    for h, w in sizes:
        be = make_backend(backend, bundle_path, node_outputs(bundle_path, (h, w)),
                          device='cpu', input_size=(h, w), **options)
        img = sample_frame(h, w, np.random.default_rng(0))
        fns[f'{h}x{w}'] = lambda b=be, x=img: b.infer(x)
    ms = interleaved(fns, runs, warmup)
    rows = [{'size': k, 'ms': ms[k], 'pixels': h * w} for k, (h, w) in zip(fns, sizes)]
    for r in rows:
        r['growth'] = round((r['ms'] / rows[0]['ms']) / (r['pixels'] / rows[0]['pixels']), 3)
    return {'growth_backend': backend, 'growth': rows}


def bench_obstacle(bundle_path, height, width, runs, warmup, backend='torch',
                   band_width=0, threads=0, **int8) -> dict:
    """
    ``--obstacle``: end-to-end cost of each obstacle-mode option on (height, width) frames.

    Interleaved in one process: the plain pipeline, the drivable prior, prior + road band
    (``band_width``: at most that wide, 0 the frame's own width), flip averaging (with the
    bundle's region), the prior with small-object contrast (gain 1), and the whole frame at
    the band's resolution (what the band saves); ratios to the plain one. ``int8`` (the
    OnnxRuntimeBackend keywords of ``--precision int8``) adds the drivable prior and the
    prior with flip averaging on the int8 graph (ONNX Runtime), beside the others.
    """
    from ...model.config import size_key
    from ...obstacle import band_input_size, ObstacleSettings
    from ...pipeline import Pipeline
    rows = ObstacleSettings().band_rows
    bh, bw = band_input_size((height, width), rows, band_width)
    scale = bw / width
    whole = (int(np.ceil(height * scale / 16) * 16), bw)
    pipes = {'plain': {'region': 'all'}, 'drivable': {'region': 'drivable'},
             'drivable_band': {'region': 'drivable', 'band': True, 'band_width': band_width},
             'flip': {'flip': True},
             'drivable_contrast': {'region': 'drivable', 'contrast': 1.0},
             'whole_frame_at_band_resolution': {'input_size': whole}}
    backends = dict.fromkeys(pipes, backend)
    if int8:
        for name, kw in (('int8_drivable', {'region': 'drivable'}),
                         ('int8_drivable_flip', {'region': 'drivable', 'flip': True})):
            pipes[name], backends[name] = dict(kw, **int8), 'onnxruntime'

    def thread_opts(name):      # the backends that take a thread count
        use = threads and backends[name] in ('torch', 'onnxruntime')
        return {'threads': threads} if use else {}

    built = {k: Pipeline.from_bundle(bundle_path, backend=backends[k], **kw, **thread_opts(k))
             for k, kw in pipes.items()}
    frame = sample_frame(height, width, np.random.default_rng(0))
    times = interleaved({k: (lambda p=p: p.process(frame)) for k, p in built.items()},
                        runs, warmup)
    plain = times['plain']
    return {'obstacle_ms': times,
            'obstacle_precision': {k: p.backend.describe().get('precision', 'fp32')
                                   for k, p in built.items()},
            'obstacle_ratio': {k: v / plain for k, v in times.items()},
            'obstacle_band_input': size_key((bh, bw)), 'obstacle_band_rows': list(rows),
            'obstacle_whole_frame_input': size_key(whole)}
