"""``train.strategy: fsdp``: PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``) behind the
:class:`toolkit.engine.strategy.Strategy` verbs.

* Sharding (torchtitan's ``apply_fsdp``): ``fully_shard`` on each block the task declares
  (:meth:`toolkit.tasks.base.Task.blocks`), then on the root. Parameters become ``DTensor`` shards
  (dim 0 over the ranks); the AdamW built before is pointed at them (its state is still empty) and
  runs non-fused (``foreach``), so a non-finite step is skipped on the host (``device_skip`` is False).
* Precision: ``train.precision=bf16`` -> ``MixedPrecisionPolicy(param_dtype=bfloat16,
  reduce_dtype=float32)`` (bf16 compute, fp32 gradient reduction, fp32 sharded master weights and
  AdamW moments); fp32 runs without a policy. fp16 and ``train.compile`` are refused by the config.
* Gradient accumulation: every micro-batch reduce-scatters its gradients (no ``no_sync``), so the
  result is the same, with more communication.
* ``step``: ``torch.nn.utils.clip_grad_norm_`` over the sharded gradients (the norm is a ``DTensor``; its
  full value, the same on every rank, decides the skip), then AdamW
  (:class:`toolkit.engine.strategy.TorchOptimizerStep`).
* :class:`toolkit.engine.strategy.FullWeights` (checkpoint ``model``): full weights gathered with
  ``torch.distributed.checkpoint.state_dict.get_model_state_dict(full_state_dict=True)`` into a plain
  copy of the model (every rank, so evaluation, pictures, EMA and exports use it unchanged);
  ``iter_N.pt`` loads into a plain model with ``weights_only=True``.
* :class:`FSDPShardedState` (checkpoint ``optimizer``): model and AdamW shards written with
  ``torch.distributed.checkpoint`` (DCP) into ``checkpoints/iter_N_fsdp/`` (via ``iter_N_fsdp.tmp/``,
  renamed when every rank has written), referenced from ``iter_N.pt`` with each file's SHA-256.
  Resume is exact for the same world size; another world size is refused (names both sizes).
* EMA: updated from the gathered full weights every step (one all-gather per step, every rank).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from toolkit.engine.strategy import (FullWeights, ShardedStateRef, Strategy, TorchOptimizerStep,
                                     check_sharded_state, ensure_dist_env, write_sharded_state)

FSDP_SUFFIX = "_fsdp"  #: ``iter_{N:09d}_fsdp/``: FSDP2's DCP state of step N


def fsdp_dir_name(step: int) -> str:
    """``iter_{step:09d}_fsdp``: the folder (beside ``iter_N.pt``) holding the DCP shards of step ``step``."""
    return f"iter_{step:09d}{FSDP_SUFFIX}"


class FSDPShardedState(ShardedStateRef):
    """The checkpoint's ``optimizer`` part: a reference to ``iter_N_fsdp/`` (DCP shards of the model and
    AdamW) with the strategy, world size and each file's SHA-256.

    ``load_state_dict`` raises ``ValueError`` (the checkpointer reports it as a CheckpointError naming the
    file) for a checkpoint of another strategy or world size, a missing folder or a damaged file."""

    def load_state_dict(self, state: dict) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        s = self.strategy
        if state.get("strategy") == "fsdp" and int(state["world_size"]) != s.world_size:
            raise ValueError(f"its FSDP state is sharded over {state['world_size']} ranks; this run has "
                             f"{s.world_size} ranks (resume with --nproc_per_node={state['world_size']})")
        folder = check_sharded_state(state, s, "FSDP")
        model_sd, optim_sd = get_state_dict(s.model, s.inner)
        target = {"model": model_sd, "optim": optim_sd}
        dcp.load(target, checkpoint_id=str(folder))
        set_state_dict(s.model, s.inner, model_state_dict=target["model"], optim_state_dict=target["optim"])
        s.saved = dict(state)


class FSDPStrategy(TorchOptimizerStep, Strategy):
    """A model and optimizer under FSDP2 (see the module docstring).

    Args:
        cfg: the run config (``train.precision``).
        accelerator: the run's ``Accelerator`` (process group, device; its mixed precision is unused).
        model: the plain model (fp32, initial weights), sharded in place.
        optimizer: the AdamW built over ``model``'s parameters (the schedule is built on it); pointed at
            the sharded parameters.
        directory: the run's ``checkpoints/`` folder (where ``iter_N_fsdp/`` are written).
        blocks: the task's declared blocks (:meth:`Task.blocks`), each sharded on its own.

    Attributes:
        model, module: the sharded model (what the step loop calls). optimizer, inner: the AdamW.
        template: a plain copy holding the gathered full weights.
        model_part, optimizer_part: the checkpoint's ``model`` and ``optimizer`` entries.

    Raises:
        RuntimeError: no process group (FSDP2 needs torchrun or a world of one; set up here then).
    """

    name = "fsdp"

    def __init__(self, cfg, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path,
                 blocks: list[nn.Module]):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        super().__init__(accelerator)
        self.cfg, self.directory = cfg, Path(directory)
        if not torch.distributed.is_initialized():
            ensure_dist_env()
            torch.distributed.init_process_group("nccl" if accelerator.device.type == "cuda" else "gloo")
        model = model.to(accelerator.device)
        # FSDP2 shards plain row-major tensors: channels_last conv weights become contiguous (in place, so the
        # optimizer's references stay valid; convolutions then take another kernel, as under DeepSpeed)
        for p in model.parameters():
            if p.dim() and not p.is_contiguous():
                p.data = p.data.contiguous()
        self.template = copy.deepcopy(model)
        self.template.requires_grad_(False)
        names = {id(p): n for n, p in model.named_parameters()}
        old = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if cfg.train.precision == "bf16" else MixedPrecisionPolicy())
        for block in blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        new = dict(model.named_parameters())
        for group, group_names in zip(optimizer.param_groups, old):
            group["params"] = [new[n] for n in group_names]
            group["fused"] = False
        optimizer.defaults["fused"] = False
        self.model = self.module = model
        self.optimizer = self.inner = optimizer
        self.scaler = None
        self.model_part, self.optimizer_part = FullWeights(self), FSDPShardedState(self)
        self.saved: dict = {}

    def backward(self, loss: torch.Tensor, last: bool = True) -> None:
        """``loss.backward()``: every micro-step reduce-scatters its gradients (no deferral under FSDP2 here)."""
        loss.backward()

    def _clip(self, max_norm: float) -> torch.Tensor:
        """Clip the sharded gradients to ``max_norm`` (inf = measure only). Returns the global norm before
        clipping, a plain 0-d float32 tensor on the device (the same on every rank)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return norm.detach().to(device=self.device, dtype=torch.float32)

    @property
    def plain_model(self) -> nn.Module:
        return self.template

    @torch.no_grad()
    def full_weights(self) -> nn.Module:
        """The plain model holding the current full weights (all-gathered: every rank must call it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
        self.template.load_state_dict(full)
        return self.template

    def before_save(self, step: int) -> None:
        """Every rank: write the DCP shards to ``iter_N_fsdp/`` (via ``iter_N_fsdp.tmp/``) and gather the
        full weights, before the checkpointer writes ``iter_N.pt`` (which names the folder)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        name = fsdp_dir_name(step)
        model_sd, optim_sd = get_state_dict(self.model, self.inner)
        files = write_sharded_state(self, name, lambda tmp: dcp.save({"model": model_sd, "optim": optim_sd},
                                                                     checkpoint_id=str(tmp)))
        self.saved = {"strategy": "fsdp", "world_size": self.world_size, "dir": name, "files": files}
        self.full_weights()
