"""
Batched training augmentation on the training device (GPU or CPU).

Images stay uint8 (N, H, W, 3) on the device; each batch is scaled, cropped and
flipped with one ``grid_sample`` call (bilinear for images, nearest for labels) and
jittered photometrically, so the GPU is never starved by a CPU data loader.

:func:`photometric_batch` adds style augmentation for fine-tuning (gamma, hue, colour
shifts of ground and vegetation pixels by the label map, blur, noise, JPEG), so that
scenery unlike the training streets is not taken for an anomaly.
"""

from dataclasses import dataclass
import math
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


# -- photometric and style augmentation (fine-tuning against "unfamiliar scenery glows") --

# Class names (any case) whose pixels get their own colour shift: ground and vegetation,
# the scenery that looks different outside the training streets (unpaved roads, hedges).
GROUND_NAMES = ('road', 'pavement', 'sidewalk', 'terrain')
VEGETATION_NAMES = ('tree', 'vegetation')


@dataclass(frozen=True)
class PhotoAug:
    """
    Probabilities and ranges of :func:`photometric_batch` (per sample, independent draws).

    ``class_groups``: tuples of class ids; each group gets its own random hue rotation,
    saturation gain and tint on its pixels (by the label map).
    """

    p_gamma: float = 0.5
    gamma: Tuple[float, float] = (0.6, 1.6)
    p_hue: float = 0.5
    hue_deg: float = 25.0
    p_class: float = 0.6
    class_hue_deg: float = 90.0
    class_saturation: Tuple[float, float] = (0.4, 2.0)
    class_tint: float = 0.35
    class_groups: Tuple[Tuple[int, ...], ...] = ()
    p_blur: float = 0.3
    blur_sigma: Tuple[float, float] = (0.4, 1.5)
    p_noise: float = 0.3
    noise_std: Tuple[float, float] = (0.005, 0.04)
    p_jpeg: float = 0.4
    jpeg_quality: Tuple[int, int] = (30, 90)


def class_groups(class_names) -> Tuple[Tuple[int, ...], ...]:
    """Return the (ground, vegetation) id groups of a class list; empty groups left out."""
    lower = [n.strip().lower() for n in class_names]
    groups = (tuple(i for i, n in enumerate(lower) if n in GROUND_NAMES),
              tuple(i for i, n in enumerate(lower) if n in VEGETATION_NAMES))
    return tuple(g for g in groups if g)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                     [0.211, -0.523, 0.312]])


def hue_rotate(img: torch.Tensor, degrees: torch.Tensor,
               saturation: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    Rotate the hue of (B, 3, H, W) RGB by ``degrees`` (B,) in YIQ space; scale chroma.

    Luma (Y) is kept; the chroma plane (I, Q) is rotated and scaled by ``saturation`` (B,)
    (1 = unchanged). Not clamped.
    """
    b = img.shape[0]
    yiq = _YIQ.to(img)
    rad = degrees.to(img) * (math.pi / 180)
    sat = torch.ones(b).to(img) if saturation is None else saturation.to(img)
    cos, sin = torch.cos(rad) * sat, torch.sin(rad) * sat
    rot = torch.zeros(b, 3, 3).to(img)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = torch.linalg.inv(yiq) @ rot @ yiq          # (B, 3, 3) RGB -> RGB
    return torch.einsum('bij,bjhw->bihw', m, img)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (1, 3, H, W) with ``sigma`` px (reflect padding)."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(img, (r, r, 0, 0), mode='reflect')
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.pad(x, (0, 0, r, r), mode='reflect')
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)


def jpeg_roundtrip(img: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG encode/decode one (3, H, W) image in [0, 1] at ``quality`` (OpenCV, on CPU)."""
    import cv2
    arr = (img.detach().clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()
    ok, buf = cv2.imencode('.jpg', arr[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()
    return torch.from_numpy(dec).to(img.device).permute(2, 0, 1).float() / 255.0


def photometric_batch(img: torch.Tensor, label: torch.Tensor, aug: PhotoAug,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """
    Style augmentation of a batch: gamma, hue, per-class colour, blur, noise, JPEG.

    img: float RGB (B, 3, H, W) in [0, 1]; label: int (B, H, W) class ids (void 255), used
    only to select the pixels of ``aug.class_groups`` and never changed. Every random draw
    comes from ``generator`` (CPU), so the result is a function of the inputs and the
    generator's state. Returns a new tensor in [0, 1].
    """
    b = img.shape[0]

    def rand(*shape):
        return torch.rand(*shape, generator=generator)

    def uniform(lo, hi, n=b):
        return lo + (hi - lo) * rand(n)

    out = img.clone()
    on = rand(b) < aug.p_gamma
    g = torch.exp(uniform(math.log(aug.gamma[0]), math.log(aug.gamma[1])))
    g = torch.where(on, g, torch.ones(b)).to(img)
    out = out.clamp_min(0) ** g.view(b, 1, 1, 1)
    on = rand(b) < aug.p_hue
    deg = torch.where(on, uniform(-aug.hue_deg, aug.hue_deg), torch.zeros(b))
    out = torch.where(on.view(b, 1, 1, 1).to(img.device), hue_rotate(out, deg), out)
    for group in aug.class_groups:
        on = rand(b) < aug.p_class
        deg = uniform(-aug.class_hue_deg, aug.class_hue_deg)
        sat = torch.exp(uniform(math.log(aug.class_saturation[0]),
                                math.log(aug.class_saturation[1])))
        tint_w = uniform(0, aug.class_tint)
        tint = rand(b, 3)
        shifted = hue_rotate(out, deg, sat)
        shifted = (1 - tint_w.view(b, 1, 1, 1).to(img)) * shifted + \
            (tint_w.view(b, 1) * tint).view(b, 3, 1, 1).to(img) * \
            shifted.mean(1, keepdim=True) * 2
        mask = torch.zeros_like(label, dtype=torch.bool)
        for c in group:
            mask |= label == c
        mask &= on.view(b, 1, 1).to(label.device)
        out = torch.where(mask.unsqueeze(1), shifted, out)
    out = out.clamp(0, 1)
    blur_on = rand(b) < aug.p_blur
    sigma = uniform(*aug.blur_sigma)
    noise_on = rand(b) < aug.p_noise
    noise_std = uniform(*aug.noise_std)
    jpeg_on = rand(b) < aug.p_jpeg
    quality = torch.randint(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1, (b,),
                            generator=generator)
    noise = torch.randn(out.shape, generator=generator).to(img)
    for i in range(b):
        x = out[i:i + 1]
        if blur_on[i]:
            x = gaussian_blur(x, float(sigma[i]))
        if noise_on[i]:
            x = x + noise[i:i + 1] * float(noise_std[i])
        x = x.clamp(0, 1)
        if jpeg_on[i]:
            x = jpeg_roundtrip(x[0], int(quality[i]))[None]
        out[i:i + 1] = x
    return out
