"""The exit statuses of ``resnet-lit``: one table (README "Exit status", the docstring of ``runs.cli``),
these constants, and ``tests/test_exit_codes.py`` checking that the two agree.

A retry loop, a container restart policy or a SLURM batch script tells the cases apart by status:
retry a run failure after fixing its cause (with ``--ckpt_path auto``), never retry a usage error
unchanged, and resume after a signal. No torch, no Lightning here: the light entry point uses it.
"""

from __future__ import annotations

import signal

OK = 0
# The run started and then stopped for a reason outside the code, in one line: a loss that is not
# finite, a full disk, a lost DDP rank (training.nonfinite, runs.failures). Also Python's own status
# for an unexpected error, which keeps its traceback (a bug: please report it).
RUN_FAILED = 1
# Refused before anything trained, in one line: a misspelt flag, a value of the wrong type, a missing
# config file, data or weights file, a broken checkpoint, wandb without a login, a bad image.
USAGE = 2
# 128 + the signal that stopped a fit after saving last.ckpt (runs.interrupt.exit_status): the
# shells' convention, so `$?` reads the same as for a process the signal killed.
SIGNAL_BASE = 128
STOP_SIGNALS = {
    "SIGINT": int(signal.SIGINT),  # Ctrl-C: 130
    "SIGTERM": int(signal.SIGTERM),  # kill, Kubernetes, scancel: 143
    "SIGUSR1": int(signal.SIGUSR1),  # SLURM's requeue signal (--signal=B:USR1@90): 138
}


def stopped_by(signum: int) -> int:
    """The exit status of a fit that stopped on ``signum`` after saving its checkpoint."""
    return SIGNAL_BASE + int(signum)


def table() -> dict[int, str]:
    """Status -> what it means, as README's table states it (the test compares the two)."""
    return {
        OK: "success",
        RUN_FAILED: "run failure",
        USAGE: "usage or configuration error",
        **{stopped_by(number): name for name, number in STOP_SIGNALS.items()},
    }
