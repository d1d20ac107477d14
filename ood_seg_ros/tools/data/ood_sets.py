"""
Synthetic OoD sets (COCO objects pasted into a dataset's frames) and the OoD set reader.

Label conventions (all uint8, H x W):

- ``ood_label``: 1 = OoD (pasted alpha >= 0.5), 0 = in-distribution, 255 = void (the
  dataset's ignored pixels, not pasted).
- ``semantic``: the dataset's label (train ids, ignore 255) with pasted (``ood_label == 1``)
  pixels set to 255, so in-distribution losses ignore them (entropy-maximisation training).

Written layout of ``make_ood_set`` (read back by ``OodDataset``): ``images/<name>.jpg``
(JPEG quality 95), ``labels/<name>.png`` (0/1/255), ``semantic/<name>.png``, ``info.json``.
"""

from dataclasses import asdict, dataclass
import json
import math
from pathlib import Path
from typing import NamedTuple, Optional

import cv2
import numpy as np

from . import coco_objects, proxy_realism, road_obstacles
from .datasets import open_dataset
from .images import frame_and_label, read_gray, read_rgb
from .labelled import IGNORE as VOID
from ...errors import OodSegError

OOD = 1
IN_DIST = 0
JPEG_QUALITY = 95
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.webp')
PLACEMENTS = ('scene', 'road', 'mixed')


@dataclass
class Placement:
    """Where one object went: box ``[x0, y0, x1)`` x ``[y0, y1)`` in frame px (clipped)."""

    key: str
    class_id: int
    class_name: str
    image_id: str
    x0: int
    y0: int
    x1: int
    y1: int
    height_px: int
    flipped: bool
    on_road: bool
    anchor: Optional[list]  # [x, y] road pixel under the bottom-centre, or None


@dataclass
class PasteResult:
    """A composed frame: rgb uint8 (H, W, 3), labels uint8 (H, W), alpha float32 (H, W)."""

    rgb: np.ndarray
    ood_label: np.ndarray
    semantic: np.ndarray
    alpha: np.ndarray
    placements: list


def _check_range(name: str, value, lo: float, hi: float) -> tuple:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise OodSegError(f'{name} must be a pair (min, max), got {value!r}') from None
    if not lo <= a <= b <= hi:
        raise OodSegError(f'{name} must satisfy {lo} <= min <= max <= {hi}, got {value!r}')
    return a, b


def _prepare_object(obj, target_h: float, max_w: float, flip: bool, feather_px: float):
    """Resize, flip and feather one object: (rgb float32 (h, w, 3), alpha, pad, h, w)."""
    h, w = obj.alpha.shape
    scale = min(target_h / h, max_w / w)
    new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    rgb = cv2.resize(obj.rgb, (new_w, new_h), interpolation=interp).astype(np.float32)
    alpha = cv2.resize(obj.alpha.astype(np.float32), (new_w, new_h), interpolation=interp)
    alpha = np.clip(alpha, 0.0, 1.0)
    if flip:
        rgb, alpha = rgb[:, ::-1].copy(), alpha[:, ::-1].copy()
    pad = 0
    if feather_px > 0:
        pad = int(math.ceil(3 * feather_px))
        border = (pad, pad, pad, pad)
        rgb = cv2.copyMakeBorder(rgb, *border, cv2.BORDER_REPLICATE)
        alpha = cv2.copyMakeBorder(alpha, *border, cv2.BORDER_CONSTANT, value=0)
        # Extend the object's own colours outwards (normalised convolution) so the soft edge
        # does not bleed the COCO background into the frame.
        inside = (alpha >= 0.5).astype(np.float32)
        sigma = 2 * feather_px + 1
        num = cv2.GaussianBlur(rgb * inside[..., None], (0, 0), sigma)
        den = cv2.GaussianBlur(inside, (0, 0), sigma)
        ext = num / np.maximum(den, 1e-6)[..., None]
        use_ext = (inside == 0) & (den > 1e-3)
        rgb[use_ext] = ext[use_ext]
        alpha = np.clip(cv2.GaussianBlur(alpha, (0, 0), feather_px), 0.0, 1.0)
    return rgb, alpha, pad, new_h, new_w


