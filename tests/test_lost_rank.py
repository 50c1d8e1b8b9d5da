"""A DDP rank that dies or hangs ends the run on the others within the collective timeout, with one
line, instead of leaving them waiting for torch's 30 minutes (configs/trainer/ddp*.yaml: 10 minutes).

Two real `resnet-lit fit` processes with gloo, started the way SLURM, torchrun or a multi-node launch
start them (each with its LOCAL_RANK, NODE_RANK, WORLD_SIZE and MASTER_ADDR/PORT), so each one's exit
status and output are its own. Rank 1 then SIGKILLs itself (gloo sees the closed connection at once) or
SIGSTOPs itself (a hang: its connections stay open, only the timeout ends the wait).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fit_helpers import RECIPE, fit_env, small_fit_args
from test_configs import print_config

from resnet_lit.data import CIFARDataModule

COLLECTIVE_TIMEOUT_S = 15


@pytest.mark.parametrize("overlay", ["ddp", "ddp_cpu", "ddp_multinode"])
def test_ddp_overlays_bound_the_collective_wait(repo_root: Path, monkeypatch, capsys, overlay: str) -> None:
    monkeypatch.chdir(repo_root)
    printed = print_config(capsys, "configs/cifar10/resnet20.yaml", f"configs/trainer/{overlay}.yaml")
    strategy = printed["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.DDPStrategy"
    assert strategy["init_args"]["timeout"] == "0:10:00"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(("how", "backend_says"), [
    ("SIGKILL", ("Connection closed by peer", "Connection reset by peer")),  # died: seen at once
    ("SIGSTOP", ("pair closure", "Timed out")),  # hangs: seen after the timeout
])
def test_survivor_exits_when_a_rank_is_lost(repo_root: Path, cifar_root: Path, tmp_path: Path, how: str,
                                            backend_says: tuple[str, ...]) -> None:
    CIFARDataModule(root=str(cifar_root)).prepare_data()  # decoded once: no rank waits on it under the timeout
    lose = {"class_path": "scale_helpers.KillAtStep", "init_args": {"step": 2, "rank": 1, "signal": how}}
    args = small_fit_args(tmp_path / "run", root=cifar_root, subset=256, steps=40, width=0.25,
                          configs=(*RECIPE, "configs/trainer/ddp_cpu.yaml"), extra=[
                              "--trainer.callbacks+=" + json.dumps(lose), "--trainer.enable_progress_bar", "false",
                              "--trainer.strategy.init_args.timeout", f"0:00:{COLLECTIVE_TIMEOUT_S}"])
    port, procs, logs = _free_port(), [], []
    for rank in (0, 1):
        env = fit_env()
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0", LOCAL_RANK=str(rank))
        logs.append(open(tmp_path / f"rank{rank}.err", "w+"))  # noqa: SIM115 - closed below
        procs.append(subprocess.Popen([sys.executable, "-m", "resnet_lit", "fit", *args], cwd=repo_root, env=env,
                                      stdout=subprocess.DEVNULL, stderr=logs[-1], text=True))
    try:
        start = time.monotonic()
        rank0 = procs[0].wait(timeout=150)  # a hang would be 10 minutes (the overlay) or 30 (torch)
        waited = time.monotonic() - start
        rank1 = procs[1].poll()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for log in logs:
            log.close()
    err = (tmp_path / "rank0.err").read_text()
    assert rank1 == (-signal.SIGKILL if how == "SIGKILL" else None), err[-3000:]  # SIGSTOP: still there, stopped
    assert rank0 == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("resnet-lit: error: rank 0 of 2: a collective operation failed: rank 1 died or stopped "
                           "answering within the timeout (gloo: "), last
    assert any(s in last for s in backend_says), last
    assert last.endswith("Resume with `--ckpt_path last` (or `auto`) once no process of this run is left."), last
    assert "Traceback" not in err
    if how == "SIGSTOP":
        assert waited > COLLECTIVE_TIMEOUT_S
