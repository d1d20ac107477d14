"""Which PGN maps feed the meta features: train-meta --meta-pgn, runtime.meta_pgn_names."""

import json
import shutil

from dataset_helpers import make_anomaly_set
from model_helpers import save_tiny_bundle
import numpy as np
from ood_seg_ros import cli
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.meta import MetaClassifier
from ood_seg_ros.pipeline import Pipeline
from ood_seg_ros.segments import SegmentFeatureExtractor
from ood_seg_ros.tools.meta_fit import columns_without, parse_meta_pgn, runtime_pgn_names
import pytest

H, W = 64, 128
SHIPPED_PGN = ['pgn_uni_p0.5', 'pgn_oh_p1', 'pgn_uni_p1', 'pgn_uni_p2']   # old bundles


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
    """Save a tiny bundle whose runtime has no meta_pgn_names, like every bundle so far."""
    root = tmp_path_factory.mktemp('meta_pgn')
    b = save_tiny_bundle(root / 'b', (H, W))
    doc = json.loads((b / 'bundle.json').read_text())
    doc['runtime'].update({'segment_threshold': 0.3, 'min_segment_px': 16})
    (b / 'bundle.json').write_text(json.dumps(doc))
    return b


@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp('meta_pgn_sets')
    return [make_anomaly_set(root / f'real_{k}', n=6, h=H, w=W, seed=10 + 7 * k)
            for k in range(2)]


def _pgn(names):
    return sorted(n for n in names if n.startswith('pgn_'))


def test_required_outputs_follow_meta_pgn_names():
    base = {'heatmap_score': 'moose_entropy'}
    assert _pgn(Pipeline.required_outputs(base)) == sorted(SHIPPED_PGN)   # old bundles
    assert _pgn(Pipeline.required_outputs({**base, 'meta_pgn_names': []})) == []
    assert _pgn(Pipeline.required_outputs({**base, 'meta_pgn_names': ['pgn_uni_p1']})) == \
        ['pgn_uni_p1']
    # A PGN heatmap score is still computed without PGN meta features.
    assert _pgn(Pipeline.required_outputs({'heatmap_score': 'pgn_uni_p0.3',
                                           'meta_pgn_names': []})) == ['pgn_uni_p0.3']


def test_features_without_pgn_are_the_columns_without_pgn():
    """Extracting without PGN maps == dropping their columns (the ablation's shortcut)."""
    rng = np.random.default_rng(3)
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 5:25] = 1
    labels[20:38, 30:33] = 2
    labels[22:30, 40:58] = 3
    probs = rng.dirichlet(np.ones(5), (40, 60)).transpose(2, 0, 1).astype(np.float32)
    maps = {n: rng.normal(size=(40, 60)).astype(np.float32)
            for n in SHIPPED_PGN + ['moose_mi', 'moose_entropy']}
    full = SegmentFeatureExtractor(5, pgn_names=SHIPPED_PGN, region=True)
    none = SegmentFeatureExtractor(5, pgn_names=(), region=True)
    idx = columns_without(full.feature_names, SHIPPED_PGN)
    assert [full.feature_names[i] for i in idx] == list(none.feature_names)
    assert len(full.feature_names) - len(idx) == 8 * len(SHIPPED_PGN)
    assert not any(n.startswith('pgn_') for n in none.feature_names)
    region = np.zeros((40, 60), bool)
    region[20:] = True
    a = full.extract(labels, 3, probs, maps, region)
    b = none.extract(labels, 3, probs, {k: maps[k] for k in ('moose_mi', 'moose_entropy')},
                     region)
    np.testing.assert_array_equal(a[:, idx], b)


def test_parse_meta_pgn():
    available = ['moose_entropy'] + SHIPPED_PGN
    assert parse_meta_pgn('none', available) == []
    assert parse_meta_pgn(' NONE ', available) == []
    assert parse_meta_pgn('pgn_uni_p1, pgn_oh_p1', available) == ['pgn_uni_p1', 'pgn_oh_p1']
    for bad in ('moose_entropy', 'pgn_uni_p7', 'pgn_uni_p1,pgn_uni_p1', ',', ''):
        with pytest.raises(OodSegError, match='--meta-pgn'):
            parse_meta_pgn(bad, available)