def compose_ood_frame(rgb, label, objects, rng, n_objects=(1, 3), on_road_fraction=0.5,
                      height_frac=(0.08, 0.4), feather_px=2.0, road_ids=()) -> PasteResult:
    """
    Paste random COCO objects into a frame; return images, labels, alpha and placements.

    ``rgb`` uint8 (H, W, 3), ``label`` uint8 (H, W) train ids with void 255; ``objects`` a
    list of ``CocoObject``; ``rng`` a ``numpy.random.Generator`` (the only randomness). The
    number of objects is uniform in ``n_objects`` (inclusive); each object gets a height of
    ``height_frac`` x H (uniform; width capped at 0.9 W), a horizontal flip with p = 0.5 and,
    with probability ``on_road_fraction`` and if the frame has road (a class of ``road_ids``,
    see :func:`road_ids`), its bottom-centre
    on a random road pixel; otherwise a uniform position fully inside the frame. Edges are
    feathered with a Gaussian of sigma ``feather_px`` px; later objects occlude earlier ones.
    """
    rgb, label = frame_and_label(rgb, label)
    lo, hi = _check_range('n_objects', n_objects, 0, 10 ** 6)
    hf_lo, hf_hi = _check_range('height_frac', height_frac, 0.0, 1.0)
    if not 0.0 <= on_road_fraction <= 1.0:
        raise OodSegError(f'on_road_fraction must lie in [0, 1], got {on_road_fraction}')
    if feather_px < 0:
        raise OodSegError(f'feather_px must be >= 0, got {feather_px}')
    if hi > 0 and not objects:
        raise OodSegError('no COCO objects to paste (empty object list)')
    height, width = label.shape
    out = rgb.astype(np.float32)
    union = np.zeros((height, width), np.float32)
    road_ys = road_xs = None
    n = int(rng.integers(int(lo), int(hi) + 1))
    picks = rng.choice(len(objects), size=n, replace=n > len(objects)) if n else []
    placements = []
    for index in picks:
        obj = objects[int(index)]
        want_road = bool(rng.random() < on_road_fraction)
        flip = bool(rng.random() < 0.5)
        target_h = max(1.0, rng.uniform(hf_lo, hf_hi) * height)
        o_rgb, o_alpha, pad, oh, ow = _prepare_object(obj, target_h, 0.9 * width, flip,
                                                      feather_px)
        if want_road and road_ys is None:
            road_ys, road_xs = np.nonzero(np.isin(label, road_ids))
        anchor = None
        if want_road and road_ys.size:
            k = int(rng.integers(road_ys.size))
            ax, ay = int(road_xs[k]), int(road_ys[k])
            anchor = [ax, ay]
            top, left = ay - (oh - 1), ax - ow // 2
        else:
            top = int(rng.integers(0, max(height - oh, 0) + 1))
            left = int(rng.integers(0, max(width - ow, 0) + 1))
        # padded object box in frame coordinates, clipped to the frame
        fy0, fx0 = top - pad, left - pad
        fy1, fx1 = fy0 + o_alpha.shape[0], fx0 + o_alpha.shape[1]
        cy0, cx0, cy1, cx1 = max(fy0, 0), max(fx0, 0), min(fy1, height), min(fx1, width)
        if cy1 > cy0 and cx1 > cx0:
            a = o_alpha[cy0 - fy0:cy1 - fy0, cx0 - fx0:cx1 - fx0]
            src = o_rgb[cy0 - fy0:cy1 - fy0, cx0 - fx0:cx1 - fx0]
            dst = out[cy0:cy1, cx0:cx1]
            out[cy0:cy1, cx0:cx1] = a[..., None] * src + (1.0 - a[..., None]) * dst
            union[cy0:cy1, cx0:cx1] = 1.0 - (1.0 - union[cy0:cy1, cx0:cx1]) * (1.0 - a)
        placements.append(Placement(
            key=obj.key, class_id=int(obj.class_id),
            class_name=coco_objects.COCO_CLASSES[obj.class_id], image_id=str(obj.image_id),
            x0=max(left, 0), y0=max(top, 0), x1=min(left + ow, width),
            y1=min(top + oh, height), height_px=int(oh), flipped=flip,
            on_road=anchor is not None, anchor=anchor))
    pasted = union >= 0.5
    ood_label = np.where(label == VOID, VOID, IN_DIST).astype(np.uint8)
    ood_label[pasted] = OOD
    semantic = label.astype(np.uint8, copy=True)
    semantic[pasted] = VOID
    rgb_out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return PasteResult(rgb_out, ood_label, semantic, union, placements)


def road_ids(class_names) -> tuple:
    """Class ids named ``road`` (any case): where objects are placed on the ground."""
    return tuple(i for i, n in enumerate(class_names) if n.strip().lower() == 'road')


