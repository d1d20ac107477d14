"""
Dataset kinds (issue 19), loaded through the registry and the CLI.

Loading and id mapping against hand-written expectations, every bad-dataset case through
the CLI (one line, exit 2, nothing written), the registry, the protocol guard per
dataset, and no CamVid constant outside the camvid kind.
"""

import json
from pathlib import Path
import re

import cv2
import dataset_helpers as dh
import numpy as np
from ood_seg_ros import cli
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools.data import camvid, datasets
from ood_seg_ros.tools.data.cityscapes import Cityscapes
from ood_seg_ros.tools.data.folder import FolderDataset
from ood_seg_ros.tools.protocol import check_held_out, trained_data
import pytest
from repo_paths import ROOT

# Cityscapes label ids of the helper's scenes -> train ids, written out by hand from the
# official table (cityscapesScripts labels.py): road 0, sidewalk 1, building 2, sky 10,
# car 13; unlabeled (0) and parking (9) are not evaluated: 255.
CITY_EXPECTED = {7: 0, 8: 1, 11: 2, 23: 10, 26: 13, 0: 255, 9: 255}


@pytest.fixture
def city(tmp_path):
    root = tmp_path / 'cityscapes'
    return root, dh.make_cityscapes(root, {'train': 3, 'val': 2})


def test_cityscapes_label_ids_map_to_train_ids(city):
    root, frames = city
    ds = datasets.open_dataset(f'cityscapes:{root}')
    assert isinstance(ds, Cityscapes) and ds.splits() == ['train', 'val']
    assert len(ds.classes.names) == 19 and ds.classes.names[13] == 'car'
    assert ds.classes.palette[0] == (128, 64, 128)
    images, labels, names = ds.load_split(['train'])
    assert names == sorted(n for n, _, _ in frames['train'])
    for (name, rgb, ids) in frames['train']:
        i = names.index(name)
        expected = np.vectorize(CITY_EXPECTED.get)(ids).astype(np.uint8)
        np.testing.assert_array_equal(labels[i], expected)
        np.testing.assert_array_equal(images[i], rgb)      # PNG: lossless
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 10, 13, 255}


def test_cityscapes_train_ids_are_read_as_they_are(city):
    root, frames = city
    name, _, ids = frames['val'][0]
    train_ids = np.vectorize(CITY_EXPECTED.get)(ids).astype(np.uint8)
    folder = root / 'gtFine' / 'val' / name.split('_')[0]
    dh.write_png(folder / f'{name}_gtFine_labelTrainIds.png', train_ids)
    ds = Cityscapes(root)
    pairs = {ds.frame_name(i): lab for i, lab in ds.list_pairs('val')}
    assert pairs[name].name.endswith('_labelTrainIds.png')
    np.testing.assert_array_equal(ds.load_label(pairs[name]), train_ids)
    dh.write_png(folder / f'{name}_gtFine_labelTrainIds.png', np.full_like(ids, 19))
    with pytest.raises(OodSegError, match=r'values \[19\] outside the class list'):
        ds.load_label(pairs[name])


def test_folder_dataset_id_map_and_classes(tmp_path):
    root = tmp_path / 'mine'
    frames = dh.make_folder(root)
    ds = datasets.open_dataset(f'folder:{root}')
    assert isinstance(ds, FolderDataset) and ds.splits() == ['train', 'val']
    assert ds.classes.names == ('road', 'sidewalk', 'obstacle-free', 'sky')
    assert ds.classes.palette[2] == (10, 200, 10) and ds.classes.ignore_index == 255
    _, labels, names = ds.load_split('train')
    lut = {0: 255, 10: 0, 20: 1, 30: 2, 40: 3}     # classes.yaml id_map, ignore_index 0
    for name, _, raw in frames['train']:
        expected = np.vectorize(lut.get)(raw).astype(np.uint8)
        np.testing.assert_array_equal(labels[names.index(name)], expected)
    assert ds.classes.to_config() == {
        'class_names': ['road', 'sidewalk', 'obstacle-free', 'sky'], 'ignore_index': 255,
        'palette': [[128, 64, 128], [244, 35, 232], [10, 200, 10], [70, 130, 180]]}


