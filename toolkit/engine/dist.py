"""Process-group set-up and tear-down that torch leaves to the caller.

**Restarted groups.** The process group of a worker group that ``torchrun --max-restarts=N`` restarted.

torchrun's workers reach the c10d store that the agent (node 0's torchrun) runs
(``TORCHELASTIC_USE_AGENT_STORE=True``), and ``init_process_group(init_method="env://")`` connects to it
without a per-attempt prefix (torch/distributed/rendezvous.py: "We create a new TCPStore for every retry
so no need to add prefix for each attempt" - but the agent's store is the same server across restarts).
A restarted group then reads the previous attempt's gloo/NCCL addresses and fails to connect
("Gloo connectFullMesh failed ... Connection refused", pytorch/pytorch#167288). Every elastic restart
failed that way before this module.

:func:`init_restarted_group` creates the default process group itself for a restarted attempt
(``TORCHELASTIC_RESTART_COUNT`` > 0), over ``PrefixStore("toolkit/attempt_{N}", agent store)``; Accelerate
(and DeepSpeed) then find it initialised and use it. The first attempt is left to Accelerate as before.

**Exit.** :func:`exit_process`: a gloo process sometimes aborts at interpreter exit ("terminate called
without an active exception", SIGABRT) even after ``destroy_process_group()``: a library (FSDP2, DeepSpeed,
Accelerate) still holds the process group, so its gloo threads are torn down during interpreter
finalisation (pytorch/pytorch#190489). Measured here: the FSDP2 strategy contract helper aborted in 1 of
12 runs at exit with 4 runs at once on 2 cores (after its result was written), and toolkit.train's
runs did before issue 13 made it leave through ``os._exit`` right after ``destroy_process_group()``.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import NoReturn


def init_restarted_group(device: str, timeout: timedelta | None) -> bool:
    """Initialise the default process group of a restarted torchrun attempt; True if it did.

    Args:
        device: ``"cpu"`` (gloo) or ``"cuda"`` (NCCL), as :func:`toolkit.engine.device.select_device` returns.
        timeout: init and collective timeout (None: torch's default).

    Does nothing (False) outside torchrun, on the first attempt, for one process, without the agent's
    store, or when a process group exists already.
    """
    import torch
    import torch.distributed as dist

    env = os.environ
    attempt = int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    world = int(env.get("WORLD_SIZE", "1"))
    if (attempt <= 0 or world <= 1 or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            or not dist.is_available() or dist.is_initialized()):
        return False
    kwargs = {"timeout": timeout} if timeout is not None else {}
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world_size=world, is_master=False, **kwargs)
    backend = "nccl" if device == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(env.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, store=dist.PrefixStore(f"toolkit/attempt_{attempt}", store),
                            rank=int(env["RANK"]), world_size=world, **kwargs)
    return True


def leave_process_group() -> bool:
    """Destroy the default process group if one exists; True if it did."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def exit_process(code: int) -> NoReturn:
    """End the process with exit status ``code``, safely for a member of a process group.

    With a process group (or a non-zero ``code``) the group is destroyed, stdout/stderr are flushed and
    the process leaves through ``os._exit``, skipping interpreter finalisation, where gloo threads that a
    library still holds would abort the process (module docstring); otherwise ``sys.exit(code)``.
    Call it last: ``atexit`` handlers do not run on the ``os._exit`` path.
    """
    if leave_process_group() or code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