def paste_objects(rgb, label, objects, rng, n_objects=(1, 3), on_road_fraction=0.5,
                  height_frac=(0.08, 0.4), feather_px=2.0, road_ids=()) -> tuple:
    """
    Paste random objects into a frame: (rgb_out uint8, ood_label 0/1/255, semantic_out).

    See ``compose_ood_frame`` for the arguments; deterministic given the state of ``rng``.
    """
    res = compose_ood_frame(rgb, label, objects, rng, n_objects=n_objects,
                            on_road_fraction=on_road_fraction, height_frac=height_frac,
                            feather_px=feather_px, road_ids=road_ids)
    return res.rgb, res.ood_label, res.semantic


def frame_rng(seed: int, frame_index: int) -> np.random.Generator:
    """Return the generator of one frame, derived from (seed, frame index) only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(frame_index)]))


def _write_image(path: Path, img: np.ndarray, params=()) -> None:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(path.suffix, img, list(params))
    if not ok:
        raise OodSegError(f'cannot encode image {path}')
    try:
        buf.tofile(str(path))
    except OSError as exc:
        raise OodSegError(f'cannot write {path}: {exc.strerror or exc}') from None


def make_ood_set(dataset, coco_root, split, group, out_dir, seed, objects_per_frame=(1, 3),
                 limit=None, on_road_fraction=0.5, height_frac=(0.08, 0.4), feather_px=2.0,
                 overwrite=False, progress=None, coco_map=None, placement='scene',
                 procedural_fraction=0.5, ignore_band_px=0, jpeg_quality=None,
                 road_fraction=0.5) -> dict:
    """
    Write an OoD set: every (sorted) frame of ``split`` with ``group`` objects pasted.

    ``dataset``: ``KIND:PATH``, an opened dataset, or a plain path (a CamVid folder).
    COCO objects of a category that is one of the dataset's classes are left out
    (``coco_map``: more ``{COCO category: [class names]}``). The split is checked (labels,
    image sizes) before anything is written.

    ``placement``: ``scene`` (anywhere, see :func:`compose_ood_frame`) or ``road`` (road
    obstacles at a perspective-consistent size, COCO and procedural objects, see
    :mod:`ood_seg_ros.tools.data.road_obstacles`; ``on_road_fraction`` / ``height_frac`` /
    ``feather_px`` do not apply there); ``mixed``: road placement for a share
    ``road_fraction`` of the frames, scene placement for the rest.

    Training-proxy realism (:mod:`ood_seg_ros.tools.data.proxy_realism`): ``ignore_band_px``
    leaves a band around each object out of the losses (255 in both labels);
    ``jpeg_quality`` ``(min, max)`` re-encodes each composed frame as JPEG at a random
    quality before it is written (``None``: no re-encode; the defaults write the same
    frames as before these options).

    Frame ``i`` uses ``frame_rng(seed, i)``, so a frame's content does not depend on ``limit``.
    ``progress`` optionally wraps the frame iterator, called as ``progress(iterable, total)``
    (e.g. tqdm). An existing non-empty ``out_dir`` is refused unless ``overwrite``, which
    deletes its old images, labels, semantic maps and info.json first. Returns a summary dict.
    """
    if int(seed) < 0:
        raise OodSegError(f'seed must be >= 0, got {seed}')
    if placement not in PLACEMENTS:
        raise OodSegError(f'placement must be one of {PLACEMENTS}, got {placement!r}')
    if limit is not None and int(limit) < 1:
        raise OodSegError(f'limit must be >= 1, got {limit}')
    if int(ignore_band_px) < 0:
        raise OodSegError(f'ignore band must be >= 0 px, got {ignore_band_px}')
    if jpeg_quality is not None:
        jpeg_quality = _check_range('jpeg_quality', jpeg_quality, 1, 100)
    if not 0.0 <= road_fraction <= 1.0:
        raise OodSegError(f'road_fraction must lie in [0, 1], got {road_fraction}')
    ds = open_dataset(dataset)
    pairs = ds.list_pairs(split)
    if limit is not None:
        pairs = pairs[:int(limit)]
    ds.check_split(split, len(pairs))
    roads = road_ids(ds.classes.names)
    objects = coco_objects.load_objects(coco_root, group, excluded=ds.coco_excluded(coco_map))
    if not objects:
        raise OodSegError(f'COCO group {group} in {coco_root} has no usable objects')
    out_dir = Path(out_dir)
    dirs = {k: out_dir / k for k in ('images', 'labels', 'semantic')}
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OodSegError(f'output {out_dir} exists and is not a folder')
        if any(out_dir.iterdir()):
            if not overwrite:
                raise OodSegError(f'output folder {out_dir} is not empty (pass --overwrite / '
                                  f'overwrite=True to replace its files)')
            for d in dirs.values():
                if d.is_dir():
                    for p in d.iterdir():
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                            p.unlink()
            (out_dir / 'info.json').unlink(missing_ok=True)
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    frames = []
    n_pasted = n_ood = n_void = n_pixels = 0
    iterator = enumerate(pairs)
    if progress is not None:
        iterator = progress(iterator, len(pairs))
    for index, (img_path, lab_path) in iterator:
        rgb, label = ds.load_pair(img_path, lab_path)
        rng = frame_rng(seed, index)
        where = proxy_realism.choose_placement(placement, rng, road_fraction)
        if where == 'road':
            img, ood, sem, boxes = road_obstacles.place_on_road(
                rgb, label, roads, objects, rng, n_objects=objects_per_frame,
                procedural_fraction=procedural_fraction, void=VOID)
            res = PasteResult(img, ood, sem, None, [b for b in boxes if b])
        else:
            res = compose_ood_frame(rgb, label, objects, rng, n_objects=objects_per_frame,
                                    on_road_fraction=on_road_fraction,
                                    height_frac=height_frac, feather_px=feather_px,
                                    road_ids=roads)
        res = _finish_proxy_frame(res, rng, ignore_band_px, jpeg_quality)
        name = ds.frame_name(img_path)
        _write_image(dirs['images'] / f'{name}.jpg', res.rgb,
                     (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
        _write_image(dirs['labels'] / f'{name}.png', res.ood_label)
        _write_image(dirs['semantic'] / f'{name}.png', res.semantic)
        ood_px = int((res.ood_label == OOD).sum())
        n_pasted += len(res.placements)
        n_ood += ood_px
        n_void += int((res.ood_label == VOID).sum())
        n_pixels += res.ood_label.size
        frames.append({'index': index, 'name': name, 'ood_pixels': ood_px,
                       'placement': where,
                       'objects': [p if isinstance(p, dict) else asdict(p)
                                   for p in res.placements]})
    counts = {
        'n_frames': len(pairs), 'n_source_objects': len(objects), 'n_objects_pasted': n_pasted,
        'n_ood_pixels': n_ood, 'n_void_pixels': n_void, 'n_pixels': n_pixels,
        'ood_pixel_fraction': n_ood / max(n_pixels, 1),
    }
    info = {
        'seed': int(seed), 'dataset': ds.identity, 'split': split,
        'class_names': list(ds.classes.names), 'group': group, 'placement': placement,
        'procedural_fraction': procedural_fraction if placement == 'road' else 0.0,
        'group_description': coco_objects.GROUPS.get(group, group),
        'objects_per_frame': list(objects_per_frame), 'on_road_fraction': on_road_fraction,
        'height_frac': list(height_frac), 'feather_px': feather_px, 'limit': limit,
        'road_fraction': road_fraction if placement == 'mixed' else None,
        'ignore_band_px': int(ignore_band_px),
        'jpeg_quality': list(jpeg_quality) if jpeg_quality is not None else None,
        'counts': counts, 'frames': frames,
    }
    try:
        (out_dir / 'info.json').write_text(json.dumps(info, indent=1))
    except OSError as exc:
        raise OodSegError(f'cannot write {out_dir / "info.json"}: {exc.strerror}') from None
    return {'out_dir': str(out_dir), 'seed': int(seed), 'split': split, 'group': group,
            **counts}


def _finish_proxy_frame(res: PasteResult, rng, band_px: int, jpeg_quality) -> PasteResult:
    """Apply the ignore band and the JPEG re-encode (no draw from ``rng`` when off)."""
    if band_px:
        res.ood_label, res.semantic = proxy_realism.ignore_band(res.ood_label, res.semantic,
                                                                band_px, VOID)
    if jpeg_quality is not None:
        q = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
        res.rgb = proxy_realism.jpeg_reencode(res.rgb, q)
    return res


class OodSample(NamedTuple):
    """One OoD frame: rgb uint8 (H, W, 3), ood_label uint8 (H, W) 0/1/255, semantic or None."""

    name: str
    rgb: np.ndarray
    ood_label: np.ndarray
    semantic: Optional[np.ndarray]


LAYOUTS_HELP = ('accepted layouts: (a) images/<name>.jpg|png + labels/<name>.png (0/1/255) '
                '[+ semantic/<name>.png], (b) RoadAnomaly frames/<name>.jpg + '
                'frames/<name>.labels/labels_semantic.png')


def image_files(folder: Path) -> dict:
    """Map name (file stem) -> path of the images in ``folder``; two with one stem fail."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in out:
                raise OodSegError(f'two images named {p.stem} in {folder}')
            out[p.stem] = p
    return out


