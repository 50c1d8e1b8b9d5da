"""torchrun restarts: a fresh rendezvous store for every attempt.

When a worker dies, torchrun's agent stops the others and starts the group again
(``--max-restarts``). The restarted workers meet through the agent's TCPStore
(``TORCHELASTIC_USE_AGENT_STORE=True``, always so with torchrun's default static rendezvous, and
with ``--standalone`` / c10d unless ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``), and that store still
holds the previous attempt's keys under the same names: the addresses the dead processes'
process group published. A new rank can read a dead one's address and wait for it: with
torch 2.14 and gloo the restarted group hung in ``init_process_group`` ("connectFullMesh failed
... Connection refused" after minutes), so a restart never resumed.

``fresh_store_for_restart`` avoids that from inside the workers: on an attempt after the first,
global rank 0 picks a free port, publishes it (and its host) in the agent's store under a key
named by the attempt, and every rank points ``MASTER_ADDR``/``MASTER_PORT`` at it with
``TORCHELASTIC_USE_AGENT_STORE=False``; rank 0 then hosts a new, empty store there, which is what
torch does itself for every round when ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

_KEY = "resnet_lit/restart_{attempt}/store"


def fresh_store_for_restart(timeout: timedelta = timedelta(minutes=5)) -> bool:
    """Point this worker at a new rendezvous store when torchrun restarted the group; True if it did."""
    env = os.environ
    attempt = int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if attempt == 0 or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return False
    from torch.distributed import TCPStore

    agent = TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout)
    key = _KEY.format(attempt=attempt)
    if int(env["RANK"]) == 0:
        one_node = env.get("LOCAL_WORLD_SIZE") == env.get("WORLD_SIZE")
        host = env["MASTER_ADDR"] if one_node else socket.getfqdn()
        agent.set(key, f"{host} {_free_port()}")
    host, port = agent.get(key).decode().split()
    env.update(MASTER_ADDR=host, MASTER_PORT=port, TORCHELASTIC_USE_AGENT_STORE="False")
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])
