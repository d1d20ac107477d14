"""ood-seg fleet-eval on a local Ray cluster (2 CPUs) over small bags written here."""

import json
import os
from pathlib import Path
import sys

import numpy as np
from ood_seg_ros.cli import main as cli_main
from ood_seg_ros.tools.data import bags
from ood_seg_ros.tools.fleet import driver, jobs as J, report
import pytest
from sklearn.metrics import average_precision_score, roc_curve

ray = pytest.importorskip('ray')

BOUND = 0.002
SIZE = (48, 64)
START = 1_700_000_000_000_000_000
SCORE = 'pgn_oh_p0.3'


@pytest.fixture(scope='module')
def ray_cluster():
    """One local Ray cluster with 2 CPUs for the module; shut down at its end."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 << 20,
             log_to_driver=False, logging_level='warning')
    # the crashing task below lives in this test module, which workers cannot import
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def _bundle(path, frames, score=SCORE):
    """Save a tiny random bundle whose heatmap (PGN p = 0.3, normalised on ``frames``) varies."""
    import cv2
    import torch
    from model_helpers import save_tiny_bundle

    from ood_seg_ros.model import load_bundle, save_bundle
    from ood_seg_ros.runtime import make_backend
    save_tiny_bundle(path, (64, 96))
    backend = make_backend('torch', path, ['probs', SCORE], device='cpu')
    vals = np.concatenate([backend.infer(cv2.resize(f, (96, 64)))[SCORE].ravel()
                           for f in frames])
    lo, hi = (float(v) for v in np.percentile(vals, [1, 99]))
    model = load_bundle(path, device='cpu').model
    torch.manual_seed(0)
    save_bundle(path, model, runtime={'heatmap_score': score, 'segment_threshold': 0.6,
                                      'normalisation': {SCORE: [lo, hi]}}, half=False)
    return path


def _pipeline(bundle):
    from ood_seg_ros.pipeline import Pipeline, PipelineSettings
    return Pipeline.from_settings(PipelineSettings(bundle=str(bundle), backend='torch',
                                                   device='cpu'))


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    """
    Bundle A, a worse bundle B, and four bags whose GT follows A's heatmap (with noise).

    GT = A's heatmap above its 80th percentile, 8 % of the labels flipped, a void border:
    A's AP is high but below 1; B scores with an entropy that is flat for a random
    network, so it is worse on every bag.
    """
    root = tmp_path_factory.mktemp('fleet')
    rng = np.random.default_rng(0)
    frames = [[np.clip(rng.normal(128, 60, SIZE + (3,)) + 60 * np.sin(
        np.arange(SIZE[1]) / (3 + b + i))[None, :, None], 0, 255).astype(np.uint8)
        for i in range(3)] for b in range(4)]
    flat = [f for bag in frames for f in bag]
    bundle_a = _bundle(root / 'A', flat)
    bundle_b = _bundle(root / 'B', flat, score='moose_entropy')
    pipe = _pipeline(bundle_a)
    paths = []
    for b, bag_frames in enumerate(frames):
        gts = []
        for f in bag_frames:
            heat = pipe.process(f).heatmap
            gt = (heat > np.percentile(heat, 80)).astype(np.uint8)
            flip = rng.random(SIZE) < 0.08
            gt[flip] = 1 - gt[flip]
            gt[:2] = 255
            gts.append(gt)
        path = root / 'bags' / f'bag{b}'
        bags.write_image_bag(path, [(f'f{i}', f) for i, f in enumerate(bag_frames)], 10.0,
                             gt_masks=gts, start_ns=START + b * 10**10)
        paths.append(path)
    return {'root': root, 'A': bundle_a, 'B': bundle_b, 'bags': paths}


def _cli(fleet, out, *extra, bags_=None):
    args = ['fleet-eval', *[str(b) for b in (bags_ or fleet['bags'])], '--bundle',
            str(fleet['A']), '--out', str(out), '--backend', 'torch', '--device', 'cpu',
            '--track', 'obstacle', '--no-progress', *extra]
    return cli_main(args)


def _exact(fleet, bag_paths):
    """Exact pooled AP / FPR95 of bundle A over the bags, in this process (scikit-learn)."""
    pipe = _pipeline(fleet['A'])
    scores, labels = [], []
    for bag in bag_paths:
        gt = {m.header.stamp_ns: m.image for m in bags.read_image_bag(bag, ['/camera/ood_gt'])}
        for m in bags.read_image_bag(bag, ['/camera/image']):
            valid = gt[m.header.stamp_ns] != 255
            scores.append(pipe.process(m.image).heatmap[valid])
            labels.append(gt[m.header.stamp_ns][valid])
    s, y = np.concatenate(scores).astype(np.float64), np.concatenate(labels)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return average_precision_score(y, s), fpr[int(np.argmax(tpr >= 0.95))]


def test_merged_metrics_equal_pooled_and_rerun_skips(fleet, ray_cluster, tmp_path, capsys):
    out = tmp_path / 'out'
    assert _cli(fleet, out, '--json', '--chunk-frames', '2') == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc['jobs'] == {'done': 8, 'cached': 0, 'failed': 0, 'not run': 0}  # 2 chunks x 4
    ap, fpr95 = _exact(fleet, fleet['bags'])
    pooled = doc['pooled']['A']
    assert pooled['frames'] == 12
    assert 0.5 < ap < 0.99      # informative, not trivial
    assert abs(pooled['ap'] - ap) <= BOUND and abs(pooled['fpr95'] - fpr95) <= BOUND
    assert (out / 'report.md').is_file() and (out / 'pr_curves.png').is_file()
    assert all((out / f['file']).is_file() for f in doc['worst_frames']['A'])
    # rerun: every job is reused, the figures are the same
    assert _cli(fleet, out, '--json', '--chunk-frames', '2') == 0
    again = json.loads(capsys.readouterr().out)
    assert again['jobs'] == {'done': 0, 'cached': 8, 'failed': 0, 'not run': 0}
    assert again['pooled'] == doc['pooled']
    # a changed bag is evaluated again (its content hash changed), the others reused
    gt = [m.image for m in bags.read_image_bag(fleet['bags'][0], ['/camera/ood_gt'])]
    img = [(str(i), m.image) for i, m in
           enumerate(bags.read_image_bag(fleet['bags'][0], ['/camera/image']))]
    changed = tmp_path / 'bag0b'
    bags.write_image_bag(changed, img, 10.0, gt_masks=[1 - np.minimum(g, 1) for g in gt],
                         start_ns=START)
    assert _cli(fleet, out, '--json', '--chunk-frames', '2',
                bags_=[changed] + fleet['bags'][1:]) == 0
    third = json.loads(capsys.readouterr().out)
    assert third['jobs'] == {'done': 2, 'cached': 6, 'failed': 0, 'not run': 0}


def _crashing(job):
    """Run the real task, except that a bag named ``crash*`` ends its worker process."""
    from ood_seg_ros.tools.fleet.task import run_job
    if Path(job.bag).name.startswith('crash'):
        os._exit(1)
    return run_job(job)


def test_corrupt_missing_topic_and_killed_worker_are_reported(fleet, ray_cluster, tmp_path):
    root = tmp_path / 'bags'
    corrupt = root / 'corrupt'
    corrupt.mkdir(parents=True)
    (corrupt / 'metadata.yaml').write_text('rosbag2_bagfile_information: [not, a, bag\n')
    no_image = root / 'no_image'
    with bags.BagWriter(no_image) as w:
        w.add_topic('/camera/ood_gt', bags.IMAGE_TYPE)
        w.write('/camera/ood_gt', START, bags.image_cdr(np.zeros(SIZE, np.uint8), 'mono8',
                                                        START, 'c'))
    crash = root / 'crash'
    crash.symlink_to(fleet['bags'][0].resolve())
    settings = J.Settings(backend='torch', device='cpu', track='obstacle')
    all_bags = [fleet['bags'][1], corrupt, no_image, crash, fleet['bags'][2],
                root / 'missing']
    jobs, bad = J.make_jobs(all_bags, {'A': str(fleet['A'])}, settings)
    assert [b['bag'] for b in bad] == [str(root / 'missing')]
    store = driver.ResultStore(tmp_path / 'out' / 'results')
    outcomes = driver.run_jobs(jobs, store, progress=False, task=_crashing)
    by_bag = {Path(j.bag).name: outcomes[j.key] for j in jobs}
    assert by_bag['bag1']['status'] == by_bag['bag2']['status'] == 'done'
    assert 'not a readable rosbag2 bag' in by_bag['corrupt']['reason']
    assert 'cannot pick the image topic' in by_bag['no_image']['reason']
    assert by_bag['crash']['status'] == 'failed' and 'died' in by_bag['crash']['reason']
    doc = report.write(jobs, outcomes, store, {'A': str(fleet['A'])}, bad, tmp_path / 'out')
    assert doc['bags_failed'] == 4 and doc['bags_paired'] == 2
    assert doc['pooled']['A']['frames'] == 6
    ap, fpr95 = _exact(fleet, [fleet['bags'][1], fleet['bags'][2]])
    assert abs(doc['pooled']['A']['ap'] - ap) <= BOUND
    md = (tmp_path / 'out' / 'report.md').read_text()
    assert md.count('**failed**') == 4 and 'does not exist' in md


def test_ab_table_marks_the_worse_bundle(fleet, ray_cluster, tmp_path, capsys):
    out = tmp_path / 'ab'
    assert _cli(fleet, out, '--bundle', str(fleet['B']), '--json') == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc['delta']['ap'] < -0.1
    assert len(doc['bags']) == 4 and all(r['worse'] for r in doc['bags'])
    deltas = [r['delta']['ap'] for r in doc['bags']]
    assert deltas == sorted(deltas)
    md = (out / 'report.md').read_text()
    assert md.count('**worse**') == 4 and '| B - A |' in md


def test_interrupt_keeps_finished_results(fleet, tmp_path):
    """Ctrl-C after the first bag: its result stays, the report lists the rest as not run."""
    calls = []

    def interrupted_after_one(job):
        from ood_seg_ros.tools.fleet.task import run_job
        if calls:
            raise KeyboardInterrupt
        calls.append(job)
        return run_job(job)

    settings = J.Settings(backend='torch', device='cpu')
    jobs, _ = J.make_jobs(fleet['bags'][:3], {'A': str(fleet['A'])}, settings)
    store = driver.ResultStore(tmp_path / 'results')
    with pytest.raises(KeyboardInterrupt) as err:
        driver.run_jobs(jobs, store, engine='loop', progress=False,
                        task=interrupted_after_one)
    statuses = [err.value.outcomes[j.key]['status'] for j in jobs]
    assert statuses == ['done', 'not run', 'not run'] and store.has(jobs[0].key)
    doc = report.write(jobs, err.value.outcomes, store, {'A': str(fleet['A'])}, [],
                       tmp_path)
    assert doc['jobs']['done'] == 1 and doc['jobs']['not run'] == 2
    assert doc['bags_not_run'] == 2 and doc['bags_failed'] == 0
    assert (tmp_path / 'report.md').read_text().count('not run (interrupted)') == 2


def test_bad_input_is_one_error_line(fleet, tmp_path, capsys):
    assert cli_main(['fleet-eval', str(tmp_path / 'nothing*'), '--out', str(tmp_path / 'o'),
                     '--bundle', str(fleet['A'])]) == 2
    assert 'error: no bag matches' in capsys.readouterr().err
    assert cli_main(['fleet-eval', str(fleet['bags'][0]), '--out', str(tmp_path / 'o'),
                     '--bundle', str(tmp_path)]) == 2
    assert 'has no bundle.json' in capsys.readouterr().err
