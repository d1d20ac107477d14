"""tools/obstacle_sweep.py: the rule that picks the bundle's default region."""

from ood_seg_ros.errors import OodSegError
import pytest
from repo_paths import load_tool


def _tool():
    return load_tool('obstacle_sweep')


def _rows(table, msp):
    """{candidate: {set: ap}} + all-mode MSP -> the rows measure() returns."""
    rows = {k: {s: {'x': {'ap': ap, 'fpr95': 0.5, 'auroc': 0.8}} for s, ap in r.items()}
            for k, r in table.items()}
    for s, ap in msp.items():
        rows['all'][s]['msp'] = {'ap': ap, 'fpr95': 0.9, 'auroc': 0.6}
    return rows


def test_the_rule_takes_the_best_worst_case_and_ships_only_a_real_gain():
    tool = _tool()
    a = 'drivable margin=0.01 falloff=0.25 floor=0.5'
    b = 'drivable margin=0.05 falloff=0.04 floor=0.0'
    c = 'drivable margin=0.01 falloff=0.04 floor=0.0'
    table = {'all': {'fs': 0.05, 'ra': 0.45, 'syn': 0.80},
             a: {'fs': 0.07, 'ra': 0.38, 'syn': 0.78},     # worst relative 0.38/0.45
             b: {'fs': 0.09, 'ra': 0.30, 'syn': 0.79},     # best on fs, worst on ra
             c: {'fs': 0.08, 'ra': 0.44, 'syn': 0.10}}     # below MSP on syn: not eligible
    rows = _rows(table, {'fs': 0.01, 'ra': 0.30, 'syn': 0.30})
    ranked, winner, ships = tool.choose(rows, ['fs', 'ra', 'syn'], ['fs', 'ra'], 'x')
    by_key = {k: (rel, ok) for rel, k, ok in ranked}
    assert by_key[c][1] is False and by_key[a][1] is True
    assert by_key[a][0] == min(0.07 / 0.09, 0.38 / 0.45, 0.78 / 0.80)
    assert winner == a and ships                 # real worst 0.05 -> 0.07
    assert tool.settings_of(a) == {'margin': 0.01, 'falloff': 0.25, 'floor': 0.5}
    # a winner by the synthetic set alone, no gain on the real sets: not shipped
    rows = _rows({'all': {'fs': 0.05, 'ra': 0.45, 'syn': 0.50},
                  a: {'fs': 0.05, 'ra': 0.44, 'syn': 0.80}},
                 {'fs': 0.01, 'ra': 0.30, 'syn': 0.30})
    ranked, winner, ships = tool.choose(rows, ['fs', 'ra', 'syn'], ['fs', 'ra'], 'x')
    assert winner == a and not ships


def test_contrast_candidates_have_their_own_keys_and_settings():
    tool = _tool()
    assert tool.grid_key('all', 0.0) == 'all'
    assert tool.grid_key('all', 0.5) == 'all contrast=0.5'
    key = tool.grid_key('drivable', 1.0, 0.01, 0.25, 0.2)
    assert key == 'drivable margin=0.01 falloff=0.25 floor=0.2 contrast=1.0'
    assert tool.settings_of(key) == {'margin': 0.01, 'falloff': 0.25, 'floor': 0.2,
                                     'contrast': 1.0}
    assert tool.parse_gains('0.5, 1') == (0.5, 1.0)
    for bad in ('-1', 'x', 'nan'):
        with pytest.raises(OodSegError, match='contrast'):
            tool.parse_gains(bad)
    # 'all' with contrast is a candidate like any other: it ships on a real gain
    rows = _rows({'all': {'fs': 0.05, 'ra': 0.45}, 'all contrast=0.5': {'fs': 0.08, 'ra': 0.44}},
                 {'fs': 0.01, 'ra': 0.30})
    ranked, winner, ships = tool.choose(rows, ['fs', 'ra'], ['fs', 'ra'], 'x')
    assert winner == 'all contrast=0.5' and ships
