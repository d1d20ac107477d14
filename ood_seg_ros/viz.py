"""
The one overlay drawing: camera frame, heatmap, segment boxes, ground truth, colour bar.

Used by the node's ``ood/heatmap/color`` output, the evaluator's ``overlay_<i>.png``
files and ``ood-seg bag-eval``'s overlays. ROS-free; numpy and OpenCV only.
"""

from typing import Iterable, Optional, Sequence, Tuple

import cv2
import numpy as np

from .segments import segment_boxes

ALPHA = 0.6                 # heat 1 is drawn at 60 % colour, heat 0 leaves the frame
BOX_COLOUR = (255, 255, 255)    # BGR: kept OoD segments
GT_COLOUR = (0, 255, 0)         # BGR: ground-truth OoD outline
BAR_WIDTH = 12
BAR_MARGIN = 4


def instance_boxes(instances: np.ndarray) -> list:
    """End-exclusive (x0, y0, x1, y1) boxes of the ids 1..max of an instance mask."""
    n = int(instances.max()) if instances.size else 0
    return [tuple(int(v) for v in b) for b in segment_boxes(instances, n) if b[2] > b[0]]


def overlay(rgb: np.ndarray, heatmap: np.ndarray, boxes: Iterable[Sequence[int]] = (),
            gt: Optional[np.ndarray] = None, colour_bar: bool = False,
            scale: Tuple[float, float] = (0.0, 1.0), label: str = '') -> np.ndarray:
    """
    Draw the heatmap over an RGB uint8 (H, W, 3) frame; return BGR uint8.

    ``heatmap`` in [0, 1] (resized to the frame when its size differs) is blended as the
    JET colour map with weight ``ALPHA`` x heat, so cool pixels keep the frame visible.
    ``boxes``: end-exclusive (x0, y0, x1, y1) pixel boxes of kept segments, drawn 1 px
    white. ``gt``: label mask of the frame's size (1 = OoD, 255 = void), outlined in
    green. ``colour_bar``: append a bar on the right, labelled with ``scale`` (the score
    values that heat 0 and 1 stand for) and ``label``; without it the result keeps the
    frame's size (the node's output lines up with the camera frame).
    """
    h, w = rgb.shape[:2]
    heat = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.float32)
    colour = cv2.applyColorMap((heat * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    a = (ALPHA * heat)[:, :, None]
    out = (bgr * (1.0 - a) + colour.astype(np.float32) * a).astype(np.uint8)
    if gt is not None and gt.shape == (h, w):
        contours, _ = cv2.findContours((gt == 1).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, GT_COLOUR, 1)
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (int(x0), int(y0)), (max(int(x0), int(x1) - 1),
                                                max(int(y0), int(y1) - 1)), BOX_COLOUR, 1)
    if colour_bar:
        out = np.concatenate([out, _colour_bar(h, scale, label)], axis=1)
    return out


def _colour_bar(height: int, scale: Tuple[float, float], label: str) -> np.ndarray:
    """Draw a white strip with the JET scale (top = heat 1) and its end values as text."""
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.35
    texts = [f'{scale[1]:.3g}', f'{scale[0]:.3g}'] + ([label] if label else [])
    text_w = max(cv2.getTextSize(t, font, size, 1)[0][0] for t in texts)
    strip = np.full((height, BAR_MARGIN * 3 + BAR_WIDTH + text_w, 3), 255, np.uint8)
    top, bottom = BAR_MARGIN, max(BAR_MARGIN + 1, height - BAR_MARGIN)
    ramp = np.linspace(255, 0, bottom - top).astype(np.uint8)[:, None]
    bar = cv2.applyColorMap(np.repeat(ramp, BAR_WIDTH, axis=1), cv2.COLORMAP_JET)
    strip[top:bottom, BAR_MARGIN:BAR_MARGIN + BAR_WIDTH] = bar
    x = BAR_MARGIN * 2 + BAR_WIDTH
    cv2.putText(strip, texts[0], (x, top + 8), font, size, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(strip, texts[1], (x, bottom), font, size, (0, 0, 0), 1, cv2.LINE_AA)
    if label:
        cv2.putText(strip, label, (x, (top + bottom) // 2), font, size, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return strip


def class_colours(n: int, palette: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """Return RGB uint8 (n, 3): the bundle's palette, or n distinct hues when it has none."""
    if palette is not None:
        colours = np.asarray(palette, np.uint8).reshape(-1, 3)
        if len(colours) != n:
            raise ValueError(f'palette has {len(colours)} colours for {n} classes')
        return colours
    hsv = np.stack([np.arange(n) * 180 // max(n, 1), np.full(n, 200), np.full(n, 230)], 1)
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]


def semantic_overlay(rgb: np.ndarray, semantic: np.ndarray, class_names: Sequence[str],
                     palette: Optional[Sequence[Sequence[int]]] = None,
                     alpha: float = 0.5) -> np.ndarray:
    """
    Blend class colours over an RGB frame and add a legend of the classes; return BGR.

    ``semantic``: class ids (H, W) of the frame's size (ids outside the classes, e.g. 255,
    stay uncoloured); colours from ``palette`` (the bundle's) or :func:`class_colours`.
    """
    colours = class_colours(len(class_names), palette)
    sem = np.asarray(semantic)
    known = sem < len(class_names)
    out = rgb.astype(np.float32)
    out[known] = (1 - alpha) * out[known] + alpha * colours[sem[known]].astype(np.float32)
    bgr = cv2.cvtColor(out.astype(np.uint8), cv2.COLOR_RGB2BGR)
    return np.concatenate([bgr, _legend(rgb.shape[0], class_names, colours)], axis=1)


def _legend(height: int, names: Sequence[str], colours: np.ndarray) -> np.ndarray:
    """Draw a white strip with one colour swatch and name per class (as many as fit)."""
    font, size, row = cv2.FONT_HERSHEY_SIMPLEX, 0.35, 12
    text_w = max(cv2.getTextSize(n, font, size, 1)[0][0] for n in names)
    strip = np.full((height, BAR_MARGIN * 3 + BAR_WIDTH + text_w, 3), 255, np.uint8)
    for i, (name, c) in enumerate(zip(names, colours)):
        y = BAR_MARGIN + i * row
        if y + row > height:
            break
        strip[y:y + row - 2, BAR_MARGIN:BAR_MARGIN + BAR_WIDTH] = c[::-1]
        cv2.putText(strip, name, (BAR_MARGIN * 2 + BAR_WIDTH, y + row - 3), font, size,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return strip
