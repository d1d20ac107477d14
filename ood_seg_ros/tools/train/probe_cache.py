"""
Probe training on cached base features: the fast CPU path of ``train-probes``.

The probes read only the ASPP branches and the pooled vector of the frozen base
(:meth:`OodSegNet.features`), and the base is in eval mode: for a fixed set of inputs its
features are fixed. So they are computed once per training frame and scale (with a
seeded horizontal flip) and the probes train on them for many epochs, at a fraction of
the cost of running the backbone every step. Same probes; the loss (the sum of the
per-probe cross-entropies) is taken at decoder resolution (stride ``LOSS_STRIDE``, the
resolution the graph scores at) against nearest-downsampled labels, 16x fewer pixels
than at label resolution; the augmentation is limited to the cached scales and flips.

With ``distill`` (``train-probes --distill``) the new probes learn the init bundle's
probe logits instead of the labels: those of the trained probes (the teacher) on the same
cached inputs, at decoder resolution, are cached beside the features, and the loss is the
mean squared logit difference per probe (all pixels and classes, no labels), summed over
the probes. The MOoSe scores read the probes' logits themselves (their energy, their
disagreement with the global head), so the logits, not the labels, are what a lighter
probe has to keep. The epoch kept is the one closest to the teacher on the val split
(scale 1, unflipped), not the one with the best probe mIoU.
"""

import copy
import math
from pathlib import Path
import time
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augment import IGNORE
from .loop import (_class_weights, evaluate_miou, load_train_data, recalibrate_hint,
                   stage_provenance, TrainConfig)
from ...errors import OodSegError
from ...model import load_bundle
from ...model.bundle import save_retrained_bundle
from ...model.deeplab import upsample

LOSS_STRIDE = 4  # decoder resolution: the probes' loss is taken where the graph scores


@torch.no_grad()
def cache_features(model, images: np.ndarray, labels: np.ndarray, scales: Sequence[float],
                   seed: int = 0, batch_size: int = 4, log=print, teacher=None,
                   flip: bool = True):
    """
    Frozen-base probe inputs for every frame at every scale.

    Returns a list of (branches float16 (4, A, h, w), pooled float16 (A, 1, 1),
    label uint8 (H' / LOSS_STRIDE, W' / LOSS_STRIDE), nearest-downsampled) with a seeded
    horizontal flip per frame and scale (none with ``flip=False``). With ``teacher`` (the
    four trained probes, eval mode) each entry has a fourth member: their logits on the
    cached (float16-rounded) inputs at the label's size, float16 (4, C, H', W').
    """
    rng = np.random.default_rng(seed)
    out = []
    n = len(images)
    for s in scales:
        h, w = (int(round(v * s)) for v in images.shape[1:3])
        t0 = time.time()
        for i in range(0, n, batch_size):
            x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).float() / 255
            y = torch.from_numpy(labels[i:i + batch_size])[:, None].float()
            if (h, w) != tuple(x.shape[-2:]):
                x = F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False)
                y = F.interpolate(y, size=(h, w), mode='nearest')
            flipped = (rng.random(len(x)) < 0.5) & flip
            x[flipped] = x[flipped].flip(-1)
            y[flipped] = y[flipped].flip(-1)
            xn = (x - model.mean) / model.std
            _, high = model.backbone(xn)
            _, branches, pooled = model.aspp(high)
            br = torch.stack(branches, 1).half()
            y = F.interpolate(y, size=(math.ceil(h / LOSS_STRIDE), math.ceil(w / LOSS_STRIDE)),
                              mode='nearest')
            pooled = pooled.half()
            extra = ([teacher_logits(teacher, br, pooled, y.shape[-2:])]
                     if teacher is not None else [])
            for k in range(len(x)):
                out.append((br[k], pooled[k], y[k, 0].byte(), *(e[k] for e in extra)))
        log(f'cached probe inputs at scale {s:g} ({h}x{w}): {n} frames, '
            f'{time.time() - t0:.0f} s')
    return out


@torch.no_grad()
def teacher_logits(probes, branches: torch.Tensor, pooled: torch.Tensor,
                   size: Sequence[int]) -> torch.Tensor:
    """
    Logits (B, P, C, H', W') float16 of ``probes`` on cached inputs, upsampled to ``size``.

    ``branches`` (B, P, A, h, w) and ``pooled`` (B, A, 1, 1) as cached (float16 values);
    probe ``k`` reads branch ``k``, upsampled as the training loss upsamples the student.
    """
    br, pl = branches.float(), pooled.float()
    return torch.stack([upsample(p(br[:, k], pl), tuple(size)) for k, p in enumerate(probes)],
                       1).half()


def distill_loss(probes, branches: torch.Tensor, pooled: torch.Tensor,
                 target: torch.Tensor) -> torch.Tensor:
    """
    Σ over the probes of the mean squared difference of their logits and ``target``'s.

    ``target`` (B, P, C, H', W'): the teacher's logits (:func:`teacher_logits`); each
    probe's logits are upsampled to its size first.
    """
    size = target.shape[-2:]
    return sum(F.mse_loss(upsample(p(branches[:, k], pooled), size), target[:, k])
               for k, p in enumerate(probes))


@torch.no_grad()
def distill_val_error(probes, data) -> float:
    """Mean over ``data`` (cache entries with teacher logits) of :func:`distill_loss`."""
    was = probes.training
    probes.eval()
    err = [distill_loss(probes, br[None].float(), pl[None].float(), t[None].float()).item()
           for br, pl, _, t in data]
    probes.train(was)
    return float(np.mean(err))


