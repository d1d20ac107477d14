"""
``tools/oe_rounds_gpu.sh`` run for real on the CPU: two chains, the round budget, packing.

A tiny CamVid (the first frames of ``train`` and ``val``, linked) and one optimiser step a
round keep it to a minute. Checked: each chain packs a third, two thirds and the last of
its rounds as a bundle that loads, with train statistics; only the decoder and classifier
moved; the chains' proxies differ as documented (chain b pastes more objects); the budget
stops a chain after its first round; a chain given by ``OE_CHAINS`` runs at its own
learning rate and packs the mean of its rounds' weights (``OE_SOUP``), whose tensors are
checked against the rounds' own.
"""

import os
from pathlib import Path
import subprocess
import sys
import tarfile

import pytest
from repo_paths import CAMVID, COCO, ROOT
import torch

SCRIPT = ROOT / 'tools' / 'oe_rounds_gpu.sh'


def _tiny_data(root: Path, n_train: int = 6, n_val: int = 3) -> Path:
    for split, n in (('train', n_train), ('val', n_val)):
        names = sorted(p.name for p in (CAMVID / split / 'images').iterdir())[:n]
        for sub in ('images', 'labels'):
            (root / 'camvid' / split / sub).mkdir(parents=True)
        for name in names:
            (root / 'camvid' / split / 'images' / name).symlink_to(
                CAMVID / split / 'images' / name)
            labels = list((CAMVID / split / 'labels').glob(Path(name).stem + '*'))
            assert len(labels) == 1, labels
            (root / 'camvid' / split / 'labels' / labels[0].name).symlink_to(labels[0])
    (root / 'coco128_seg').symlink_to(COCO)
    return root


def _run(tmp_path, budget, rounds, **extra):
    data = _tiny_data(tmp_path / 'data')
    env = {**os.environ, **extra, 'PYTHON': sys.executable, 'OE_DEVICE': 'cpu', 'OE_STEPS': '1',
           'OE_MAX_ROUNDS': str(rounds), 'OE_BUDGET_S': str(budget), 'OE_VAL_LIMIT': '1',
           'OE_SML_LIMIT': '1', 'OMP_NUM_THREADS': '1',
           'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    out = subprocess.run(['bash', str(SCRIPT), str(data), str(ROOT / 'models' / 'camvid_lite0'),
                          str(tmp_path / 'work'), str(tmp_path / 'pack')], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout, tmp_path / 'pack', tmp_path / 'work'


@pytest.mark.data
def test_two_chains_pack_their_rounds_with_train_statistics(tmp_path):
    from ood_seg_ros.model import load_bundle
    from ood_seg_ros.model.bundle import read_bundle_json
    log, pack, work = _run(tmp_path, budget=100000, rounds=2)
    assert sorted(p.name for p in pack.iterdir()) == [
        'a_r1.tar', 'a_r2.tar', 'b_r1.tar', 'b_r2.tar', 'logs.tgz']
    assert 'chain a round 2' in log and 'chain b round 2' in log
    init = load_bundle(ROOT / 'models' / 'camvid_lite0').model.state_dict()
    with tarfile.open(pack / 'b_r2.tar') as tar:
        tar.extractall(tmp_path / 'b_r2', filter='data')
    bundle = tmp_path / 'b_r2' / 'bundle'
    assert read_bundle_json(bundle)['config']['sml_stats']['frames'] == 1
    sd = load_bundle(bundle).model.state_dict()
    changed = {k for k in init if not torch.equal(init[k], sd[k])}
    assert any(k.startswith('decoder.') for k in changed)
    assert not {k for k in changed if k.startswith(('backbone.', 'aspp.', 'probes.'))}

    def pasted(chain):
        text = (work / f'{chain}.r1.proxy.log').read_text()
        return int(text.split('objects pasted: ')[1].split()[0])
    assert pasted('b') > pasted('a')      # 2-6 objects a frame against 1-4


@pytest.mark.data
def test_the_budget_stops_each_chain_after_its_first_round(tmp_path):
    log, pack, _ = _run(tmp_path, budget=0, rounds=3)
    assert 'round 2' not in log
    assert sorted(p.name for p in pack.iterdir()) == ['a_r1.tar', 'b_r1.tar', 'logs.tgz']


@pytest.mark.data
def test_a_chain_of_its_own_packs_its_last_round_and_the_soup_of_its_rounds(tmp_path):
    from ood_seg_ros.model.bundle import read_bundle_json
    log, pack, work = _run(tmp_path, budget=100000, rounds=2, OE_CHAINS='s:1.0:3,8:600:5e-5',
                           OE_KEEP='last', OE_SOUP='1')
    assert sorted(p.name for p in pack.iterdir()) == ['logs.tgz', 's_r2.tar', 's_soup.tar']
    assert 'chain s round 2' in log and 'chain a' not in log
    with tarfile.open(pack / 's_soup.tar') as tar:
        tar.extractall(tmp_path / 'soup', filter='data')
    soup = tmp_path / 'soup' / 'bundle'
    doc = read_bundle_json(soup)
    assert doc['config']['sml_stats']['frames'] == 1
    assert doc['info']['averaged_from'] == ['s/r1/bundle', 's/r2/bundle']
    assert doc['info']['train_entropy']['config']['lr'] == 5e-5
    rounds = [torch.load(work / 's' / f'r{k}' / 'bundle' / 'weights.pt') for k in (1, 2)]
    sd = torch.load(soup / 'weights.pt')
    moved = [k for k in sd if sd[k].is_floating_point()
             and not torch.equal(rounds[0][k], rounds[1][k])]
    assert any(k.startswith('decoder.') for k in moved)
    assert not [k for k in moved if k.startswith(('backbone.', 'aspp.', 'probes.'))]
    for k in moved:     # the mean, to the float16 the bundle stores
        want = ((rounds[0][k].float() + rounds[1][k].float()) / 2).to(sd[k].dtype)
        assert torch.equal(sd[k], want), k
