"""
fleet-eval figures as one JSON object: merge error, 1 vs 2 workers, Ray's per-task cost.

``--mode merge``: run the bags through fleet-eval on a local Ray (``--chunk-frames``
splits them, so summaries of several tasks are merged) and compare the pooled AP / FPR95
with the exact ones of scikit-learn on the same heatmaps, computed here in one process.
``--mode speed``: the same jobs with ``--engine loop`` (this process), Ray with 1 CPU
and Ray with 2 CPUs (wall times include starting Ray, reported apart), then ``--noop``
empty tasks through Ray against a plain loop (the per-task cost of Ray itself).
Run from the repository root, e.g.
``.venv/bin/python tools/bench_fleet.py --mode merge --bundle models/camvid_lite0
test/data/sample.bag --chunk-frames 5``.
"""

import argparse
import json
import os
from pathlib import Path
import tempfile
import time

import numpy as np
from ood_seg_ros.pipeline import Pipeline, PipelineSettings
from ood_seg_ros.tools.bagtools.offline import run_offline
from ood_seg_ros.tools.bagtools.report import first_per_stamp
from ood_seg_ros.tools.fleet import driver, jobs as J, report
from sklearn.metrics import average_precision_score, roc_curve


def _jobs(args):
    settings = J.Settings(backend=args.backend, device='cpu')
    bags = J.expand_bags(args.bags)
    jobs, bad = J.make_jobs(bags, {'A': str(Path(args.bundle).resolve())}, settings,
                            args.chunk_frames)
    if bad:
        raise SystemExit(f'bad bags: {bad}')
    return bags, jobs


def _fleet(jobs, engine, num_cpus, folder):
    store = driver.ResultStore(folder)
    t0 = time.perf_counter()
    outcomes = driver.run_jobs(jobs, store, engine=engine, num_cpus=num_cpus,
                               object_store_mb=200, progress=False)
    wall = time.perf_counter() - t0
    doc, _, _ = report.build(jobs, outcomes, store, {'A': 'A'}, [])
    tasks = sum(json.loads((store.folder / f'{j.key}.json').read_text())['wall_s']
                for j in jobs)
    return doc, wall, tasks


def merge(args):
    """Compare the merged (fleet-eval, Ray) with the exact pooled AP and FPR95."""
    bags, jobs = _jobs(args)
    with tempfile.TemporaryDirectory() as tmp:
        doc, wall, _ = _fleet(jobs, 'ray', args.num_cpus, Path(tmp))
    pipe = Pipeline.from_settings(PipelineSettings(bundle=args.bundle, backend=args.backend,
                                                   device='cpu'))
    scores, labels = [], []
    for bag in bags:    # the offline engine in this process, every pixel kept
        gt = first_per_stamp(bag, '/camera/ood_gt')

        def keep(msg, res, _seconds, gt=gt):
            label = gt[msg.header.stamp_ns]
            scores.append(res.heatmap[label != 255])
            labels.append(label[label != 255])
        run_offline(pipe, bag, '/camera/image', None, on_frame=keep)
    s, y = np.concatenate(scores).astype(np.float64), np.concatenate(labels)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    exact = {'ap': average_precision_score(y, s), 'fpr95': float(fpr[np.argmax(tpr >= 0.95)])}
    pooled = doc['pooled']['A']
    return {'bags': [str(b) for b in bags], 'tasks': len(jobs), 'frames': pooled['frames'],
            'pixels': int(y.size), 'merged': {k: pooled[k] for k in ('ap', 'fpr95')},
            'exact': exact, 'abs_error': {k: abs(pooled[k] - exact[k]) for k in exact},
            'fleet_wall_s': wall}


def _noop(x):
    return x


def speed(args):
    """Loop vs Ray 1 CPU vs Ray 2 CPUs on the jobs; no-op tasks through Ray vs a loop."""
    import ray
    _, jobs = _jobs(args)
    out = {'tasks': len(jobs), 'frames': sum(j.frames for j in jobs)}
    kw = {'include_dashboard': False, 'object_store_memory': 200 << 20,
          'log_to_driver': False, 'logging_level': 'warning'}
    for name, cpus in (('loop', None), ('ray_1cpu', 1), ('ray_2cpu', 2)):
        entry = {'load': os.getloadavg()[0]}
        if cpus:    # started here, so that its start is timed apart
            t0 = time.perf_counter()
            ray.init(num_cpus=cpus, **kw)
            entry['ray_init_s'] = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            _, entry['wall_s'], entry['task_s'] = _fleet(jobs, 'ray' if cpus else 'loop',
                                                         cpus, Path(tmp))
        if cpus:
            ray.shutdown()
        out[name] = entry
    ray.init(num_cpus=1, **kw)
    remote = ray.remote(num_cpus=1)(_noop)
    ray.get(remote.remote(0))     # the worker process is started once
    t0 = time.perf_counter()
    ray.get([remote.remote(i) for i in range(args.noop)])
    ray_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.noop):
        _noop(i)
    loop_s = time.perf_counter() - t0
    ray.shutdown()
    out['noop'] = {'tasks': args.noop, 'ray_ms_per_task': ray_s / args.noop * 1e3,
                   'loop_ms_per_task': loop_s / args.noop * 1e3}
    out['ratio_2cpu_over_1cpu'] = out['ray_2cpu']['wall_s'] / out['ray_1cpu']['wall_s']
    out['ray_1cpu_minus_loop_per_task_s'] = ((out['ray_1cpu']['wall_s']
                                              - out['loop']['wall_s']) / len(jobs))
    return out


def main():
    """Parse the arguments, run one mode, print the JSON object."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument('bags', nargs='+')
    p.add_argument('--bundle', default='models/camvid_lite0')
    p.add_argument('--backend', default='onnxruntime')
    p.add_argument('--mode', choices=('merge', 'speed'), required=True)
    p.add_argument('--chunk-frames', type=int, default=0)
    p.add_argument('--num-cpus', type=int, default=2)
    p.add_argument('--noop', type=int, default=200)
    args = p.parse_args()
    res = {'load_start': os.getloadavg()[0]}
    res.update(merge(args) if args.mode == 'merge' else speed(args))
    res['load_end'] = os.getloadavg()[0]
    print(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