def train_probes_cached(cfg: TrainConfig, scales: Sequence[float] = (0.75, 1.0, 1.25),
                        log=print) -> Dict:
    """Train fresh probes of ``cfg.model`` shape on cached features; save the bundle."""
    if cfg.stage != 'probes':
        raise OodSegError('cached features are for train-probes only')
    if not cfg.init_bundle:
        raise OodSegError('train-probes needs --init-bundle')
    torch.manual_seed(cfg.seed)
    b = load_bundle(cfg.init_bundle)
    model = b.model
    _, imgs, labs, vimgs, vlabs = load_train_data(cfg, model.config.class_names)
    teacher = None
    if cfg.distill:
        teacher = copy.deepcopy(model.probes).eval().requires_grad_(False)
        c = model.config
        shape = cfg.model or {'depth': c.probe_depth, 'width': c.probe_channels,
                              'separable': c.probe_separable}
        model.rebuild_probes(**shape)    # the student starts fresh, also at the same shape
    elif cfg.model:
        model.rebuild_probes(**cfg.model)
    model.freeze_base_for_probes()
    n_cls = model.config.n_classes
    class_w = _class_weights(torch.from_numpy(labs), n_cls, cfg.class_weights, 'cpu')
    model.eval()
    data = cache_features(model, imgs, labs, scales, cfg.seed, log=log, teacher=teacher)
    vdata = (cache_features(model, vimgs, vlabs, [1.0], log=log, teacher=teacher, flip=False)
             if teacher is not None else None)
    model.freeze_base_for_probes()
    params = list(model.probes.parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                          weight_decay=cfg.weight_decay)
    bs = cfg.batch_size
    steps_per_epoch = math.ceil(len(data) / bs)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # scores: probe mIoU (>= 0), or minus the distillation error (any negative value)
    best = -math.inf if teacher is not None else -1.0
    best_state, stale, step, epoch = None, 0, 0, 0
    t_start = time.time()
    history = []
    while step < total:
        model.freeze_base_for_probes()
        order = torch.randperm(len(data), generator=gen).tolist()
        # Same-size samples batch together (scales differ in size).
        order.sort(key=lambda i: tuple(data[i][0].shape[-2:]))
        chunks = [order[i:i + bs] for i in range(0, len(order), bs)]
        perm = torch.randperm(len(chunks), generator=gen).tolist()
        t0, losses = time.time(), []
        for ci in perm:
            ids = [i for i in chunks[ci] if data[i][0].shape == data[chunks[ci][0]][0].shape]
            br = torch.stack([data[i][0] for i in ids]).float()
            pooled = torch.stack([data[i][1] for i in ids]).float()
            y = torch.stack([data[i][2] for i in ids]).long()
            lr = cfg.lr * (1 - min(1.0, step / max(1, total))) ** 0.9
            for g in opt.param_groups:
                g['lr'] = lr
            if teacher is not None:
                target = torch.stack([data[i][3] for i in ids]).float()
                loss = distill_loss(model.probes, br, pooled, target)
            else:
                loss = sum(F.cross_entropy(upsample(probe(br[:, k], pooled), y.shape[-2:]), y,
                                           ignore_index=IGNORE, weight=class_w)
                           for k, probe in enumerate(model.probes))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if step >= total:
                break
            if cfg.time_limit_min and time.time() - t_start > cfg.time_limit_min * 60:
                total = step
                break
        epoch += 1
        rec = {'epoch': epoch, 'step': step, 'loss': float(np.mean(losses)),
               'seconds': round(time.time() - t0, 1)}
        if epoch % max(1, cfg.val_every) == 0 or step >= total:
            if teacher is not None:
                rec['val_distill_mse'] = distill_val_error(model.probes, vdata)
                score = -rec['val_distill_mse']
            else:
                score = _val_probe_miou(model, vimgs, vlabs, n_cls)
                rec['val_probes_mean_miou'] = score
            if score > best:
                best, stale = score, 0
                best_state = {k: v.clone() for k, v in model.probes.state_dict().items()}
            else:
                stale += cfg.val_every
                if cfg.patience and stale >= cfg.patience:
                    log(f'stopping: no validation gain for {stale} epochs')
                    history.append(rec)
                    log(rec)
                    break
        history.append(rec)
        log(rec)
    if best_state is not None:
        model.probes.load_state_dict(best_state)
    extra = {}
    if teacher is not None:
        # The record keeps the kept probes' mIoU beside their distance to the teacher.
        mse = -best
        extra = {'distill': {'teacher': Path(cfg.init_bundle).name, 'loss': 'mse_logits',
                             'best_val_mse': mse}}
        best = _val_probe_miou(model, vimgs, vlabs, n_cls)
        log(f'kept probes: val mean squared logit difference {mse:.4f} to the teacher, '
            f'val probe mIoU {best:.4f}')
    info = stage_provenance(b.info, cfg, torch.device('cpu'), {
        'epoch': epoch, 'steps': step, 'best_val_miou': best,
        'feature_cache': {'scales': list(scales), 'flip': 'random'}, 'history': history,
        **extra})
    final = out / 'bundle'
    model.eval()
    _, dropped = save_retrained_bundle(final, model, b.runtime, info)
    if dropped:
        log(recalibrate_hint(dropped))
    return {'bundle': str(final), 'best_val_miou': best, 'epochs': epoch, 'steps': step}


def _val_probe_miou(model, vimgs: np.ndarray, vlabs: np.ndarray, n_cls: int) -> float:
    """Mean val mIoU of the four probes."""
    val = evaluate_miou(model, torch.from_numpy(vimgs), torch.from_numpy(vlabs), n_cls,
                        batch_size=4, probes=True)
    return float(np.mean([val[f'probe{k}']['miou'] for k in range(4)]))
