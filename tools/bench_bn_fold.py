"""
Network time of the PyTorch backend with and without BatchNorm folding, interleaved.

One thread, the default bundle's node outputs, sizes 180x240 to 1080x1920; prints one
JSON object (medians of 3 runs, the order alternating, and time per pixel relative to
the smallest size). Run from the repository root: .venv/bin/python tools/bench_bn_fold.py
"""
import json, os, time, statistics
import numpy as np, torch
torch.set_num_threads(1)
from ood_seg_ros.model import load_bundle
from ood_seg_ros.runtime.torch_backend import TorchBackend
from ood_seg_ros.pipeline import Pipeline
B = 'models/camvid_lite0'
outs = Pipeline.required_outputs(json.load(open(B + '/bundle.json')).get('runtime', {}))
sizes = [(180, 240), (360, 480), (720, 960), (1080, 1920)]
res = {'load_start': os.getloadavg()[0], 'outputs': outs}
for h, w in sizes:
    be = {'folded': TorchBackend(B, outs, device='cpu', input_size=(h, w)),
          'unfolded': TorchBackend(B, outs, device='cpu', input_size=(h, w),
                                   bundle=load_bundle(B, outputs=outs))}
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    t = {k: [] for k in be}
    for k in be: be[k].infer(img)
    for r in range(3):
        for k in (list(be) if r % 2 == 0 else list(be)[::-1]):
            t0 = time.perf_counter(); be[k].infer(img); t[k].append(time.perf_counter() - t0)
    res[f'{h}x{w}'] = {k: round(statistics.median(v) * 1e3, 1) for k, v in t.items()}
    res[f'{h}x{w}']['ratio'] = round(res[f'{h}x{w}']['folded'] / res[f'{h}x{w}']['unfolded'], 3)
    print(h, w, res[f'{h}x{w}'], flush=True)
base = sizes[0]
for k in ('folded', 'unfolded'):
    px0 = base[0] * base[1]; t0 = res[f'{base[0]}x{base[1]}'][k]
    res[f'per_pixel_{k}'] = {f'{h}x{w}': round(res[f'{h}x{w}'][k] / t0 / (h * w / px0), 2) for h, w in sizes}
res['load_end'] = os.getloadavg()[0]
print(json.dumps(res))
