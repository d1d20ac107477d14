"""make-bag writes to a temporary name and renames at the end: bad input leaves nothing."""

import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools.data import bags
import pytest


def _frames(n, bad_at=None):
    rng = np.random.default_rng(0)
    for i in range(n):
        if i == bad_at:
            yield f'f{i}', np.zeros((4, 4), np.uint8)      # not RGB: an error mid-way
        else:
            yield f'f{i}', rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bad_input_leaves_no_partial_bag_and_a_rerun_works(tmp_path, storage):
    out = tmp_path / 'out'
    with pytest.raises(OodSegError, match='expected non-empty uint8'):
        bags.write_image_bag(out, _frames(3, bad_at=1), 10.0, storage=storage)
    assert not out.exists() and list(tmp_path.iterdir()) == []   # no one-frame bag left
    summary = bags.write_image_bag(out, _frames(3), 10.0, storage=storage)
    assert summary['n_frames'] == 3 and (out / 'metadata.yaml').exists()
    assert [p.name for p in tmp_path.iterdir()] == ['out']
    # the data file has the bag's own name, as ros2 bag record writes it
    ext = {'mcap': '.mcap', 'sqlite3': '.db3'}[storage]
    assert sorted(p.name for p in out.iterdir()) == sorted(['metadata.yaml', 'out' + ext])
    assert f'out{ext}' in (out / 'metadata.yaml').read_text()
    msgs = list(bags.read_image_bag(out))
    assert len(msgs) == 3
    with pytest.raises(OodSegError, match='exists already'):
        bags.write_image_bag(out, _frames(1), 10.0, storage=storage)


def test_interrupt_while_writing_leaves_no_partial_bag(tmp_path):
    def frames():
        yield from _frames(2)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        bags.write_image_bag(tmp_path / 'out', frames(), 10.0)
    assert list(tmp_path.iterdir()) == []
