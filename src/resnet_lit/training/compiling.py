"""The backbone under ``torch.compile``: compiled in place, and run eagerly where asked.

``nn.Module.compile`` compiles a module in place, so its state-dict keys stay the same with
``compile`` on or off (no ``_orig_mod.`` prefix: checkpoints load either way). ``ImageClassifier``'s
``compile_eval: false`` evaluates the compiled backbone without its compiled code: the eval-mode
graph is never compiled, so a short last batch or the train/eval switch costs no recompilation and,
with ``mode: reduce-overhead``, no CUDA-graph recording (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def static_options(option: bool | dict[str, Any]) -> dict[str, Any]:
    """``torch.compile`` keyword arguments with ``dynamic=False`` unless given: one static graph per
    input shape. torch's default (``dynamic=None``) compiles the second shape it meets (an evaluation
    batch of another size, the next progressive-resizing size) as a graph with symbolic sizes, which
    runs slower on a GPU and is shared by every later shape; the shapes here are few and known."""
    return {"dynamic": False, **({} if option is True else dict(option))}


def compile_in_place(model: nn.Module, option: bool | dict[str, Any]) -> bool:
    """Compile ``model`` in place with ``option`` (``True`` or ``nn.Module.compile`` keyword
    arguments: ``mode``, ``fullgraph``, ``dynamic``; static shapes unless ``dynamic`` is given);
    False (and nothing done) for ``False``."""
    if option is False:
        return False
    model.compile(**static_options(option))
    return True


def call_eagerly(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a module compiled in place (``nn.Module.compile``) without its compiled code."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    if set_stance is not None:
        with set_stance("force_eager"):
            return model(x)
    return model._call_impl(x)  # torch 2.5: the plain call that nn.Module.compile wraps
