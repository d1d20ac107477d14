"""
Batched training augmentation on the training device (GPU or CPU).

Images stay uint8 (N, H, W, 3) on the device; each batch is scaled, cropped and
flipped with one ``grid_sample`` call (bilinear for images, nearest for labels) and
jittered photometrically, so the GPU is never starved by a CPU data loader.
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

IGNORE = 255


def augment_batch(images: torch.Tensor, labels: Sequence[torch.Tensor], crop: Tuple[int, int],
                  scale: Tuple[float, float] = (0.5, 2.0), flip: bool = True,
                  jitter: float = 0.25, generator: Optional[torch.Generator] = None):
    """
    Randomly scale, crop, flip and colour-jitter a batch.

    images: uint8 (B, H, W, 3); labels: uint8 (B, H, W) maps (void = 255) transformed
    with the same geometry. Returns (float RGB in [0, 1] (B, 3, h, w), [int64 (B, h, w)]).
    Crops reaching outside the scaled image are padded with 0 (image) / 255 (labels).
    """
    b, h, w, _ = images.shape
    ch, cw = crop
    dev = images.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device='cpu').to(dev)

    s = scale[0] * (scale[1] / scale[0]) ** rand(b)  # log-uniform scale factor
    # Crop window in scaled-image pixels, as a fraction of the scaled size.
    sh, sw = h * s, w * s
    y0 = (sh - ch).clamp_min(0) * rand(b) - (ch - sh).clamp_min(0) * rand(b)
    x0 = (sw - cw).clamp_min(0) * rand(b) - (cw - sw).clamp_min(0) * rand(b)
    # Affine map from output normalised coords [-1, 1] to input normalised coords.
    ax = cw / sw
    ay = ch / sh
    tx = (2 * x0 + cw) / sw - 1
    ty = (2 * y0 + ch) / sh - 1
    if flip:
        ax = torch.where(rand(b) < 0.5, -ax, ax)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = ax
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = ay
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, (b, 3, ch, cw), align_corners=False)
    img = images.permute(0, 3, 1, 2).float() / 255.0
    img = F.grid_sample(img, grid, mode='bilinear', padding_mode='zeros',
                        align_corners=False)
    outs = []
    for lab in labels:
        lab = lab.unsqueeze(1).float()
        lab = F.grid_sample(lab + 1.0, grid, mode='nearest', padding_mode='zeros',
                            align_corners=False)
        lab = lab.squeeze(1) - 1.0  # 0 from padding -> -1 -> ignore
        lab[lab < 0] = IGNORE
        outs.append(lab.long())
    if jitter > 0:
        img = color_jitter(img, jitter, rand)
    return img, outs


def color_jitter(img: torch.Tensor, strength: float, rand) -> torch.Tensor:
    """Random brightness, contrast and saturation per sample; img (B, 3, H, W) in [0, 1]."""
    b = img.shape[0]

    def factor():
        return (1 + strength * (2 * rand(b) - 1)).view(b, 1, 1, 1)

    img = img * factor()
    mean = img.mean((1, 2, 3), keepdim=True)
    img = (img - mean) * factor() + mean
    gray = img.mean(1, keepdim=True)
    img = (img - gray) * factor() + gray
    return img.clamp(0, 1)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float RGB in [0, 1] (B, 3, H, W), no augmentation."""
    return images.permute(0, 3, 1, 2).float() / 255.0
