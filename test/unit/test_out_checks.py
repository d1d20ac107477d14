"""``--out`` is checked before any work: one ``error:`` line, status 2, inputs untouched."""

from pathlib import Path

from ood_seg_ros.cli import main as cli_main
from ood_seg_ros.tools import evaluate
import pytest
from repo_paths import ROOT

SAMPLE_BAG = ROOT / 'test' / 'data' / 'sample.bag'


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if an evaluation starts."""
    def work(*args, **kwargs):
        raise AssertionError('the evaluation started before --out was checked')
    monkeypatch.setattr(evaluate, 'evaluate_bundle', work)


@pytest.fixture
def bundle(tmp_path):
    """Make a folder standing for a bundle: --out is checked before it is read."""
    path = tmp_path / 'bundle'
    path.mkdir()
    (path / 'bundle.json').write_text('{}')
    return path


def _run(capsys, argv):
    code = cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize('case', ['existing_file', 'proc', 'inside_bundle', 'the_bundle'])
def test_eval_out_is_refused_before_work(tmp_path, capsys, no_work, bundle, case):
    existing = tmp_path / 'results.json'
    existing.write_text('keep')
    out = {'existing_file': existing, 'proc': Path('/proc/ood_seg_out'),
           'inside_bundle': bundle / 'results', 'the_bundle': bundle}[case]
    code, err = _run(capsys, ['eval', '--bundle', str(bundle), '--ood-set', str(tmp_path),
                              '--out', str(out)])
    says = {'existing_file': 'exists and is not a folder', 'proc': 'cannot write there',
            'inside_bundle': 'inside the input', 'the_bundle': 'inside the input'}[case]
    assert code == 2 and len(err) == 1 and err[0].startswith('error: --out'), err
    assert says in err[0]
    assert existing.read_text() == 'keep'
    assert sorted(p.name for p in bundle.iterdir()) == ['bundle.json']


@pytest.mark.parametrize('case', ['the_bag', 'inside_bag', 'proc'])
def test_bag_eval_out_is_refused_before_work(tmp_path, capsys, bundle, case):
    before = sorted(p.name for p in SAMPLE_BAG.iterdir())
    out = {'the_bag': SAMPLE_BAG, 'inside_bag': SAMPLE_BAG / 'results',
           'proc': Path('/proc/ood_seg_out')}[case]
    code, err = _run(capsys, ['bag-eval', str(SAMPLE_BAG), '--bundle', str(bundle),
                              '--out', str(out)])
    assert code == 2 and len(err) == 1 and err[0].startswith('error: --out'), err
    assert sorted(p.name for p in SAMPLE_BAG.iterdir()) == before