def test_folder_without_id_map_reads_indices(tmp_path):
    root = tmp_path / 'plain'
    dh.make_folder(root, {'train': 1}, classes='names: [a, b, c]\n')
    dh.write_png(root / 'labels' / 'train' / 'f000.png',
                 np.array([[0, 1, 2, 255]] * 4, np.uint8))
    dh.write_png(root / 'images' / 'train' / 'f000.png', np.zeros((4, 4, 3), np.uint8))
    ds = datasets.open_dataset(f'folder:{root}')
    np.testing.assert_array_equal(ds.load_split('train')[1][0], [[0, 1, 2, 255]] * 4)
    assert ds.classes.palette is None


def test_registry_and_specs(tmp_path):
    assert set(datasets.KINDS) == {'camvid', 'cityscapes', 'folder'}
    assert datasets.parse_spec('cityscapes:/a:b') == ('cityscapes', '/a:b')
    for bad, msg in (('nokind', 'KIND:PATH'), ('kitti:/x', "unknown dataset kind 'kitti'"),
                     ('camvid:', 'KIND:PATH')):
        with pytest.raises(OodSegError, match=msg):
            datasets.parse_spec(bad)
    # a plain path is the default kind (callers from before dataset kinds)
    assert isinstance(datasets.open_dataset(tmp_path), camvid.CamVid)
    assert datasets.default_classes().names == camvid.CAMVID_CLASSES


def test_coco_exclusion_follows_the_dataset_classes(city, tmp_path):
    from ood_seg_ros.tools.data.coco_objects import COCO_CLASSES
    root, _ = city
    names = {COCO_CLASSES[i] for i in Cityscapes(root).coco_excluded()}
    assert names == {'person', 'bicycle', 'car', 'motorcycle', 'bus', 'train', 'truck',
                     'traffic light', 'stop sign'}
    mine = tmp_path / 'mine'
    dh.make_folder(mine, classes='names: [road, bench, sky]\ncoco: {dog: [road]}\n')
    names = {COCO_CLASSES[i] for i in FolderDataset(mine).coco_excluded({'cat': 'sky'})}
    assert names == {'bench', 'dog', 'cat'}     # its own name, classes.yaml, the user map


# -- bad datasets: one line, exit 2, nothing written ------------------------------------

def _bad_cases(tmp_path):
    """(name, dataset spec, expected message) for each bad-dataset case."""
    cases = []
    root = tmp_path / 'value'
    frames = dh.make_folder(root)
    dh.write_png(root / 'labels' / 'val' / 'f000.png', np.full((32, 48), 77, np.uint8))
    cases.append(('value', f'folder:{root}', r'values \[77\] outside the class list'))
    root = tmp_path / 'size'
    dh.make_folder(root)
    dh.write_png(root / 'labels' / 'val' / 'f000.png', np.zeros((31, 48), np.uint8))
    cases.append(('size', f'folder:{root}', r'is 48x32 but label .* is 48x31'))
    root = tmp_path / 'noclasses'
    dh.make_folder(root)
    (root / 'classes.yaml').unlink()
    cases.append(('noclasses', f'folder:{root}', 'no classes.yaml'))
    root = tmp_path / 'empty'
    dh.make_folder(root)
    for p in (root / 'images' / 'val').iterdir():
        p.unlink()
    cases.append(('empty', f'folder:{root}', "split 'val' holds no frames"))
    root = tmp_path / 'mixed'
    dh.make_folder(root, {'train': 2, 'val': 2})
    img = root / 'images' / 'val' / 'f001.png'
    cv2.imwrite(str(img.with_suffix('.jpg')), cv2.imread(str(img)))
    img.unlink()
    cases.append(('mixed', f'folder:{root}', r'mixes image formats \.jpg, \.png'))
    assert frames
    return cases


def test_bad_datasets_one_line_exit_2_nothing_written(tmp_path, capsys):
    coco = tmp_path / 'coco'     # never reached: the dataset is refused first
    (coco / 'images').mkdir(parents=True)
    (coco / 'labels').mkdir()
    for name, spec, msg in _bad_cases(tmp_path):
        outs = {k: tmp_path / f'out_{name}_{k}' for k in ('base', 'set', 'bag', 'recipe')}
        for argv in (['train-base', '--dataset', spec, '--out', str(outs['base']),
                      '--no-imagenet', '--max-steps', '1'],
                     ['make-ood-set', '--dataset', spec, '--coco', str(coco), '--split',
                      'val', '--out', str(outs['set'])],
                     ['recipe', '--dataset', spec, '--ood-val', str(tmp_path),
                      '--out', str(outs['recipe']), '--no-imagenet']):
            assert cli.main(argv) == 2, (name, argv[0])
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith('error: '), (name, argv[0], err)
            assert re.search(msg, err[0]), (name, argv[0], err[0])
        assert not any(p.exists() for p in outs.values()), name
        assert not (tmp_path / f'out_{name}_recipe.work').exists()


