"""The one overlay drawing (node colour output, evaluator and bag-eval overlay files)."""

import cv2
import numpy as np
from ood_seg_ros import viz


def _frame(h=40, w=60):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_blend_boxes_and_frame_size():
    rgb = _frame()
    heat = np.tile(np.linspace(0, 1, 60, dtype=np.float32), (40, 1))
    out = viz.overlay(rgb, heat, boxes=[(10, 5, 20, 15)])
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    a = 0.6 * heat[:, :, None]
    expected = rgb[:, :, ::-1] * (1 - a) + colour * a
    ring = np.zeros((40, 60), bool)
    ring[5:15, 10:20] = True
    ring[6:14, 11:19] = False
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(float) - expected)[~ring].max() <= 1
    assert np.all(out[ring] == 255)
    cold = viz.overlay(rgb, np.zeros((40, 60), np.float32))
    assert np.array_equal(cold, rgb[:, :, ::-1])          # heat 0 leaves the frame


def test_heatmap_of_another_size_is_resized_and_gt_outlined():
    rgb = _frame()
    gt = np.zeros((40, 60), np.uint8)
    gt[10:30, 20:40] = 1
    gt[0:5] = 255                                          # void is not outlined
    out = viz.overlay(rgb, np.zeros((10, 15), np.float32), gt=gt)
    green = np.all(out == viz.GT_COLOUR, axis=-1)
    assert green[10, 20:40].all() and green[10:30, 20].all()
    assert not green[0:5].any() and not green[15:25, 25:35].any()


def test_colour_bar_with_scale():
    rgb = _frame()
    heat = np.full((40, 60), 0.5, np.float32)
    plain = viz.overlay(rgb, heat)
    out = viz.overlay(rgb, heat, colour_bar=True, scale=(-2.0, 7.5), label='energy')
    assert out.shape[0] == 40 and out.shape[1] > 60 + viz.BAR_WIDTH
    assert np.array_equal(out[:, :60], plain)
    x = 60 + viz.BAR_MARGIN + viz.BAR_WIDTH // 2
    top, bottom = out[viz.BAR_MARGIN, x], out[40 - viz.BAR_MARGIN - 1, x]
    assert top[2] > 100 and top[0] < 100            # heat 1 at the top: red (BGR)
    assert bottom[0] > 100 and bottom[2] < 100      # heat 0 at the bottom: blue
    assert (out[:, 60 + 2 * viz.BAR_MARGIN + viz.BAR_WIDTH:] < 128).any()   # text


def test_instance_boxes():
    mask = np.zeros((20, 30), np.uint16)
    mask[2:5, 3:9] = 1
    mask[10:20, 0:2] = 3
    assert viz.instance_boxes(mask) == [(3, 2, 9, 5), (0, 10, 2, 20)]
    assert viz.instance_boxes(np.zeros((4, 4), np.uint16)) == []
