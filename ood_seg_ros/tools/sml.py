"""
Per-class max-logit statistics for the standardised max-logit (SML) scores.

SML (Jung et al., ICCV 2021; methods §8): on the training split, for each class c, the
max logit of the pixels predicted as c has mean mu_c and standard deviation sigma_c;
at run time SML = -(max z - mu_c^) / sigma_c^. Statistics are gathered per MOoSe member
(four probes and the global head) at decoder resolution, where the graph scores.

The same pass gathers the mean and standard deviation over all pixels of every member
of a fused score (:data:`ood_seg_ros.scores.FUSED`), which standardise it.
"""

from typing import Dict, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .. import scores as S
from ..model.config import SML_MEMBERS
from ..model.deeplab import OodSegNet, upsample

# Scores whose pixel statistics the fused scores need, gathered with the SML statistics.
STAT_SCORES = tuple(dict.fromkeys(m for v in S.FUSED.values() for m in v))


class MaxLogitMoments:
    """Running per-class count, sum and sum of squares of the max logit (float64)."""

    def __init__(self, n_classes: int):
        self.count = np.zeros(n_classes)
        self.total = np.zeros(n_classes)
        self.total_sq = np.zeros(n_classes)

    def add(self, logits: torch.Tensor) -> None:
        """Add (B, C, h, w) logits: every pixel counts for its predicted class."""
        top = logits.float().max(1)
        cls = top.indices.reshape(-1).cpu().numpy()
        val = top.values.reshape(-1).double().cpu().numpy()
        c = len(self.count)
        self.count += np.bincount(cls, minlength=c)
        self.total += np.bincount(cls, weights=val, minlength=c)
        self.total_sq += np.bincount(cls, weights=val * val, minlength=c)

    def result(self, min_std: float = 1e-3) -> Dict[str, list]:
        """
        Return mean and std per class.

        A class never predicted takes the statistics of all pixels (it cannot be
        standardised otherwise); std is floored at ``min_std``.
        """
        n_all = max(self.count.sum(), 1.0)
        mean_all = self.total.sum() / n_all
        var_all = max(self.total_sq.sum() / n_all - mean_all ** 2, 0.0)
        n = np.maximum(self.count, 1.0)
        mean = np.where(self.count > 0, self.total / n, mean_all)
        var = np.where(self.count > 1, self.total_sq / n - mean ** 2, var_all)
        std = np.maximum(np.sqrt(np.maximum(var, 0.0)), min_std)
        return {'mean': [float(v) for v in mean], 'std': [float(v) for v in std],
                'pixels': [int(v) for v in self.count]}


class ScoreMoments:
    """Running count, sum and sum of squares of one score map over all pixels (float64)."""

    def __init__(self):
        self.count = self.total = self.total_sq = 0.0

    def add(self, score: torch.Tensor) -> None:
        """Add a (B, h, w) score map."""
        v = score.double().reshape(-1)
        self.count += v.numel()
        self.total += float(v.sum())
        self.total_sq += float((v * v).sum())

    def result(self, min_std: float = 1e-6) -> Dict[str, float]:
        """Mean and standard deviation (floored at ``min_std``) over the pixels added."""
        n = max(self.count, 1.0)
        mean = self.total / n
        std = max(np.sqrt(max(self.total_sq / n - mean * mean, 0.0)), min_std)
        return {'mean': float(mean), 'std': float(std), 'pixels': int(self.count)}


def member_scores(logits_low: torch.Tensor, probe_low, names) -> Dict[str, torch.Tensor]:
    """Global and MOoSe score maps ``names`` from decoder-resolution logits and probes."""
    glob = [n for n in names if S.SCORES[n].family == 'global']
    moose = [n for n in names if S.SCORES[n].family == 'moose']
    out = S.global_scores(logits_low, glob) if glob else {}
    if moose:
        size = logits_low.shape[-2:]
        out.update(S.moose_scores([upsample(p, size) for p in probe_low] + [logits_low],
                                  moose))
    return out


@torch.no_grad()
def gather_sml_stats(model: OodSegNet, images: Iterable[np.ndarray],
                     batch_size: int = 4) -> Dict:
    """
    Statistics of every member over uint8 RGB frames (H, W, 3) at the model input size.

    Returns the ``ModelConfig.sml_stats`` object (without provenance fields): per-class
    max-logit statistics per member and, under ``scores``, the pixel mean and standard
    deviation of every score in :data:`STAT_SCORES`.
    """
    model.eval()
    dev = next(model.parameters()).device
    moments = {m: MaxLogitMoments(model.config.n_classes) for m in SML_MEMBERS}
    score_moments = {n: ScoreMoments() for n in STAT_SCORES}
    h, w = model.config.input_size
    batch = []

    def flush():
        x = torch.from_numpy(np.stack(batch)).to(dev).permute(0, 3, 1, 2).float() / 255.0
        logits_low, _, probe_low = model.features(x, with_probes=True)
        size = logits_low.shape[-2:]
        for name, z in zip(SML_MEMBERS, [upsample(p, size) for p in probe_low]
                           + [logits_low]):
            moments[name].add(z)
        for name, m in member_scores(logits_low, probe_low, STAT_SCORES).items():
            score_moments[name].add(m)
        batch.clear()

    frames = 0
    for img in images:
        if img.shape[:2] != (h, w):
            img = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(),
                                size=(h, w), mode='bilinear', align_corners=False)[0]
            img = img.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        batch.append(img)
        frames += 1
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return {'frames': frames, 'members': {m: moments[m].result() for m in SML_MEMBERS},
            'scores': {n: score_moments[n].result() for n in STAT_SCORES}}