def _train_meta(b, sets, *extra):
    argv = ['train-meta', '--bundle', str(b), '--folds', '2', '--C', '1', '--json',
            *extra] + [a for s in sets for a in ('--ood-set', str(s))]
    return cli.main(argv)


def test_train_meta_without_pgn_maps(tmp_path, bundle, sets, capsys):
    b = tmp_path / 'b'
    shutil.copytree(bundle, b)
    assert _train_meta(b, sets, '--meta-pgn', 'none') == 0
    report = json.loads(capsys.readouterr().out)
    assert report['meta_pgn'] == []
    meta = json.loads((b / 'meta.json').read_text())
    assert not any(n.startswith('pgn_') for n in meta['feature_names'])
    assert any(n.startswith('moose_mi_') for n in meta['feature_names'])
    assert json.loads((b / 'bundle.json').read_text())['runtime']['meta_pgn_names'] == []
    pipe = Pipeline.from_bundle(b, backend='torch', device='cpu')
    assert _pgn(pipe.backend.output_names) == []
    res = pipe.process(np.random.default_rng(8).integers(0, 255, (H, W, 3), dtype=np.uint8))
    assert all(0.0 <= s.meta_score <= 1.0 for s in res.segments)
    # One PGN map: only it is computed and read.
    assert _train_meta(b, sets, '--meta-pgn', 'pgn_uni_p1') == 0
    capsys.readouterr()
    meta = json.loads((b / 'meta.json').read_text())
    pgn = [n for n in meta['feature_names'] if n.startswith('pgn_')]
    assert pgn and all(n.startswith('pgn_uni_p1_') for n in pgn)
    assert json.loads((b / 'bundle.json').read_text())['runtime']['meta_pgn_names'] == \
        ['pgn_uni_p1']
    assert _pgn(Pipeline.from_bundle(b, backend='torch', device='cpu').backend.output_names) \
        == ['pgn_uni_p1']


def test_train_meta_default_leaves_old_bundles_unchanged(tmp_path, bundle, sets, capsys):
    b = tmp_path / 'b'
    shutil.copytree(bundle, b)
    before = (b / 'bundle.json').read_text()
    assert _train_meta(b, sets) == 0
    assert json.loads(capsys.readouterr().out)['meta_pgn'] == SHIPPED_PGN
    assert (b / 'bundle.json').read_text() == before
    assert _pgn(Pipeline.from_bundle(b, backend='torch', device='cpu').backend.output_names) \
        == sorted(SHIPPED_PGN)


def test_bad_meta_pgn_writes_nothing(tmp_path, bundle, sets, capsys):
    b = tmp_path / 'b'
    shutil.copytree(bundle, b)
    before = (b / 'bundle.json').read_text()
    assert _train_meta(b, sets, '--meta-pgn', 'pgn_uni_p1,entropy') == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error:') and "'entropy'" in err[0]
    assert (b / 'bundle.json').read_text() == before
    assert not (b / 'meta.json').exists()


def test_other_region_meta_keeps_its_pgn_maps(tmp_path, bundle):
    """meta_drivable.json reads pgn_oh_p1: refitting meta.json without PGN keeps it computed."""
    b = tmp_path / 'b'
    shutil.copytree(bundle, b)
    names = ['S', 'pgn_oh_p1_mean', 'pgn_oh_p1_var_bd', 'moose_mi_mean']
    MetaClassifier(names, np.zeros(4), np.ones(4), np.ones(4), 0.0, np.zeros(4), 0.0).save(
        b / 'meta_drivable.json')
    assert runtime_pgn_names(b, [], 'all') == ['pgn_oh_p1']
    assert runtime_pgn_names(b, ['pgn_uni_p1'], 'all') == ['pgn_uni_p1', 'pgn_oh_p1']
    assert runtime_pgn_names(b, [], 'drivable') == []      # the one being replaced
