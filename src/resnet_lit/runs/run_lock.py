"""One run directory, one writer: ``fit`` holds ``<run_dir>/fit.lock`` while it runs.

Two fits into one directory would interleave ``metrics.csv`` and overwrite each other's
``last.ckpt``. The lock is a POSIX record lock (``fcntl.lockf``) on that file: the kernel drops it
when the holding process ends, however it ends (SIGKILL, OOM killer, a lost node's NFS lease), so
it never stays stuck, and the file itself is left in place (deleting it would race a new fit).
Unlike ``flock`` it is not inherited by the DataLoader worker processes a rank forks, which could
outlive a killed rank by seconds and refuse its restart. It works on local disks and NFS.

Only one process per job takes it: the one that runs as global rank 0 or launches the others
(ranks 1.. of the same job, from torchrun, SLURM's srun or Lightning's own launcher, share the
directory and must not refuse each other). A restarted or requeued job starts after its old
processes have ended, so it finds the lock free.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "fit.lock"
# Set to a non-zero rank in every process but the job's first: torchrun (RANK, LOCAL_RANK), SLURM's
# srun (SLURM_PROCID), Lightning's launcher for its other local processes (LOCAL_RANK, NODE_RANK).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


class RunDirInUse(RuntimeError):
    """Another process holds the run directory's lock; the message names it and what to do."""


def is_first_process() -> bool:
    """Whether this process is the job's rank 0 (or its launcher), from the launchers' variables."""
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in _RANK_VARIABLES)


class RunDirLock:
    """``RunDirLock(run_dir).acquire()`` or :class:`RunDirInUse`; ``release()`` (or the process's end) frees it."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        # the directories this run made, deepest first (runs/imagenet/r50, runs/imagenet, runs): a start
        # that failed leaves none of them behind
        self._created: list[Path] = []

    def acquire(self) -> RunDirLock:
        missing = self.path.parent
        self._created = []
        while not missing.exists() and missing != missing.parent:
            self._created.append(missing)
            missing = missing.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read(fd)
            os.close(fd)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise RunDirInUse(
                f"{self.path.parent} is in use by another fit ({holder or 'holder unknown'}): one run directory "
                "takes one writer. Wait for it to end or stop it (it resumes with `--ckpt_path auto`), "
                "or give this run another --run_dir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock; a directory this run created and left without results (a start that failed
        before the first checkpoint or metric: only the lock, config.yaml, hparams.yaml) is removed, with
        the parents this run created that are still empty. A directory that existed before is kept."""
        if self._fd is None:
            return
        run_dir = self.path.parent
        leftovers = {LOCK_NAME, "config.yaml", "hparams.yaml", "checkpoints"}
        unused = bool(self._created) and all(
            e.name in leftovers and (e.name != "checkpoints" or not any(os.scandir(e.path)))
            for e in os.scandir(run_dir))
        if unused:
            for name in (LOCK_NAME, "config.yaml", "hparams.yaml", "checkpoints"):
                path = run_dir / name
                if path.is_dir():
                    path.rmdir()
                elif path.exists():
                    path.unlink()
        os.close(self._fd)  # closing drops the lock
        self._fd = None
        if unused:
            for directory in self._created:
                try:
                    directory.rmdir()
                except OSError:  # something appeared meanwhile (another run's directory): keep it
                    break


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
