"""One line for a run that failed for a reason outside the code: a lost process, a full disk.

``resnet_lit.runs.cli.main`` asks these functions about any exception that ends a run; each returns
the line to print, or None when the exception is not theirs (it then keeps its traceback).

- A collective operation (DDP's gradient all-reduce, a barrier, a broadcast) fails when another
  rank died (gloo: "Connection closed by peer") or stopped answering for longer than the process
  group's timeout (gloo: "Application timeout caused pair closure"; NCCL's watchdog takes the
  process down itself). The configs/trainer/ddp*.yaml overlays set that timeout to 10 minutes
  (``trainer.strategy.init_args.timeout``) instead of torch's 30.
- A write ran out of space: a checkpoint (``checkpointing.atomic_write.OutOfSpaceError`` names the
  file; the previous one is intact), metrics.csv, config.yaml.

Not a run failure but a setting, so ``main`` exits with the usage status for it: the wandb logger on a
machine where wandb has no login (``wandb_login_message``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from resnet_lit.checkpointing.atomic_write import OutOfSpaceError, no_space_error

RESUME = "Resume with `--ckpt_path last` (or `auto`)"
RESTART = "start the same command again with `--ckpt_path auto` (it resumes from the newest checkpoint, if any)"
# gloo's messages start with its source position and end with advice about its own bugs
_GLOO_POSITION = re.compile(r"^\[[^\]]*gloo[^\]]*\]\s*")
_GLOO_PATTERNS = ("third_party/gloo", "pair closure", "Connection closed by peer", "Connection reset by peer")


def collective_failure_message(error: BaseException) -> str | None:
    """The line for a collective operation that failed because another rank died or hangs."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return None
    if not (dist.is_available() and dist.is_initialized()) or not isinstance(error, RuntimeError):
        return None
    text = str(error).strip()
    if not (isinstance(error, dist.DistError) or any(p in text for p in _GLOO_PATTERNS)):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    others = f"rank {1 - rank}" if world == 2 else "another rank"
    backend = dist.get_backend()
    detail = _GLOO_POSITION.sub("", text.splitlines()[0]).split(". This is typically")[0].strip()
    return (f"rank {rank} of {world}: a collective operation failed: {others} died or stopped answering "
            f"within the timeout ({backend}: {detail}; the timeout is --trainer.strategy.init_args.timeout). "
            f"{RESUME} once no process of this run is left.")


def out_of_space_message(error: BaseException, run_dir: str | Path | None = None) -> str | None:
    """The line for a write that ran out of space (anywhere in ``error``'s chain); ``run_dir``, where
    the run writes, is named with its free space when the failed write does not name its file."""
    cause = no_space_error(error)
    if cause is None:
        return None
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    checkpoint = next((e for e in chain if isinstance(e, OutOfSpaceError)), None)
    if checkpoint is not None:  # the first write that failed; others (metrics.csv) may have followed
        what = str(checkpoint)
    elif cause.filename:
        what = f"out of space writing {cause.filename} ({cause.strerror})"
    else:
        where = ""
        if run_dir is not None:
            try:
                where = f"; the run directory {run_dir} has {shutil.disk_usage(run_dir).free / 2**20:.1f} MiB free"
            except OSError:
                where = f"; the run directory is {run_dir}"
        what = f"out of space writing a file ({cause.strerror}{where})"
    return f"{what}. Free space, then {RESTART}."


def wandb_login_message(error: BaseException) -> str | None:
    """The line for the wandb logger without a login (wandb's ``UsageError: No API key configured``,
    raised when the run starts, after a traceback of 50 lines); None for any other error."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        if type(error).__module__.startswith("wandb") and "API key" in str(error):
            return ("the wandb logger (configs/logger/wandb.yaml) has no login on this machine: run `wandb login` "
                    "(or set WANDB_API_KEY), or log offline with WANDB_MODE=offline (upload later with "
                    "`wandb sync`), or leave the wandb overlay out")
        error = error.__cause__ or error.__context__
    return None
