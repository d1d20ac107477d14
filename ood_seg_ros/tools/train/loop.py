"""
Training loops for the base network, the MOoSe probes and entropy maximisation.

All three share one loop: data held on the device as uint8 tensors, batched GPU-side
augmentation, AMP on CUDA, a JSONL metrics log, a checkpoint every epoch (resumable),
validation mIoU every epoch with the best model kept as a bundle, and
DistributedDataParallel when started under ``torchrun`` (WORLD_SIZE > 1).
"""

from dataclasses import asdict, dataclass, field
import json
import math
import os
from pathlib import Path
import platform
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .augment import (augment_batch, class_groups, IGNORE, PhotoAug, photometric_batch,
                      to_input)
from ..data.datasets import open_dataset
from ..data.ood_sets import OodDataset
from ..metrics import miou
from ..protocol import trained_data, trained_splits
from ...errors import OodSegError
from ...model import build_model, load_bundle, ModelConfig, save_bundle
from ...model.bundle import save_retrained_bundle


@dataclass
class TrainConfig:
    """Options of one training run (stored in checkpoints and bundles)."""

    stage: str = 'base'                 # base | probes | entropy
    dataset: str = ''                   # KIND:PATH (ood_seg_ros.tools.data.datasets)
    camvid: str = ''                    # short for dataset='camvid:PATH'
    train_splits: List[str] = field(default_factory=lambda: ['train'])
    val_split: str = 'val'
    ood_proxy: str = ''                 # entropy: folder from make-ood-set (group a)
    init_bundle: str = ''               # probes / entropy: starting bundle
    out: str = 'runs/base'
    epochs: int = 100
    batch_size: int = 8
    lr: float = 0.01
    weight_decay: float = 1e-4
    optimizer: str = 'sgd'              # sgd | adam | adamw
    crop: List[int] = field(default_factory=lambda: [360, 480])
    scale: List[float] = field(default_factory=lambda: [0.5, 2.0])
    class_weights: str = 'none'         # none | sqrt_median_freq
    patience: int = 0                   # probes: stop after this many epochs w/o gain
    ood_lambda: float = 0.9
    ood_ratio: float = 0.1              # OoD proxy frames per in-distribution frame
    reference_loss: bool = False        # entropy: average over all pixels (reference)
    max_steps: int = 0                  # stop after this many steps (tests, smoke runs)
    subset: int = 0                     # use only the first N frames per split
    seed: int = 0
    device: str = 'auto'
    amp: bool = True
    time_limit_min: float = 0.0         # fit the schedule into this many minutes
    val_every: int = 1                  # validate every N epochs (and at the end)
    val_limit: int = 0                  # validate on the first N val frames only (0: all)
    model: Dict = field(default_factory=dict)   # ModelConfig overrides / probe shape
    imagenet: bool = True               # base: start from the backbone's ImageNet weights
    freeze_stages: int = 0              # base / entropy: first N backbone stages frozen
    train_part: str = 'all'             # entropy: all | decoder (backbone + ASPP frozen)
    ood_loss: str = 'entropy'           # entropy: entropy | energy (margin OE loss)
    m_in: float = -12.0                 # energy loss: in-distribution energy margin
    m_out: float = -6.0                 # energy loss: OoD energy margin
    energy_weight: float = 0.1          # energy loss: weight of the two hinge terms
    photometric: bool = False           # entropy: style augmentation (PhotoAug)
    distill: bool = False               # probes: learn the init bundle's probe logits

    def dataset_spec(self) -> str:
        """``KIND:PATH`` of the training data (``camvid`` is the short form)."""
        if self.dataset:
            return self.dataset
        if self.camvid:
            return f'camvid:{self.camvid}'
        raise OodSegError('no dataset given (--dataset KIND:PATH or --camvid DIR)')