def test_eval_and_make_bag_take_a_dataset(tmp_path, capsys):
    """make-bag writes a split of any kind; eval refuses a dataset with other classes."""
    pytest.importorskip('rosbags')
    root = tmp_path / 'mine'
    dh.make_folder(root)
    bag = tmp_path / 'bag'
    assert cli.main(['make-bag', '--dataset', f'folder:{root}', '--split', 'train',
                     '--out', str(bag), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['n_frames'] == 2
    bundle = ROOT / 'models' / 'camvid_lite0'
    assert cli.main(['eval', '--bundle', str(bundle), '--dataset', f'folder:{root}',
                     '--split', 'val']) == 2
    assert 'has classes' in capsys.readouterr().err


# -- protocol guard per dataset ----------------------------------------------------------

def _set(root: Path, dataset: str, split: str) -> Path:
    root.mkdir(parents=True)
    (root / 'info.json').write_text(json.dumps({'dataset': dataset, 'split': split}))
    return root


def test_guard_keeps_splits_per_dataset(tmp_path):
    info = {'train_base': {'config': {'dataset': 'cityscapes:cs', 'train_splits': ['train']}},
            'train_probes': {'config': {'dataset': 'folder:mine',
                                        'train_splits': ['train', 'extra']}}}
    assert trained_data(info) == {'cityscapes:cs': {'train'}, 'folder:mine': {'train', 'extra'}}
    with pytest.raises(OodSegError, match="built from cityscapes:cs 'train'"):
        check_held_out(info, [_set(tmp_path / 'a', 'cityscapes:cs', 'train')], 'calibrate')
    with pytest.raises(OodSegError, match="folder:mine 'extra'"):
        check_held_out(info, [_set(tmp_path / 'b', 'folder:mine', 'extra')], 'calibrate')
    # another dataset's 'extra' split, and held-out splits, pass
    check_held_out(info, [_set(tmp_path / 'c', 'folder:other', 'extra'),
                          _set(tmp_path / 'd', 'cityscapes:cs', 'val')], 'calibrate')
    # legacy records (no dataset named) are CamVid's
    legacy = {'trained_splits': ['train']}
    with pytest.raises(OodSegError, match="camvid 'train'"):
        check_held_out(legacy, [_set(tmp_path / 'e', 'camvid:camvid', 'train')], 'calibrate')
    check_held_out(legacy, [_set(tmp_path / 'f', 'cityscapes:cs', 'train')], 'calibrate')


# -- no CamVid constant outside the camvid kind -----------------------------------------

CAMVID_TOKENS = re.compile(r'CAMVID_CLASSES|SignSymbol|Bicyclist|\bcamvid\.(ROAD|NUM_CLASSES|'
                           r'FILE_VOID|PALETTE|VOID)\b|from \.+(data\.)?camvid import|'
                           r'data\.camvid import')


def test_no_camvid_constant_outside_its_kind():
    allowed = {Path('ood_seg_ros/tools/data/camvid.py'),
               Path('ood_seg_ros/tools/data/datasets.py'),
               Path('ood_seg_ros/model/default_classes.py')}   # a bundle naming none
    hits = []
    for path in sorted((ROOT / 'ood_seg_ros').rglob('*.py')):
        rel = path.relative_to(ROOT)
        if rel in allowed:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if CAMVID_TOKENS.search(line):
                hits.append(f'{rel}:{n}: {line.strip()}')
    assert hits == []


# -- the CamVid path is unchanged ------------------------------------------------------

@pytest.mark.data
def test_camvid_alias_and_kind_give_the_same_eval_json(capsys):
    from repo_paths import CAMVID
    if not (CAMVID / 'test' / 'images').is_dir():
        pytest.skip(f'shared CamVid data not found at {CAMVID}')
    bundle = ROOT / 'models' / 'camvid_lite0'
    common = ['eval', '--bundle', str(bundle), '--split', 'test', '--limit', '2', '--json']
    results = []
    for option in (['--camvid', str(CAMVID)], ['--dataset', f'camvid:{CAMVID}']):
        assert cli.main(common + option) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1]
    c = results[0]['camvid']
    assert c['frames'] == 2 and list(c['per_class']) == list(camvid.CAMVID_CLASSES)
    assert c['detections']['frames'] == 2
