"""
``ood-seg fleet-eval``: many bags, one or two bundles, on Ray; merged metrics and a report.

Bags: bag folders, folders of bags, globs, ``--bag-list`` files. ``--bundle`` once, or
twice for an A/B comparison on the same frames. Without ``--address`` a local Ray is
started here (``--num-cpus`` workers); ``--address auto`` or ``HOST:6379`` joins a
cluster. One task per bag (``--chunk-frames N``: per N frames of a long bag), each
asking for ``--cpus-per-task`` CPUs and ``--gpus-per-task`` GPUs. ``--engine loop`` runs
the same jobs in this process without Ray. Results go to ``--out`` as they arrive
(``results/``), the report at the end (``fleet.json``, ``report.md``, ``pr_curves.png``,
``worst_*.png``); a rerun with the same ``--out`` reuses the finished bags. Exit status
0 when every bag was evaluated, 1 when some failed (they are in the report), 2 on bad
input, 130 on Ctrl-C (the report of what finished is written).
"""

import json
from pathlib import Path
import time

from .base import add_json_option, Command
from ...errors import OodSegError, Terminated


class FleetEvalCommand(Command):
    """Evaluate many bags on Ray (local or a cluster), one or two bundles (A/B); merged report."""

    def add_arguments(self, parser) -> None:
        """Add the fleet-eval options to ``parser``."""
        parser.add_argument('bags', nargs='*', help='bag folders, folders of bags or globs')
        parser.add_argument('--bag-list', action='append', default=[],
                            help='file with one bag path per line (repeatable)')
        parser.add_argument('--bundle', action='append', default=[],
                            help='model bundle folder; twice for A/B (default: the package '
                                 'default bundle)')
        parser.add_argument('--out', required=True, help='output folder (results are reused)')
        parser.add_argument('--engine', default='ray', choices=('ray', 'loop'),
                            help='ray (default) or loop: the same jobs in this process')
        parser.add_argument('--address', default=None,
                            help='Ray cluster to join (e.g. auto, HOST:6379); default: start '
                                 'a local Ray')
        parser.add_argument('--num-cpus', type=int, default=None,
                            help='local Ray: CPUs to use (default: all)')
        parser.add_argument('--cpus-per-task', type=float, default=1.0,
                            help='CPUs each bag task asks for (default: 1)')
        parser.add_argument('--gpus-per-task', type=float, default=None,
                            help='GPUs each bag task asks for (default: 1 with --device '
                                 'cuda, else 0)')
        parser.add_argument('--object-store-mb', type=int, default=None,
                            help="local Ray object store size in MiB (default: Ray's)")
        parser.add_argument('--chunk-frames', type=int, default=0,
                            help='split bags longer than N frames into tasks of N (default: '
                                 'one task per bag)')
        parser.add_argument('--backend', default='auto',
                            choices=('auto', 'torch', 'onnxruntime', 'tensorrt'))
        parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
        parser.add_argument('--score', default=None, help='heatmap score (default: bundle)')
        parser.add_argument('--threshold', type=float, default=None,
                            help='segment threshold (default: bundle)')
        parser.add_argument('--component-threshold', type=float, default=None,
                            help='heatmap threshold of the component metrics (default: the '
                                 'segment threshold; fixed so that bags merge)')
        parser.add_argument('--image-topic', default=None)
        parser.add_argument('--gt-topic', default='/camera/ood_gt')
        parser.add_argument('--track', default='anomaly', choices=('anomaly', 'obstacle'))
        parser.add_argument('--margin', type=float, default=0.01,
                            help='A/B: a bag is worse when AP drops or FPR95 rises by more '
                                 '(default: 0.01)')
        parser.add_argument('--worst', type=int, default=6,
                            help='worst frames shown per bundle (default: 6)')
        parser.add_argument('--no-progress', action='store_true', help='no progress bar')
        add_json_option(parser, 'fleet.json')

    def main(self, args) -> int:
        """Run the fleet evaluation and write the report; return the exit status."""
        from ..fleet import driver, jobs as J, report
        from ...model.bundle import default_bundle_path
        bundles = [Path(b) for b in args.bundle] or [default_bundle_path()]
        if None in bundles:
            raise OodSegError('no bundle given and no default bundle installed (--bundle DIR)')
        if len(bundles) > 2:
            raise OodSegError(f'--bundle: one or two bundles (A/B), got {len(bundles)}')
        for b in bundles:
            if not (b / 'bundle.json').is_file():
                raise OodSegError(f'bundle {b} has no bundle.json')
        for name in ('chunk_frames', 'worst'):
            if getattr(args, name) < 0:
                raise OodSegError(f'--{name.replace("_", "-")} must be >= 0')
        if not args.cpus_per_task > 0:
            raise OodSegError('--cpus-per-task must be > 0')
        gpus = args.gpus_per_task
        if gpus is None:
            gpus = 1.0 if args.device == 'cuda' else 0.0
        labels = dict(zip('AB', (str(b.resolve()) for b in bundles)))
        settings = J.Settings(args.backend, args.device, args.score, args.threshold,
                              args.component_threshold, args.image_topic, args.gt_topic,
                              args.track, args.worst)
        bags = J.expand_bags(args.bags, args.bag_list)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise OodSegError(f'output {out} exists and is not a folder')
        store = driver.ResultStore(out / 'results')
        jobs, bad_bags = J.make_jobs(bags, labels, settings, args.chunk_frames)
        t0 = time.perf_counter()
        interrupted = None
        try:
            outcomes = driver.run_jobs(
                jobs, store, engine=args.engine, address=args.address,
                num_cpus=args.num_cpus, cpus_per_task=args.cpus_per_task,
                gpus_per_task=gpus, object_store_mb=args.object_store_mb,
                progress=not args.no_progress)
        except (KeyboardInterrupt, Terminated) as exc:
            outcomes, interrupted = getattr(exc, 'outcomes', {}), exc
        extra = {'interrupted': interrupted is not None, 'wall_s': time.perf_counter() - t0,
                 'engine': args.engine, 'address': args.address,
                 'num_cpus': args.num_cpus, 'cpus_per_task': args.cpus_per_task,
                 'gpus_per_task': gpus, 'settings': settings.__dict__,
                 'task_wall_s': _task_seconds(jobs, outcomes, store)}
        doc = report.write(jobs, outcomes, store, labels, bad_bags, out, args.margin,
                           args.worst, extra)
        if interrupted is not None:
            print(f'interrupted: the report of the finished bags is in {out}')
            raise interrupted
        if args.json:
            print(json.dumps(doc, indent=1))
        else:
            _print_summary(doc, out)
        return 1 if doc['bags_failed'] else 0


def _task_seconds(jobs, outcomes, store) -> float:
    """Return the summed wall time of the tasks run now (their own clocks)."""
    total = 0.0
    for job in jobs:
        if outcomes.get(job.key, {}).get('status') == 'done':
            total += json.loads((store.folder / f'{job.key}.json').read_text())['wall_s']
    return total


def _print_summary(doc: dict, out: Path) -> None:
    """Print the pooled figures, the failures and where the report is."""
    for lb, row in doc['pooled'].items():
        if row:
            print(f'{lb}: AP {row["ap"]}, FPR95 {row["fpr95"]}, F1 {row["f1_mean"]}, '
                  f'{row["detections_per_frame"]} detections/frame over {row["frames"]} frames')
    for f in doc['failed']:
        print(f'failed: {f["bag"]}: {f["reason"]}')
    print(f'{doc["bags_total"]} bags, {doc["bags_failed"]} failed; wrote {out / "report.md"} '
          f'and {out / "fleet.json"}')
