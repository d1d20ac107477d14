"""
bundle.json and meta.json are validated against declared schemas at load time.

Each field kind gets a bad value; the error is one line naming every bad field, and the
CLI tools (export, bench, eval) exit 2 with it instead of a traceback.
"""

import copy
import json
import shutil
import subprocess
import sys

from ood_seg_ros.errors import OodSegError
from ood_seg_ros.meta import MetaClassifier
from ood_seg_ros.model.bundle import read_bundle_json
from ood_seg_ros.schema import validate_bundle, validate_meta
import pytest
from repo_paths import ROOT

DEFAULT = ROOT / 'models' / 'camvid_lite0'
GOOD = json.loads((DEFAULT / 'bundle.json').read_text())
GOOD_META = json.loads((DEFAULT / 'meta.json').read_text())


def _with(doc, path, value):
    doc = copy.deepcopy(doc)
    *parents, last = path
    node = doc
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


BAD_BUNDLE = [
    (('config', 'input_size'), [360, 480, 3], 'config.input_size: List should have at most 2'),
    (('config', 'input_size'), 360, 'config.input_size: expected a list, got int 360'),
    (('config', 'input_size'), [360, '480'], 'config.input_size.1: expected an integer'),
    (('config',), KeyError, 'config: required field is missing'),
    (('config',), [1, 2], 'config: Input should be a valid dictionary'),
    (('config', 'probe_depth'), '3', "config.probe_depth: expected an integer, got str '3'"),
    (('config', 'separable'), 'yes', 'config.separable: expected true or false'),
    (('config', 'class_names'), ['Sky'], 'config.class_names: List should have at least 2'),
    (('config', 'mean'), 0.5, 'config.mean: expected a list'),
    (('config', 'no_such_key'), 1, 'config.no_such_key: unknown key'),
    (('runtime',), 'x', 'runtime: Input should be a valid dictionary'),
    (('runtime', 'normalisation'), 'abc', 'runtime.normalisation: expected an object'),
    (('runtime', 'normalisation', 'msp'), [0.0], 'runtime.normalisation.msp: List should'),
    (('runtime', 'normalisation', 'nope'), [0, 1], "unknown score in normalisation 'nope'"),
    (('runtime', 'min_segment_px'), '64', 'runtime.min_segment_px: expected an integer'),
    (('runtime', 'segment_threshold'), 'abc', 'runtime.segment_threshold: expected a number'),
    (('runtime', 'segment_threshold'), 1.5, 'runtime.segment_threshold: Input should be less'),
    (('runtime', 'heatmap_score'), 'nope', 'runtime.heatmap_score: unknown heatmap score'),
    (('runtime', 'sizes'), {'480x960': {'segment_threshold': 'a'}},
     'runtime.sizes.480x960.segment_threshold: expected a number'),
    (('runtime', 'sizes'), {'big': {}}, 'runtime.sizes.big.[key]: String should match'),
    (('runtime', 'score_options'), [], 'runtime.score_options: expected an object'),
    (('info',), 'x', 'info: Input should be a valid dictionary'),
]


@pytest.mark.parametrize('path, value, message', BAD_BUNDLE,
                         ids=['.'.join(p) + f'={v!r}'[:20] for p, v, _ in BAD_BUNDLE])
def test_bad_bundle_field_is_named(path, value, message):
    with pytest.raises(OodSegError) as err:
        validate_bundle(_with(GOOD, path, value), 'b/bundle.json')
    text = str(err.value)
    assert text.startswith('b/bundle.json: 1 bad field: ') and '\n' not in text
    assert message.replace('Input should be a valid dictionary', 'expected an object') in \
        text or message in text, text


def test_every_bad_field_is_reported_at_once():
    doc = _with(_with(_with(GOOD, ('config', 'probe_depth'), '3'),
                      ('runtime', 'normalisation'), 'abc'), ('runtime', 'min_segment_px'), '6')
    with pytest.raises(OodSegError, match='3 bad fields') as err:
        validate_bundle(doc, 'bundle.json')
    for field in ('config.probe_depth', 'runtime.normalisation', 'runtime.min_segment_px'):
        assert field in str(err.value)