def load_train_data(cfg: TrainConfig, class_names=None) -> tuple:
    """
    (dataset, train images, labels, val images, labels) of ``cfg``, checked.

    ``class_names``: the classes of the bundle a stage starts from; the dataset must have
    the same ones (a probe or entropy stage cannot change the classes).
    """
    ds = open_dataset(cfg.dataset_spec())
    if class_names is not None and tuple(class_names) != ds.classes.names:
        raise OodSegError(f'dataset {ds.identity} has classes {list(ds.classes.names)} but '
                          f'the bundle {Path(cfg.init_bundle).name} has {list(class_names)}')
    imgs, labs, _ = ds.load_split(cfg.train_splits)
    vimgs, vlabs, _ = ds.load_split([cfg.val_split])
    if cfg.subset:
        imgs, labs, vimgs, vlabs = (a[:cfg.subset] for a in (imgs, labs, vimgs, vlabs))
    if cfg.val_limit:
        vimgs, vlabs = vimgs[:cfg.val_limit], vlabs[:cfg.val_limit]
    return ds, imgs, labs, vimgs, vlabs


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; under torchrun, this rank's GPU."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise OodSegError('device cuda requested but no CUDA GPU is available')
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    return torch.device(name)


def _dist():
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world > 1 and not torch.distributed.is_initialized():
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return world, rank


def confusion(pred: torch.Tensor, gt: torch.Tensor, n: int) -> torch.Tensor:
    """Confusion matrix (n, n) [gt, pred] over pixels with gt != 255."""
    valid = gt != IGNORE
    idx = gt[valid] * n + pred[valid]
    return torch.bincount(idx, minlength=n * n).reshape(n, n)


@torch.no_grad()
def evaluate_miou(model, images: torch.Tensor, labels: torch.Tensor, n_classes: int,
                  batch_size: int = 8, probes: bool = True) -> Dict:
    """Compute mIoU of the global head (and each probe) on uint8 images (N, H, W, 3)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    heads = ['global'] + ([f'probe{k}' for k in range(4)] if probes else [])
    confs = {h: torch.zeros(n_classes, n_classes, dtype=torch.long, device=dev)
             for h in heads}
    for i in range(0, len(images), batch_size):
        x = to_input(images[i:i + batch_size].to(dev))
        y = labels[i:i + batch_size].to(dev).long()
        with torch.autocast(dev.type, enabled=dev.type == 'cuda'):
            logits, probe_logits = model.forward_train(x, with_probes=probes)
        confs['global'] += confusion(logits.argmax(1), y, n_classes)
        for k, z in enumerate(probe_logits):
            confs[f'probe{k}'] += confusion(z.argmax(1), y, n_classes)
    if was_training:
        model.train()
    out = {}
    for h, c in confs.items():
        iou = miou(c.cpu().numpy())['iou']
        out[h] = {'miou': float(np.nanmean(iou)), 'per_class': iou.tolist()}
    return out


def _class_weights(labels: torch.Tensor, n: int, mode: str, device) -> Optional[torch.Tensor]:
    if mode == 'none':
        return None
    counts = torch.bincount(labels[labels != IGNORE].long().flatten(), minlength=n).double()
    freq = counts / counts.sum()
    # The median is over the classes present; a class absent from the training data
    # (e.g. Cityscapes classes missing from a small subset) gets weight 1, not 0 / 0.
    present = counts > 0
    w = (freq[present].median() / freq.clamp_min(1e-12)).masked_fill(~present, 1.0)
    if mode == 'sqrt_median_freq':
        w = w.sqrt()
    elif mode != 'median_freq':
        raise OodSegError(f'class_weights must be none, sqrt_median_freq or median_freq, '
                          f'got {mode!r}')
    return w.float().to(device)


def recalibrate_hint(dropped: List[str]) -> str:
    """Return the log line after a retrained bundle left the init bundle's fitted constants out."""
    return (f'left out the init bundle\'s fitted constants ({", ".join(dropped)}): they '
            f'belong to the old weights. Before use run ood-seg sml-stats, then ood-seg '
            f'eval --calibrate and ood-seg train-meta on the new bundle')


