"""The whole training step as one compiled function (``ImageClassifier(compile_step=True)``).

The default path compiles the backbone only: Lightning runs the augmentation, the loss, the backward
pass and the optimiser step around it, each op launched from Python. With ``compile_step`` one
``torch.compile``'d function does all of it: the on-device augmentation of the uint8 batch (the
DataModule's ``train_batch_fn``), the forward pass, the loss, the gradients (``torch.func.grad_and_value``
over ``torch.func.functional_call``, so the backward pass is in the same graph), the batch-norm
running statistics, the top-1/top-k hit counts and the optimiser update (the optimiser's own
``step`` code, traced: ``torch.optim``'s graph breaks around ``step`` are skipped, and the learning
rate is a tensor that the schedule overwrites in place). Dynamo then sees one graph per step, which
``mode: reduce-overhead`` records as one CUDA graph. It compiles twice in all: the first step (the
optimiser creates its state, e.g. SGD's momentum buffers), then the steady step; a new learning rate,
a new epoch, a validation or a checkpoint compile nothing.

Lightning runs the module with manual optimisation: the step count, the schedule (stepped after each
update), logging every ``log_every_n_steps``, checkpoints, exact resume and the EMA of the weights
work as on the default path. Not on this path, refused at the start of ``fit`` with one line
(:func:`check_fit`): gradient accumulation, gradient clipping, the ``plateau`` schedule, more than one
process (the functional gradients bypass DDP's all-reduce). docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from resnet_lit.lightning_private import count_optimizer_step, should_update_logs
from resnet_lit.training.train_accuracy import hit_counts

NOT_ON_PATH = "is not on the model.compile_step path (the whole step compiled as one function)"


def check_fit(trainer: Any, schedule_kind: str) -> None:
    """One line (ValueError) for a fit setting ``compile_step`` cannot keep, before Lightning starts."""
    problems = []
    if trainer.accumulate_grad_batches != 1:
        problems.append(f"gradient accumulation (trainer.accumulate_grad_batches {trainer.accumulate_grad_batches})")
    if trainer.gradient_clip_val:
        problems.append(f"gradient clipping (trainer.gradient_clip_val {trainer.gradient_clip_val})")
    if schedule_kind == "plateau":
        problems.append("the plateau schedule (model.schedule.kind plateau)")
    if trainer.world_size > 1:
        problems.append(f"more than one process ({trainer.world_size}: the gradients would not be all-reduced)")
    if problems:
        raise ValueError(f"{'; '.join(problems)} {NOT_ON_PATH}: drop that setting or set model.compile_step false")


def lr_as_tensor(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Each group's learning rate as a 0-d tensor on ``device`` (the schedule then writes into it in
    place: no recompilation); a fused kernel becomes the multi-tensor one, which the compiler fuses."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        if group.get("fused"):
            group["fused"], group["foreach"] = False, True


def lr_as_float(optimizer_state: dict[str, Any]) -> None:
    """In a checkpoint's optimiser state: tensor learning rates back to floats (as the default path saves)."""
    for group in optimizer_state.get("param_groups", []):
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])


