"""tools/fusion_screen.py: its shipped candidate is the model's fused score, and its rule."""

import numpy as np
from ood_seg_ros import scores as S
import pytest
from repo_paths import load_tool
import torch


@pytest.fixture(scope='module')
def screen():
    return load_tool('fusion_screen')


def test_shipped_candidate_is_the_models_fused_score(screen):
    rng = np.random.default_rng(0)
    maps = {k: rng.normal(-5.0, 2.0, (6, 8)).astype(np.float32) for k in screen.MEMBERS}
    stats = {k: (float(rng.normal(-4, 1)), float(rng.uniform(0.5, 3))) for k in maps}
    weights = screen.candidates()[screen.SHIPPED]
    got = screen.fused_map(maps, weights, stats)
    want = S.fused_score({k: torch.from_numpy(v) for k, v in maps.items()},
                         S.FUSED['fused_energy_moose_energy'], stats).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_grids_are_normalised_and_hold_the_shipped_weights(screen):
    grid = screen.candidates()
    assert len(grid) == 9 + 10
    assert grid[screen.SHIPPED] == {'energy': 0.5, 'moose_energy': 0.5}
    for w in grid.values():
        assert abs(sum(w.values()) - 1.0) < 1e-9 and min(w.values()) >= 0


def test_lower_bound_is_the_mean_of_per_set_percentiles(screen):
    a, b = [np.arange(100.0).reshape(10, 10)], [np.arange(1000.0, 1200.0)]
    assert screen.lower_bound([a, b]) == pytest.approx(
        (np.percentile(a[0], 1) + np.percentile(b[0], 1)) / 2)


def _rows(shipped, other):
    return {key: dict(zip(('fs', 'ra', 'syn', 'rep'), v))
            for key, v in (('G2 energy=0.5', shipped), ('cand', other))}


@pytest.mark.parametrize('other, ships', [
    ((0.106, 0.450, 0.80, 0.30), True),     # worst real +0.006, nothing lost
    ((0.104, 0.450, 0.80, 0.30), False),    # worst real +0.004: below the gain
    ((0.120, 0.444, 0.80, 0.30), False),    # worst real +0.010 but road set -0.006
    ((0.106, 0.450, 0.789, 0.30), False),   # a selection set -0.011
    ((0.106, 0.450, 0.80, 0.289), False),   # a report set -0.011
])
def test_rule(screen, other, ships):
    rows = _rows((0.100, 0.450, 0.80, 0.30), other)
    msp = {'fs': 0.01, 'ra': 0.3, 'syn': 0.5}
    ranked, winner, got = screen.choose(rows, ['fs', 'ra', 'syn'], ['fs', 'ra'], ['rep'], msp)
    assert got is ships
    assert winner == ranked[0][1]


def test_an_ineligible_candidate_never_wins(screen):
    rows = _rows((0.100, 0.450, 0.80, 0.30), (0.2, 0.6, 0.49, 0.3))   # below MSP on syn
    msp = {'fs': 0.01, 'ra': 0.3, 'syn': 0.5}
    ranked, winner, ships = screen.choose(rows, ['fs', 'ra', 'syn'], ['fs', 'ra'], [], msp)
    assert winner == screen.SHIPPED and not ships
    assert [k for _, k, ok in ranked if not ok] == ['cand']