def stage_provenance(info: dict, cfg: 'TrainConfig', device, extra: dict) -> dict:
    """
    Bundle ``info`` with this stage's record added: ``train_<stage>`` and ``trained_splits``.

    The record holds the training config (folder names, no machine paths), the device and
    ``extra`` (epochs, best validation mIoU, ...).
    """
    info = dict(info)
    c = asdict(cfg)
    for key in ('camvid', 'out', 'init_bundle', 'ood_proxy'):  # no machine paths
        c[key] = Path(c[key]).name if c[key] else ''
    kind, _, path = cfg.dataset_spec().partition(':')
    c['dataset'] = f'{kind}:{Path(path).name}'
    info[f'train_{cfg.stage}'] = {'config': c, 'device': _device_name(device), **extra}
    info['trained_data'] = {k: sorted(v) for k, v in sorted(trained_data(info).items())}
    info['trained_splits'] = sorted(trained_splits(info))
    return info


class Trainer:
    """One training run of the stage named in ``cfg.stage``."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, log=print):
        if cfg.distill:
            raise OodSegError('distillation trains on cached features: add --cache-features '
                              '(train_probes_cached)')
        self.cfg = cfg
        self.log = log
        self.world, self.rank = _dist()
        self.device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed + self.rank)
        self.out = Path(cfg.out)
        self._load_data()
        self._build_model()
        if self.rank == 0:  # after the data and model are checked: nothing half-written
            self.out.mkdir(parents=True, exist_ok=True)
        self.epoch = 0
        self.step = 0
        self.best = -1.0
        self.history = []
        if resume:
            self._resume()

    # -- set-up ----------------------------------------------------------------------
    def _load_data(self):
        cfg = self.cfg
        names = None
        if cfg.stage != 'base' and cfg.init_bundle:
            from ...model.bundle import read_bundle_json
            names = read_bundle_json(cfg.init_bundle)['config'].get('class_names')
        self.dataset, imgs, labs, vimgs, vlabs = load_train_data(cfg, names)
        dev = self.device
        self.images = torch.from_numpy(imgs).to(dev)
        self.labels = torch.from_numpy(labs).to(dev)
        self.ood = torch.zeros_like(self.labels)  # 1 where a pixel is OoD proxy
        self.val_images = torch.from_numpy(vimgs)
        self.val_labels = torch.from_numpy(vlabs)
        self.n_id = len(imgs)
        if cfg.stage == 'entropy':
            self._load_proxy()

    def _load_proxy(self):
        cfg = self.cfg
        if not cfg.ood_proxy:
            raise OodSegError('entropy maximisation needs --ood-proxy DIR '
                              '(ood-seg make-ood-set --group a)')
        ds = OodDataset(cfg.ood_proxy, n_classes=len(self.dataset.classes.names))
        n = len(ds) if not cfg.subset else min(len(ds), cfg.subset)
        imgs, sems, oods = [], [], []
        for i in range(n):
            s = ds[i]
            if s.semantic is None:
                raise OodSegError(f'{cfg.ood_proxy}: OoD proxy frame {s.name} has no '
                                  f'semantic label (make it with ood-seg make-ood-set)')
            imgs.append(s.rgb)
            sems.append(s.semantic)
            oods.append((s.ood_label == 1).astype(np.uint8))
        dev = self.device
        self.images = torch.cat([self.images, torch.from_numpy(np.stack(imgs)).to(dev)])
        self.labels = torch.cat([self.labels, torch.from_numpy(np.stack(sems)).to(dev)])
        self.ood = torch.cat([self.ood, torch.from_numpy(np.stack(oods)).to(dev)])

    def _build_model(self):
        cfg = self.cfg
        if cfg.stage == 'base':
            mcfg = ModelConfig.from_dict({**self.dataset.classes.to_config(), **cfg.model})
            self.model = build_model(mcfg.validate(), imagenet=cfg.imagenet)
            self.provenance = {}
        else:
            if not cfg.init_bundle:
                raise OodSegError(f'stage {cfg.stage} needs --init-bundle (a base bundle)')
            b = load_bundle(cfg.init_bundle)
            self.model = b.model
            self.provenance = b.info
            self.init_runtime = b.runtime
        if cfg.stage == 'probes' and cfg.model:
            self.model.rebuild_probes(**cfg.model)
        self.model.to(self.device)
        if cfg.stage == 'probes':
            self.model.freeze_base_for_probes()
            params = list(self.model.probes.parameters())
        else:
            check_oe_options(cfg)
            if cfg.train_part == 'decoder':
                freeze_encoder(self.model)
            # Base and entropy stages train the segmentation network only; the probes
            # (trained in their own stage) stay frozen, so DDP sees no unused parameters.
            if cfg.freeze_stages:
                self.model.backbone.freeze_stages(cfg.freeze_stages)
            self._train_mode()
            params = [p for p in self.model.base_parameters() if p.requires_grad]
            for p in self.model.probes.parameters():
                p.requires_grad_(False)
        self.params = params
        self.photo = PhotoAug(class_groups=class_groups(self.dataset.classes.names))
        if cfg.optimizer == 'sgd':
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9,
                                       weight_decay=cfg.weight_decay, nesterov=True)
        elif cfg.optimizer in ('adam', 'adamw'):
            klass = torch.optim.Adam if cfg.optimizer == 'adam' else torch.optim.AdamW
            self.opt = klass(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            raise OodSegError(f'optimizer must be sgd, adam or adamw, got {cfg.optimizer!r}')
        self.amp = cfg.amp and self.device.type == 'cuda'
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp)
        n = self.model.config.n_classes
        self.class_w = _class_weights(self.labels[:self.n_id], n, cfg.class_weights,
                                      self.device)
        self.ddp = TrainForward(self.model)
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.ddp, device_ids=[self.device.index] if self.device.index is not None
                else None, find_unused_parameters=cfg.stage == 'probes')

    def _train_mode(self):
        """Training mode; with ``train_part='decoder'`` backbone and ASPP stay in eval."""
        self.model.train()
        if self.cfg.train_part == 'decoder':
            self.model.backbone.eval()
            self.model.aspp.eval()

    # -- schedule --------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (over all ranks)."""
        n = self.n_id + (round(self.n_id * self.cfg.ood_ratio)
                         if self.cfg.stage == 'entropy' else 0)
        return max(1, n // (self.cfg.batch_size * self.world))

    def total_steps(self) -> int:
        """Planned optimiser steps of the run."""
        total = self.steps_per_epoch() * self.cfg.epochs
        if self.cfg.max_steps:
            total = min(total, self.cfg.max_steps)
        if getattr(self, 'time_steps', 0):
            total = min(total, self.time_steps)
        return total

    def _lr(self) -> float:
        if self.cfg.stage == 'entropy':
            return self.cfg.lr  # constant, as the reference
        frac = min(1.0, self.step / max(1, self.total_steps()))
        return self.cfg.lr * (1 - frac) ** 0.9  # poly

    def _epoch_indices(self, gen: torch.Generator) -> torch.Tensor:
        ids = torch.randperm(self.n_id, generator=gen)
        n_ood = len(self.images) - self.n_id
        if self.cfg.stage == 'entropy' and n_ood:
            k = round(self.n_id * self.cfg.ood_ratio)
            ood_ids = self.n_id + torch.randint(n_ood, (k,), generator=gen)
            ids = torch.cat([ids, ood_ids])[torch.randperm(self.n_id + k, generator=gen)]
        per_rank = len(ids) // self.world
        return ids[self.rank * per_rank:(self.rank + 1) * per_rank]

    # -- loss ------------------------------------------------------------------------
    def _loss(self, x, y, ood) -> torch.Tensor:
        cfg = self.cfg
        logits, probe_logits = self.ddp(x, cfg.stage == 'probes')
        if cfg.stage == 'probes':
            return sum(F.cross_entropy(z.float(), y, ignore_index=IGNORE,
                                       weight=self.class_w) for z in probe_logits)
        logits = logits.float()
        if cfg.stage == 'base':
            return F.cross_entropy(logits, y, ignore_index=IGNORE, weight=self.class_w)
        if cfg.ood_loss == 'energy':
            return energy_margin_loss(logits, y, ood, cfg.m_in, cfg.m_out, cfg.energy_weight)
        return entropy_max_loss(logits, y, ood, cfg.ood_lambda, cfg.reference_loss)

    # -- run -------------------------------------------------------------------------
    def run(self) -> Dict:
        """Train to the end; return the final record (metrics and bundle paths)."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        for _ in range(self.epoch):  # keep the shuffling sequence on resume
            self._epoch_indices(gen)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.epoch)
        stale = 0
        t_start = time.time()
        step_seconds, step_cpu = [], []
        if cfg.device == 'auto' and self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        while self.epoch < cfg.epochs and self.step < self.total_steps():
            total = self.total_steps()
            ids = self._epoch_indices(gen)
            t0 = time.time()
            losses = []
            bar = tqdm(range(0, len(ids) - cfg.batch_size + 1, cfg.batch_size),
                       desc=f'{cfg.stage} epoch {self.epoch + 1}/{cfg.epochs}',
                       disable=True if self.rank != 0 else None, leave=False,
                       mininterval=2.0)
            for i in bar:
                if self.step >= total:
                    break
                t_step, c_step = time.time(), time.process_time()
                b = ids[i:i + cfg.batch_size].to(self.device)
                x, (y, ood) = augment_batch(self.images[b], [self.labels[b], self.ood[b]],
                                            tuple(cfg.crop), tuple(cfg.scale),
                                            generator=aug_gen)
                ood = ood == 1
                if cfg.photometric:
                    x = photometric_batch(x, y, self.photo, generator=aug_gen)
                for g in self.opt.param_groups:
                    g['lr'] = self._lr()
                with torch.autocast(self.device.type, enabled=self.amp):
                    loss = self._loss(x, y, ood)
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
                self.step += 1
                losses.append(loss.item())
                step_seconds.append(time.time() - t_step)
                step_cpu.append(time.process_time() - c_step)
                bar.set_postfix(loss=f'{losses[-1]:.3f}')
            self.epoch += 1
            if cfg.time_limit_min and self.epoch == 2 and losses:
                # Fit the rest of the schedule into the time budget, timed on epoch 2
                # (epoch 1 includes cuDNN autotuning and other warm-up).
                per_step = (time.time() - t0) / len(losses)
                left = cfg.time_limit_min * 60 - (time.time() - t_start)
                self.time_steps = self.step + max(0, int(left / per_step))
                self.log(f'time limit {cfg.time_limit_min} min: {per_step * 1000:.0f} ms/step, '
                         f'planning {self.total_steps()} steps')
            last = self.epoch >= cfg.epochs or self.step >= self.total_steps()
            record = {'epoch': self.epoch, 'step': self.step,
                      'loss': float(np.mean(losses)) if losses else math.nan,
                      'lr': self._lr(), 'seconds': round(time.time() - t0, 2)}
            if self.rank == 0 and not last and self.epoch % max(1, cfg.val_every):
                self.history.append(record)
                self.log(json.dumps(record))
            elif self.rank == 0:
                val = evaluate_miou(self.model, self.val_images, self.val_labels,
                                    self.model.config.n_classes,
                                    probes=cfg.stage == 'probes')
                key = 'probes_mean' if cfg.stage == 'probes' else 'global'
                if cfg.stage == 'probes':
                    val['probes_mean'] = {'miou': float(np.mean(
                        [val[f'probe{k}']['miou'] for k in range(4)]))}
                    self.model.freeze_base_for_probes()
                else:
                    self._train_mode()
                score = val[key]['miou']
                record['val_miou'] = score
                record['val'] = {k: v['miou'] for k, v in val.items()}
                self.history.append(record)
                with open(self.out / 'metrics.jsonl', 'a') as f:
                    f.write(json.dumps(record) + '\n')
                self.log(json.dumps({k: v for k, v in record.items() if k != 'val'}))
                if score > self.best:
                    self.best, stale = score, 0
                    self._save_bundle(self.out / 'best', {'val_miou': score,
                                                          'epoch': self.epoch})
                else:
                    stale += 1
                self._save_checkpoint()
                if cfg.patience and stale >= cfg.patience:
                    self.log(f'stopping: no {key} mIoU gain for {stale} epochs')
                    break
        final = self.out / 'bundle'
        if self.rank == 0:
            self._save_bundle(final, {'epoch': self.epoch, 'best_val_miou': self.best})
        return {'bundle': str(final), 'best_bundle': str(self.out / 'best'),
                'best_val_miou': self.best, 'epochs': self.epoch, 'steps': self.step,
                **step_timing(step_seconds, step_cpu, cfg)}

    def _save_bundle(self, path: Path, extra: dict):
        info = stage_provenance(self.provenance, self.cfg, self.device, extra)
        if self.cfg.stage == 'base':
            save_bundle(path, self.model, info=info)
            return
        _, dropped = save_retrained_bundle(path, self.model, self.init_runtime, info)
        if dropped and not getattr(self, '_told_dropped', False):
            self._told_dropped = True
            self.log(recalibrate_hint(dropped))

    def _save_checkpoint(self):
        """
        Write ``checkpoint.pt``: tensors and plain containers only.

        Everything in it (model, optimiser, scaler and RNG state, counters, config,
        history) loads with ``torch.load(weights_only=True)``, which runs no code from the
        file: a crafted checkpoint in a run folder cannot execute anything on --resume.
        """
        rng = {'torch': torch.get_rng_state()}
        if self.device.type == 'cuda':
            rng['cuda'] = torch.cuda.get_rng_state(self.device)
        state = {'model': self.model.state_dict(), 'opt': self.opt.state_dict(),
                 'scaler': self.scaler.state_dict(), 'epoch': self.epoch,
                 'step': self.step, 'best': self.best, 'cfg': asdict(self.cfg),
                 'history': self.history, 'rng': rng}
        tmp = self.out / 'checkpoint.pt.tmp'
        torch.save(state, tmp)
        os.replace(tmp, self.out / 'checkpoint.pt')

    def _resume(self):
        path = self.out / 'checkpoint.pt'
        if not path.exists():
            raise OodSegError(f'cannot resume: {path} does not exist')
        state = load_checkpoint(path, self.device)
        if state['cfg'].get('stage') != self.cfg.stage:
            raise OodSegError(f'{path} is a {state["cfg"].get("stage")} checkpoint, '
                              f'not {self.cfg.stage}')
        self.model.load_state_dict(state['model'])
        self.opt.load_state_dict(state['opt'])
        self.scaler.load_state_dict(state['scaler'])
        self.epoch, self.step, self.best = state['epoch'], state['step'], state['best']
        self.history = state.get('history', [])
        rng = state.get('rng') or {}
        if 'torch' in rng:
            torch.set_rng_state(rng['torch'].cpu())
        if 'cuda' in rng and self.device.type == 'cuda':
            torch.cuda.set_rng_state(rng['cuda'].cpu(), self.device)
        if self.cfg.stage == 'probes':
            self.model.freeze_base_for_probes()
        self.log(f'resumed from {path} at epoch {self.epoch}, step {self.step}')


def step_timing(seconds: List[float], cpu: List[float], cfg: TrainConfig) -> Dict:
    """
    Seconds per optimiser step of this run (median, the first step left out as warm-up).

    Wall seconds and process CPU seconds (all threads; on a shared machine the wall time
    grows with the load, the CPU time much less), with the batch size, crop, frozen
    stages, thread count and the 1-minute load average, so that a ``--max-steps`` run
    measures the cost of a schedule (``ood-seg train-base --json``).
    """
    def med(v):
        v = v[1:] if len(v) > 1 else v
        return round(float(np.median(v)), 3) if v else None

    return {'seconds_per_step': med(seconds), 'cpu_seconds_per_step': med(cpu),
            'timed_steps': max(0, len(seconds) - 1), 'batch_size': cfg.batch_size,
            'crop': list(cfg.crop),
            'freeze_stages': cfg.freeze_stages, 'train_part': cfg.train_part,
            'threads': torch.get_num_threads(),
            'load_avg_1min': round(os.getloadavg()[0], 2)}


def load_checkpoint(path, device='cpu') -> dict:
    """
    Read a training checkpoint with ``weights_only=True``: no code from the file runs.

    A pickle that asks for anything but tensors and plain containers (a crafted payload,
    or a checkpoint of an old version that stored arbitrary objects) is refused with one
    line naming the file.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: B902 - UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OodSegError(f'cannot resume from {path}: not a plain checkpoint of tensors '
                          f'and containers (refused to unpickle it: {first[:200]})') from None
    missing = [k for k in ('model', 'opt', 'scaler', 'epoch', 'step', 'best', 'cfg')
               if not isinstance(state, dict) or k not in state]
    if missing:
        raise OodSegError(f'cannot resume from {path}: missing entries {missing}')
    return state


class TrainForward(torch.nn.Module):
    """Routes ``forward`` to ``model.forward_train`` so DDP's gradient hooks see it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, with_probes: bool):
        """(global logits, probe logits), both at input size."""
        return self.model.forward_train(x, with_probes)


def entropy_max_loss(logits: torch.Tensor, y: torch.Tensor, ood: torch.Tensor,
                     lam: float = 0.9, reference: bool = False) -> torch.Tensor:
    """
    (1 - λ) CE on in-distribution pixels + λ mean -(1/C) Σ_c log p_c on OoD pixels.

    Default: the two terms are separately normalised means, void ignored. ``reference``:
    the reference code's single mean over all B·H·W pixels (void included as zero terms).
    """
    logp = F.log_softmax(logits, 1)
    ce = F.nll_loss(logp, y.masked_fill(ood, IGNORE), ignore_index=IGNORE, reduction='none')
    uniform = -logp.mean(1)
    in_mask = (y != IGNORE) & ~ood
    if reference:
        return ((1 - lam) * ce + lam * uniform * ood).mean()
    zero = logits.sum() * 0
    in_term = ce[in_mask].mean() if in_mask.any() else zero
    out_term = uniform[ood].mean() if ood.any() else zero
    return (1 - lam) * in_term + lam * out_term


def energy_margin_loss(logits: torch.Tensor, y: torch.Tensor, ood: torch.Tensor,
                       m_in: float = -12.0, m_out: float = -6.0,
                       weight: float = 0.1) -> torch.Tensor:
    """
    Energy-margin outlier exposure (Liu et al. 2020, as PEBAL and DenseHybrid use it).

    L = CE_in + weight * (mean_in max(0, E - m_in)^2 + mean_out max(0, m_out - E)^2),
    E = -logsumexp_c z_c per pixel. In-distribution pixels (label not void, not OoD) are
    pushed below ``m_in``, OoD pixels above ``m_out``; void pixels (including the ignore
    band around pastes) take no part. Each term is the mean over its own pixels.

    Default margins: from the shipped CamVid bundle's energies on the train proxy
    (in-distribution 5th percentile ~ -12.9, median -10.1; pasted objects median -6.6),
    so that the hinges act on most pixels of the wrong side.
    """
    energy = -torch.logsumexp(logits, 1)
    ce = F.cross_entropy(logits, y.masked_fill(ood, IGNORE), ignore_index=IGNORE,
                         reduction='none')
    in_mask = (y != IGNORE) & ~ood
    zero = logits.sum() * 0
    ce_term = ce[in_mask].mean() if in_mask.any() else zero
    in_hinge = F.relu(energy[in_mask] - m_in).pow(2).mean() if in_mask.any() else zero
    out_hinge = F.relu(m_out - energy[ood]).pow(2).mean() if ood.any() else zero
    return ce_term + weight * (in_hinge + out_hinge)


TRAIN_PARTS = ('all', 'decoder')
OOD_LOSSES = ('entropy', 'energy')


def check_oe_options(cfg: TrainConfig) -> None:
    """Refuse an unknown ``train_part`` / ``ood_loss`` or margins in the wrong order."""
    if cfg.train_part not in TRAIN_PARTS:
        raise OodSegError(f'train_part must be one of {TRAIN_PARTS}, got {cfg.train_part!r}')
    if cfg.ood_loss not in OOD_LOSSES:
        raise OodSegError(f'ood_loss must be one of {OOD_LOSSES}, got {cfg.ood_loss!r}')
    if cfg.ood_loss == 'energy' and not cfg.m_in < cfg.m_out:
        raise OodSegError(f'energy margins need m_in < m_out, got m_in={cfg.m_in}, '
                          f'm_out={cfg.m_out}')


def freeze_encoder(model) -> None:
    """
    Freeze backbone and ASPP (no gradients) for decoder-only fine-tuning.

    The MOoSe probes read the ASPP branches, so they stay valid. The caller keeps these
    modules in eval mode (``Trainer._train_mode``) so their BatchNorm statistics are fixed.
    """
    for p in list(model.backbone.parameters()) + list(model.aspp.parameters()):
        p.requires_grad_(False)


def _device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)'