class FusedStep:
    """``step(x, y) -> (loss, hits)``: one compiled training step of ``model`` (updated in place,
    with ``optimizer``'s own update and state) on the batch ``x, y`` as the loader gives it.

    Args:
        model: the backbone; its trainable parameters get gradients, frozen ones are constants.
        criterion: the training loss ``(logits, y) -> loss``.
        optimizer: a ``torch.optim.Optimizer`` over the trainable parameters.
        prepare: ``(x, y) -> (x, y)`` on the device before the forward pass (the DataModule's
            ``train_batch_fn``: augmentation, normalisation, mixing), or None.
        top_k: the k of the top-k hit count.
        channels_last: feed the network NHWC input.
        compile_options: ``torch.compile`` keyword arguments (``backend``, ``mode``, ``fullgraph``, ``dynamic``).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                 prepare: Callable[[Any, Any], tuple[Any, Any]] | None, top_k: int, channels_last: bool,
                 compile_options: dict[str, Any]) -> None:
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.prepare, self.top_k, self.channels_last = prepare, top_k, channels_last
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
        self.buffers = dict(model.named_buffers())
        for p in self.params.values():  # kept, written in place each step: no new tensor for the compiler
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.grads = [p.grad for p in self.params.values()]
        self.update = inspect.unwrap(type(optimizer).step)  # its code without the graph breaks around it
        optimizer._opt_called = True  # the schedule's check that the optimiser stepped first
        # torch's default dynamic=None here, not compiling.static_options: forced static, this function
        # compiled again after its first graphs (tests/test_compile_step.py's compiles-once test fails)
        self._compiled = torch.compile(self._step, **compile_options)

    @classmethod
    def of(cls, module: Any) -> FusedStep:
        """The compiled step of an ``ImageClassifier`` at the start of its fit (the optimiser's state is
        restored by then). The augmentation it compiles in is the DataModule's ``train_batch_fn``: a
        function of the batch alone, asked for once; the module's ``augments_training_batches`` then
        tells the DataModule's transfer hook to hand training batches over as the loader made them."""
        trainer = module.trainer
        optimizer = trainer.optimizers[0]
        lr_as_tensor(optimizer, module.device)
        train_batch_fn = getattr(getattr(trainer, "datamodule", None), "train_batch_fn", None)
        prepare = train_batch_fn(module.device) if train_batch_fn is not None else None
        options = {} if module.hparams.compile is True else dict(module.hparams.compile)
        return cls(module.model, module.criterion, optimizer, prepare, module._top5, module.hparams.channels_last,
                   options)

    def training_step(self, module: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``ImageClassifier.training_step`` on this path: one compiled call updates the weights; Lightning
        counts the step, the schedule moves on; the host waits for the device only on logging steps."""
        x, y = batch
        trainer = module.trainer
        if should_update_logs(trainer):  # before this step's update, as on the default path
            module._nonfinite.stop_if_bad(trainer)
        loss, hits = self.step(x, y)
        module.train_accuracy.add(hits, y.shape[0])
        module._nonfinite.update(loss, trainer.global_step, _lr_of_step(trainer))
        count_optimizer_step(trainer)
        for config in trainer.lr_scheduler_configs:
            config.scheduler.step()
        if should_update_logs(trainer):
            module._log_training_figures(loss)
        return loss

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step: the loss (detached) and the top-1 / top-k hits of the batch."""
        first = next(iter(self.params.values()), None)
        if first is not None and first.grad is not self.grads[0]:  # zeroed to None meanwhile (Lightning does)
            for p, g in zip(self.params.values(), self.grads):
                p.grad = g  # the same tensors again: the compiled code's guards on them hold
        # Outside any autograd graph: the gradients are torch.func's, inside; the compiler then builds an
        # inference graph, with no activations kept for a backward pass of the step itself.
        with torch.no_grad():
            return self._compiled(x, y)

    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> Any:
        buffers = {k: v.clone() for k, v in self.buffers.items()}  # batch norm updates its copies in place
        logits = torch.func.functional_call(self.model, (params, self.frozen, buffers), (x,))
        loss = self.criterion(logits, y)
        return loss, (hit_counts(logits.detach(), y, self.top_k), buffers)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prepare is not None:
            x, y = self.prepare(x, y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grads, (loss, (hits, buffers)) = torch.func.grad_and_value(self._loss, has_aux=True)(self.params, x, y)
        with torch.no_grad():
            for name, value in buffers.items():
                self.buffers[name].copy_(value)
            torch._foreach_copy_(self.grads, [grads[n] for n in self.params])
            self.update(self.optimizer)
        return loss.detach(), hits


def _lr_of_step(trainer: Any) -> float:
    """The first group's lr as a float, from the schedule (no device read)."""
    configs = trainer.lr_scheduler_configs
    scheduler = configs[0].scheduler if configs else None
    lambdas, base = getattr(scheduler, "lr_lambdas", None), getattr(scheduler, "base_lrs", None)
    if lambdas and base:
        return float(base[0]) * lambdas[0](scheduler.last_epoch)
    return math.nan