def test_fields_of_other_work_are_accepted():
    """Keys the integrated issue-9 work adds: sml_stats, sizes, score_options, info."""
    doc = copy.deepcopy(GOOD)
    doc['config']['sml_stats'] = None
    doc['runtime']['sizes'] = {'480x960': {'normalisation': {'msp': [0, 1]},
                                           'segment_threshold': 0.4}}
    doc['runtime']['score_options'] = {'msp': {'t': 1}}
    doc['runtime']['some_future_key'] = [1, 2]
    doc['info']['trained_splits'] = {'base': ['train', 'val']}
    doc['extra_top_level'] = 1
    assert validate_bundle(doc, 'b') is doc
    doc['config']['sml_stats'] = {'mean': [1.0]}
    validate_bundle(doc, 'b')


def test_score_names_come_from_all_scores(monkeypatch):
    from ood_seg_ros import scores
    doc = _with(GOOD, ('runtime', 'heatmap_score'), 'new_score')
    with pytest.raises(OodSegError):
        validate_bundle(doc, 'b')
    monkeypatch.setattr(scores, 'ALL_SCORES', tuple(scores.ALL_SCORES) + ('new_score',))
    validate_bundle(doc, 'b')


def test_read_bundle_json_validates(tmp_path):
    b = tmp_path / 'b'
    b.mkdir()
    (b / 'bundle.json').write_text(json.dumps(_with(GOOD, ('config', 'input_size'), 7)))
    with pytest.raises(OodSegError, match='config.input_size: expected a list'):
        read_bundle_json(b)
    (b / 'bundle.json').write_text('[1, 2]')
    with pytest.raises(OodSegError, match='expected a JSON object at the top level'):
        read_bundle_json(b)


BAD_META = [
    ('threshold', 'x', 'threshold: expected a number'),
    ('threshold', 2.0, 'threshold: Input should be less than or equal to 1'),
    ('coef', 'abc', 'coef: expected a list'),
    ('coef', [0.1, 'a'], 'coef.1: expected a number'),
    ('feature_names', [1], 'feature_names.0: expected a string'),
    ('intercept', None, 'intercept: expected a number'),
    ('mean', KeyError, 'mean: required field is missing'),
    ('extra', 1, 'extra: unknown key'),
    ('info', [], 'info: expected an object'),
]


@pytest.mark.parametrize('key, value, message', BAD_META, ids=[k for k, _, _ in BAD_META])
def test_bad_meta_field_is_named(key, value, message, tmp_path):
    validate_meta(GOOD_META, 'meta.json')
    path = tmp_path / 'meta.json'
    path.write_text(json.dumps(_with(GOOD_META, (key,), value)))
    with pytest.raises(OodSegError) as err:
        MetaClassifier.load(path)
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


@pytest.mark.parametrize('command', [['export'], ['bench', '--runs', '1', '--warmup', '0'],
                                     ['eval', '--limit', '1', '--camvid',
                                      str(ROOT.parent / 'shared' / 'data' / 'camvid')]])
def test_cli_tools_give_one_line_instead_of_a_traceback(command, tmp_path):
    b = tmp_path / 'b'
    shutil.copytree(DEFAULT, b, ignore=shutil.ignore_patterns('derived'))
    doc = _with(_with(GOOD, ('config', 'input_size'), [360, 480, 3]),
                ('runtime', 'normalisation'), 'abc')
    (b / 'bundle.json').write_text(json.dumps(doc))
    args = [sys.executable, '-m', 'ood_seg_ros.cli', command[0], '--bundle', str(b)]
    proc = subprocess.run(args + command[1:], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    assert 'config.input_size' in proc.stderr and 'runtime.normalisation' in proc.stderr
