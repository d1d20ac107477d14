"""Road obstacles: perspective-consistent sizes, labels, and frames without road."""

import numpy as np
from ood_seg_ros.errors import OodSegError
from ood_seg_ros.tools.data import road_obstacles as R
import pytest

ROAD, SKY, VOID = 3, 0, 255


def _frame(h=120, w=160, road_from=40):
    rng = np.random.default_rng(0)
    rgb = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
    label = np.full((h, w), SKY, np.uint8)
    label[road_from:] = ROAD
    label[:5, :5] = VOID
    return rgb, label


def test_objects_stand_on_the_road_at_a_perspective_consistent_height():
    rgb, label = _frame()
    geo = R.RoadGeometry(camera_height=1.4, object_height=(0.2, 0.8), horizon_margin=0.02,
                         min_height_px=1)
    y_h = R.horizon_row(label == ROAD, geo.horizon_margin)
    assert y_h == pytest.approx(40 - 0.02 * 120)
    boxes = []
    for seed in range(6):
        out, ood, sem, b = R.place_on_road(rgb, label, [ROAD], [], np.random.default_rng(seed),
                                           n_objects=(3, 3), procedural_fraction=1.0,
                                           geometry=geo)
        boxes += [x for x in b if x]
        # Labels: OoD only inside the placed boxes, void kept, object pixels void in semantic.
        inside = np.zeros_like(ood, bool)
        for x in b:
            if x:
                inside[x['y0']:x['y1'], x['x0']:x['x1']] = True
        assert not (ood == 1)[~inside].any()
        assert (ood[:5, :5] == VOID).all()
        assert (sem[ood == 1] == VOID).all() and (sem[ood == 0] == label[ood == 0]).all()
        assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert len(boxes) >= 10
    for x in boxes:
        ax, ay = x['anchor']
        assert label[ay, ax] == ROAD                    # the base stands on road
        # height = H_m (y - y_h) / h_cam for some H_m in the range (+- rounding)
        lo = 0.2 * (ay - y_h) / 1.4 - 0.5
        hi = 0.8 * (ay - y_h) / 1.4 + 0.5
        assert lo <= x['height_px'] <= hi
    # Far objects are small: the height grows with the anchor row.
    rows = np.array([x['anchor'][1] for x in boxes])
    heights = np.array([x['height_px'] for x in boxes])
    assert np.corrcoef(rows, heights)[0, 1] > 0.5


def test_no_road_no_object_and_deterministic():
    rgb, label = _frame()
    label[label == ROAD] = SKY
    out, ood, _, boxes = R.place_on_road(rgb, label, [ROAD], [], np.random.default_rng(1),
                                         procedural_fraction=1.0)
    assert boxes == [] and not (ood == 1).any() and np.array_equal(out, rgb)
    rgb, label = _frame()
    a = R.place_on_road(rgb, label, [ROAD], [], np.random.default_rng(5), procedural_fraction=1.0)
    b = R.place_on_road(rgb, label, [ROAD], [], np.random.default_rng(5), procedural_fraction=1.0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_bad_arguments_are_refused():
    rgb, label = _frame()
    with pytest.raises(OodSegError, match='procedural_fraction'):
        R.place_on_road(rgb, label, [ROAD], [], np.random.default_rng(0),
                        procedural_fraction=1.5)
    with pytest.raises(OodSegError, match='no COCO objects'):
        R.place_on_road(rgb, label, [ROAD], [], np.random.default_rng(0),
                        procedural_fraction=0.5)
    with pytest.raises(OodSegError, match='unknown procedural object'):
        R.procedural_object('piano', np.random.default_rng(0))
    for kind in R.PROCEDURAL_KINDS:
        obj = R.procedural_object(kind, np.random.default_rng(0), 40)
        assert obj.rgb.shape[:2] == obj.alpha.shape and obj.alpha.shape[0] == 40
        assert 0 < obj.alpha.mean() <= 1
