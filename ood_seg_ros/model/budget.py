"""
Memory a network needs, estimated from its config before anything is allocated.

A bundle.json with schema-valid but absurd sizes (``aspp_channels`` 10^6, ``probe_depth``
10^5, an 8192^2 input) used to be found out only when the allocation failed or the
process was OOM-killed. :func:`check_memory` refuses such a config with one line before
the network is built: weights (parameters of the head as the config sizes it, plus the
backbone) and activations at the input size, against this machine's physical memory.

The estimate lies between what a forward pass really takes at its peak and the sum of
every module output of that pass (not all alive at once); ``test_memory_bounds`` checks
both, the latter on the ``meta`` device, which allocates nothing.
"""

import os
from typing import Optional, Tuple

from ..errors import OodSegError

BYTES = 4                       # float32
BACKBONE_PARAMS = 15_000_000    # the largest registered backbone family member, rounded up
BACKBONE_TOP_CHANNELS = 448     # channels of the deepest backbone features (ASPP input)
# float32 values per input pixel that the backbone and the score head produce whatever
# the head's sizes (EfficientNet-Lite0 with a minimal head, summed over every module
# output: about 540)
BACKBONE_FLOATS_PER_PIXEL = 600
# outputs alive at once at the peak, as a share of all outputs of the pass: 1/8 was
# measured (torch, CPU, 720x960); 1/4 leaves a margin
LIVE_DIVISOR = 4
MEMORY_FRACTION = 0.8           # of the physical memory, at most


def weight_count(cfg) -> int:
    """Return an upper estimate of the network's parameter count for ``cfg``."""
    a, d, p, c = cfg.aspp_channels, cfg.decoder_channels, cfg.probe_channels, cfg.n_classes
    head = (5 * BACKBONE_TOP_CHANNELS * a + 5 * a * a
            + 9 * (a + cfg.low_level_project) * d + 9 * d * d
            + 4 * 9 * cfg.probe_depth * p * p + 4 * 9 * p * d
            + c * (d + 4 * p + 8))
    return BACKBONE_PARAMS + head


def output_floats(cfg, size: Tuple[int, int]) -> int:
    """Return an upper estimate of the float32 values all outputs of a pass at ``size`` hold."""
    h, w = (int(v) for v in size)
    c = cfg.n_classes
    per_decoder_pixel = (8 * cfg.aspp_channels + 6 * cfg.decoder_channels
                         + 2 * cfg.low_level_project
                         + 8 * cfg.probe_depth * cfg.probe_channels
                         + c * (12 + len(cfg.outputs)))
    return h * w * (BACKBONE_FLOATS_PER_PIXEL + 3 * c) + h * w * per_decoder_pixel // 16


def activation_floats(cfg, size: Tuple[int, int]) -> int:
    """Return the estimated float32 values alive at the peak of a forward pass at ``size``."""
    return output_floats(cfg, size) // LIVE_DIVISOR


def estimate_bytes(cfg, size: Optional[Tuple[int, int]] = None) -> int:
    """Return the estimated bytes of weights plus activations at ``size`` (None: the config's)."""
    return BYTES * (weight_count(cfg) + activation_floats(cfg, size or cfg.input_size))


def memory_limit() -> int:
    """Return the bytes a network may take here: a fraction of the physical memory."""
    try:
        total = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        total = 16 * 2 ** 30
    return int(total * MEMORY_FRACTION)


def check_memory(cfg, size: Optional[Tuple[int, int]] = None, where: str = 'model config',
                 limit: Optional[int] = None) -> int:
    """Raise OodSegError (one line) when ``cfg`` at ``size`` would not fit; the estimate."""
    size = tuple(size or cfg.input_size)
    need = estimate_bytes(cfg, size)
    limit = memory_limit() if limit is None else limit
    if need > limit:
        raise OodSegError(
            f'{where}: the network would need about {need / 2 ** 30:.1f} GiB at input '
            f'{size[0]}x{size[1]} (aspp_channels {cfg.aspp_channels}, decoder_channels '
            f'{cfg.decoder_channels}, probe_depth {cfg.probe_depth}, probe_channels '
            f'{cfg.probe_channels}, {cfg.n_classes} classes), more than the '
            f'{limit / 2 ** 30:.1f} GiB allowed here; refused before allocating it')
    return need
