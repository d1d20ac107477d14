"""
Export an ESPNet-C-like segmentation network (random weights) to ONNX, as a speed peer.

No third-party weights exist here; timing does not depend on weight values, so this is
a stand-in for ``ood-seg bench --compare-onnx``: the ESPNet-C encoder of Mehta et al.
(ECCV 2018: ESP blocks with K = 5 dilated 3x3 branches, hierarchical feature fusion,
alpha_2 = 2, alpha_3 = 8, input reinforcement) with a 1x1 classifier and bilinear
upsampling to the input size. Segmentation only (semantic argmax output).

    python tools/peer_espnet.py out/peer/espnet_c.onnx --height 360 --width 480
"""

import argparse
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F


def cbr(cin, cout, k=3, stride=1):
    """Conv -> BN -> PReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.PReLU(cout))


class ESP(nn.Module):
    """ESP block: 1x1 reduce, K dilated 3x3 branches, hierarchical fusion, concat."""

    def __init__(self, cin, cout, stride=1, k=5):
        super().__init__()
        d = cout // k
        first = cout - (k - 1) * d
        self.reduce = nn.Conv2d(cin, d, 3 if stride == 2 else 1, stride,
                                1 if stride == 2 else 0, bias=False)
        self.branches = nn.ModuleList(
            nn.Conv2d(d, first if i == 0 else d, 3, 1, 2 ** i, 2 ** i, bias=False)
            for i in range(k))
        self.post = nn.Sequential(nn.BatchNorm2d(cout), nn.PReLU(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        """Hierarchical feature fusion of the dilated branches."""
        y = self.reduce(x)
        outs = [b(y) for b in self.branches]
        for i in range(2, len(outs)):
            outs[i] = outs[i] + outs[i - 1]
        out = torch.cat(outs, 1)
        return self.post(out + x if self.residual else out)


class ESPNetC(nn.Module):
    """ESPNet-C encoder + classifier, 11 classes (CamVid)."""

    def __init__(self, classes=11, alpha2=2, alpha3=8):
        super().__init__()
        self.l1 = cbr(3, 16, 3, 2)
        self.b1 = nn.Sequential(nn.BatchNorm2d(19), nn.PReLU(19))
        self.down2 = ESP(19, 64, 2)
        self.l2 = nn.Sequential(*[ESP(64, 64) for _ in range(alpha2)])
        self.b2 = nn.Sequential(nn.BatchNorm2d(131), nn.PReLU(131))
        self.down3 = ESP(131, 128, 2)
        self.l3 = nn.Sequential(*[ESP(128, 128) for _ in range(alpha3)])
        self.b3 = nn.Sequential(nn.BatchNorm2d(256), nn.PReLU(256))
        self.classifier = nn.Conv2d(256, classes, 1)

    def forward(self, x):
        """Return the (1, H, W) int32 class map."""
        size = x.shape[-2:]
        i2, i4 = F.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(F.avg_pool2d(x, 3, 2, 1), 3, 2, 1)
        a = self.b1(torch.cat([self.l1(x), i2], 1))
        d2 = self.down2(a)
        b = self.b2(torch.cat([self.l2(d2), d2, i4], 1))
        d3 = self.down3(b)
        c = self.b3(torch.cat([self.l3(d3), d3], 1))
        logits = F.interpolate(self.classifier(c), size=size, mode='bilinear')
        return logits.max(1).indices.int()


def main():
    """Export the network at --height x --width to the given path."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument('out')
    ap.add_argument('--height', type=int, default=360)
    ap.add_argument('--width', type=int, default=480)
    args = ap.parse_args()
    torch.manual_seed(0)
    net = ESPNetC().eval()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(net, torch.rand(1, 3, args.height, args.width), str(out),
                          input_names=['image'], output_names=['semantic'],
                          opset_version=17, dynamo=False)
    print(out, sum(p.numel() for p in net.parameters()), 'parameters')


if __name__ == '__main__':
    main()
