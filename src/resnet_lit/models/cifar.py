"""The 6n+2 CIFAR-10 nets of He et al. 2015, sec. 4.2 (ResNet-20 ... ResNet-1202).

Same blocks and stage builder as the ImageNet nets (resnet.py); only the stem and the stage
widths differ: a 3x3 conv with 16 filters, no max pool, then 3 stages of n basic blocks with
16, 32, 64 filters at 32, 16, 8 pixels. The paper uses option A shortcuts here, so that
residual and plain nets have exactly the same parameters.
"""

from __future__ import annotations

from torch import nn

from .resnet import ResNet, conv3x3


class CifarResNet(ResNet):
    """`CifarResNet(BasicBlock, (n, n, n), shortcut="A")` is the paper's (6n+2)-layer net."""

    stage_planes = (16, 32, 64)

    def _make_stem(self, in_chans: int, chs: int) -> None:
        # 32x32 inputs are small already: keep the resolution, no max pool.
        self.conv1 = conv3x3(in_chans, chs)
        self.bn1 = nn.BatchNorm2d(chs)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = None
