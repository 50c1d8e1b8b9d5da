"""Test callbacks and helpers for the preemption tests (test_preemption.py, test_slurm.py): signal a
fit's DataLoader worker processes, record which process wrote what, and a fake ``scontrol``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lightning.pytorch import Callback, Trainer


def child_pids(pid: int) -> list[int]:
    """The direct children of process ``pid`` (its DataLoader workers during a fit), from /proc."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(c) for c in text]
    return sorted(set(children))


class SignalAtStep(Callback):
    """At the end of the batch that makes global step ``step``, send ``signal`` to this process's
    children (``who="workers"``: the training loader's workers; their pids go to ``record``) or to
    this process (``"self"``), then wait ``wait_s`` for them to act on it. SLURM's
    ``--signal=USR1@90`` signals every process of the step, workers included; ``rank``: only that
    rank's process."""

    def __init__(self, step: int, signal: str = "SIGUSR1", who: str = "workers", record: str | None = None,
                 wait_s: float = 2.0, rank: int | None = None) -> None:
        self.step, self.signal, self.who, self.record, self.wait_s = step, signal, who, record, wait_s
        self.rank = rank  # only on this global rank (None: every rank)

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        if trainer.global_step != self.step or self.rank not in (None, trainer.global_rank):
            return
        pids = child_pids(os.getpid()) if self.who == "workers" else [os.getpid()]
        if self.record:
            Path(self.record).write_text(" ".join(map(str, pids)) + "\n")
        for pid in pids:
            os.kill(pid, getattr(signal, self.signal))
        time.sleep(self.wait_s)


FAKE_SCONTROL = """#!/bin/sh
# A stand-in for SLURM's scontrol: records who called it, with what.
echo "caller=$PPID args=$*" >> "{log}"
"""


def fake_scontrol(folder: Path) -> tuple[Path, Path]:
    """A folder holding an executable ``scontrol`` that appends "caller=PID args=..." to the returned log."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "scontrol.log"
    script = folder / "scontrol"
    script.write_text(FAKE_SCONTROL.format(log=log))
    script.chmod(0o755)
    return folder, log