class OodDataset:
    """
    Read an OoD test set in our layout (a) or the RoadAnomaly layout (b), sorted by name.

    (a) ``images/<name>.jpg|png`` + ``labels/<name>.png`` (0 in-dist, 1 OoD, 255 void) and an
    optional ``semantic/<name>.png`` (train ids of the source dataset, 255 void; checked
    against the class count: ``n_classes``, else ``class_names`` of its ``info.json``).
    (b) ``frames/<name>.jpg`` +
    ``frames/<name>.labels/labels_semantic.png``, where 2 (anomaly) -> 1 and all else -> 0.
    """

    def __init__(self, root, n_classes: Optional[int] = None):
        """Detect the layout and check that every image has its label files."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise OodSegError(f'OoD set folder {self.root} does not exist')
        self.n_classes = n_classes or _info_classes(self.root)
        self._semantic = {}
        if (self.root / 'images').is_dir() and (self.root / 'labels').is_dir():
            self.layout = 'images_labels'
            images = image_files(self.root / 'images')
            labels = {}
            for name in images:
                labels[name] = self.root / 'labels' / f'{name}.png'
                if not labels[name].is_file():
                    raise OodSegError(f'image {images[name]} has no label {labels[name]}')
            sem_dir = self.root / 'semantic'
            if sem_dir.is_dir():
                for name in images:
                    self._semantic[name] = sem_dir / f'{name}.png'
                    if not self._semantic[name].is_file():
                        raise OodSegError(f'image {images[name]} has no semantic label '
                                          f'{self._semantic[name]}')
        elif (self.root / 'frames').is_dir():
            self.layout = 'road_anomaly'
            images = image_files(self.root / 'frames')
            labels = {}
            for name in images:
                labels[name] = self.root / 'frames' / f'{name}.labels' / 'labels_semantic.png'
                if not labels[name].is_file():
                    raise OodSegError(f'image {images[name]} has no label {labels[name]}')
        else:
            raise OodSegError(f'unknown OoD set layout in {self.root}; {LAYOUTS_HELP}')
        if not images:
            raise OodSegError(f'OoD set {self.root} holds no images; {LAYOUTS_HELP}')
        self.names = sorted(images)
        self._images, self._labels = images, labels

    def __len__(self) -> int:
        """Return the number of frames."""
        return len(self.names)

    @property
    def has_semantic(self) -> bool:
        """Return whether samples carry a semantic (train id) label."""
        return bool(self._semantic)

    def __getitem__(self, index: int) -> OodSample:
        """Load frame ``index`` as an ``OodSample`` (labels checked)."""
        name = self.names[index]
        rgb = read_rgb(self._images[name])
        raw = read_gray(self._labels[name])
        label_path = self._labels[name]
        if raw.shape != rgb.shape[:2]:
            raise OodSegError(f'label {label_path} is {raw.shape[1]}x{raw.shape[0]} but image '
                              f'{self._images[name]} is {rgb.shape[1]}x{rgb.shape[0]} (WxH)')
        semantic = None
        if self.layout == 'road_anomaly':
            ood_label = (raw == 2).astype(np.uint8)
        else:
            bad = (raw != IN_DIST) & (raw != OOD) & (raw != VOID)
            if bad.any():
                raise OodSegError(f'label {label_path} has values '
                                  f'{np.unique(raw[bad])[:5].tolist()}, expected 0, 1 or 255')
            ood_label = raw
            if name in self._semantic:
                sem_path = self._semantic[name]
                semantic = read_gray(sem_path)
                if semantic.shape != raw.shape:
                    raise OodSegError(f'semantic label {sem_path} is {semantic.shape[1]}x'
                                      f'{semantic.shape[0]} but image is {rgb.shape[1]}x'
                                      f'{rgb.shape[0]} (WxH)')
                n = self.n_classes or VOID
                bad = (semantic >= n) & (semantic != VOID)
                if bad.any():
                    raise OodSegError(f'semantic label {sem_path} has values '
                                      f'{np.unique(semantic[bad])[:5].tolist()} outside '
                                      f'0..{n - 1} and 255')
        return OodSample(name, rgb, ood_label, semantic)


def _info_classes(root: Path) -> Optional[int]:
    """Return the number of classes an OoD set's ``info.json`` names (None: not recorded)."""
    try:
        doc = json.loads((root / 'info.json').read_text())
    except (OSError, ValueError):
        return None
    names = doc.get('class_names') if isinstance(doc, dict) else None
    return len(names) if isinstance(names, list) and names else None
