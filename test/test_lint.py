"""ROS lint: ament_flake8 and ament_pep257 pass on the package, its tests and tools."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = [str(ROOT / p) for p in ('ood_seg_ros', 'test', 'launch', 'setup.py')]


@pytest.mark.linter
def test_flake8():
    from ament_flake8.main import main_with_errors
    rc, errors = main_with_errors(argv=PATHS)
    assert rc == 0, f'{len(errors)} flake8 errors:\n' + '\n'.join(errors[:40])


@pytest.mark.linter
def test_pep257():
    from ament_pep257.main import main
    rc = main(argv=PATHS)
    assert rc == 0, 'pep257 errors (see output above)'
