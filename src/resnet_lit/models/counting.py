"""Parameter and multiply-add counts, as the paper reports them (Table 1, Table 6)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """Multiply-adds of one forward pass on an input of `input_size`, in eval mode.

    Built on `torch.utils.flop_counter`, which counts convolutions and matmuls at 2 FLOPs per
    multiply-add; the paper's "FLOPs" are multiply-adds, hence the division by 2. BN, ReLU,
    pooling and the shortcut additions are not counted (nor are they in the paper).
    A model on the meta device is counted without computing anything (fast for ResNet-152).
    """
    p = next(model.parameters())
    modes = {m: m.training for m in model.modules()}  # restored per module: frozen BN stays frozen
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(input_size, device=p.device, dtype=p.dtype))
    finally:
        for m, training in modes.items():
            m.training = training
    return counter.get_total_flops() // 2
