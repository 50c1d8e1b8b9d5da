"""The depths of the paper's networks, in one place and without torch (reports and run logs read it
without building a network): ImageNet's Table 1 and CIFAR-10's 6n+2 (sec. 4.2)."""

from __future__ import annotations

# depth -> (block kind, blocks per stage), Table 1
IMAGENET_LAYERS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3)),
}  # fmt: skip
# depth 6n+2 -> n, the blocks per stage of the three CIFAR stages
CIFAR_N: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}

IMAGENET_DEPTHS = tuple(IMAGENET_LAYERS)
CIFAR_DEPTHS = tuple(CIFAR_N)
