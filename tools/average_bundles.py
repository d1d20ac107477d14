#!/usr/bin/env python3
"""
Average the weights of bundles that share one graph (a "soup" of training rounds).

Usage: tools/average_bundles.py --out OUT BUNDLE BUNDLE [BUNDLE ...]

Outlier-exposure rounds made from fresh proxies swing the real-set AP by a few hundredths
from round to round (model card, "Outlier exposure, third round"): each round's proxy is
one draw. The mean of several rounds' weights, taken along one chain, keeps what the rounds
share and averages out what one proxy drew. Every floating-point tensor is averaged in
float32 and stored as float16, as every bundle is; integer buffers (BatchNorm step
counters) come from the last bundle. ``bundle.json`` is the last bundle's without its fitted
constants (as for any retrained bundle; ``ood-seg sml-stats`` and the calibration come
next), with ``info.averaged_from`` naming the inputs.

The bundles must agree on the model config (all but ``sml_stats``) and on every tensor's
name, shape and dtype; otherwise the tool stops with a one-line error and writes nothing.
"""

import argparse
from pathlib import Path
import sys

from ood_seg_ros.errors import OodSegError


def _config_key(doc: dict) -> dict:
    return {k: v for k, v in doc['config'].items() if k != 'sml_stats'}


def average_states(states: list) -> dict:
    """Return the float32 mean of same-shaped state dicts (integer buffers: the last one's)."""
    import torch
    out = {}
    for name, ref in states[0].items():
        if ref.is_floating_point():
            acc = torch.zeros(ref.shape, dtype=torch.float32)
            for sd in states:
                acc += sd[name].float()
            out[name] = acc / len(states)
        else:
            out[name] = states[-1][name].clone()
    return out


def average_bundles(bundles: list, out) -> Path:
    """Write the average of ``bundles`` (folders) to the new bundle folder ``out``."""
    from ood_seg_ros.model.bundle import load_bundle, read_bundle_json, save_retrained_bundle
    if len(bundles) < 2:
        raise OodSegError('give at least two bundles to average')
    docs = [read_bundle_json(b) for b in bundles]
    for b, doc in zip(bundles[1:], docs[1:]):
        if _config_key(doc) != _config_key(docs[0]):
            raise OodSegError(f'{b}: its model config differs from {bundles[0]}')
    out = Path(out)
    if out.exists():
        raise OodSegError(f'{out} exists; choose a new folder')
    # the package's loader checks each archive against the config (names, shapes, finite
    # values), so equal configs mean equal tensors to average
    loaded = [load_bundle(b) for b in bundles]
    last = loaded[-1]
    last.model.load_state_dict(average_states([lb.model.state_dict() for lb in loaded]))
    info = {**last.info, 'averaged_from': ['/'.join(Path(b).resolve().parts[-3:])
                                           for b in bundles]}
    # like any retrained bundle: float16 weights, no fitted constants, no SML statistics
    save_retrained_bundle(out, last.model, runtime=last.runtime, info=info)
    return out


def main(argv=None):
    """Average the bundles given on the command line."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[1])
    ap.add_argument('--out', required=True, help='new bundle folder')
    ap.add_argument('bundles', nargs='+', help='bundle folders with the same graph')
    args = ap.parse_args(argv)
    try:
        out = average_bundles(args.bundles, args.out)
    except OodSegError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'{out}: mean of {len(args.bundles)} bundles')
    return 0


if __name__ == '__main__':
    sys.exit(main())
