"""``train.strategy: deepspeed``: DeepSpeed ZeRO 1/2/3 behind the :class:`toolkit.engine.strategy.Strategy` verbs.

Plain DeepSpeed (``deepspeed.initialize`` with the engine's own ``torch.optim.AdamW`` as client optimizer,
not Accelerate's DeepSpeed plugin, which on CPU needs ``transformers`` and drops DeepSpeed with ``cpu=True``):

* ``backward(loss, last)``: ``engine.backward`` (the loop already divides by ``grad_accum``); on the
  micro-steps before the last, ``engine.step()`` too, which only advances DeepSpeed's micro-step count
  there (``gradient_accumulation_steps = train.grad_accum``; DeepSpeed reduces at the boundary).
* ``step(max_norm, skip)``: ``engine.step()`` at the accumulation boundary: DeepSpeed reduces, clips to
  ``gradient_clipping`` (= ``train.grad_clip``, the loop's ``max_norm``) and applies AdamW, or skips the
  update when the gradient norm is non-finite (its overflow check, fp32 weights on every stage). The
  update is decided inside the engine: ``skip`` (a non-finite loss on some rank) is honoured through the
  gradients, which such a loss makes non-finite. Returns the norm before clipping (``inf`` for a skipped
  step) and ``skipped = not engine.was_step_applied()``. A skipped step leaves the schedule where it was.
* Precision: weights, gradients and AdamW states stay fp32 (DeepSpeed's partitions); ``bf16`` runs the
  engine's forward under ``torch.autocast(dtype=bfloat16)`` as Accelerate does for DDP, through DeepSpeed's
  ``torch_autocast`` section, with no module marked lower-precision-safe, so gradients are still reduced
  in fp32. DeepSpeed's own bf16/fp16 modes (16-bit weights) are not used; ``fp16`` is refused.
* :class:`FullWeights` (the checkpoint's ``model`` entry): the full, unsharded weights; under ZeRO-3
  gathered (:meth:`DeepSpeedStrategy.full_weights`, every rank) into a plain copy of the model built
  before partitioning. ``iter_N.pt`` therefore holds full weights loadable with ``weights_only=True`` into
  a plain model; evaluation, pictures and exports use that gathered copy.
* :class:`ShardedState` (the checkpoint's ``optimizer`` entry): DeepSpeed's partitioned state (fp32 master
  weights and AdamW moments per rank) written by ``engine.save_checkpoint`` into ``checkpoints/iter_N_zero/``
  before ``iter_N.pt`` (as ``iter_N_zero.tmp/``, renamed when every rank has written), referenced from
  the ``.pt`` by name with each file's SHA-256 (so the ``.pt``'s integrity hash covers them). Resume loads
  it with ``engine.load_checkpoint`` (same ZeRO stage and world size).
* EMA: under ZeRO-3 the update reads the weights inside ``deepspeed.zero.GatheredParameters`` (every
  rank, one all-gather per step); the EMA copy is full.

Raises:
    ConfigError: a ``deepspeed.config`` file that is not a JSON object (:func:`deepspeed_config`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.config import ConfigError
from toolkit.engine.strategy import (FullWeights, ShardedStateRef, Strategy, Update, check_sharded_state,
                                     ensure_dist_env, write_sharded_state)

SHARDED_SUFFIX = "_zero"  #: ``iter_{N:09d}_zero/``: DeepSpeed's sharded state of step N


def sharded_dir_name(step: int) -> str:
    """``iter_{step:09d}_zero``: the folder (beside ``iter_N.pt``) holding DeepSpeed's per-rank state."""
    return f"iter_{step:09d}{SHARDED_SUFFIX}"


def deepspeed_config(cfg, world_size: int) -> dict:
    """The DeepSpeed config dict of a run.

    Args:
        cfg: the run's :class:`toolkit.config.Config` (``train``, ``data.batch_size`` and ``deepspeed``).
        world_size: number of ranks.

    The engine owns the batch keys (``train_micro_batch_size_per_gpu = data.batch_size``,
    ``gradient_accumulation_steps = train.grad_accum``, ``train_batch_size`` = their product x world
    size), ``gradient_clipping = train.grad_clip`` and precision (fp32 weights; bf16 by autocast); a
    ``deepspeed.config`` JSON file contributes everything else (its ``zero_optimization`` replaces the
    one built from the ``deepspeed.*`` keys).

    Raises:
        ConfigError: a ``deepspeed.config`` file that does not exist, is not JSON, or is not an object.
    """
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": int(ds.stage), "reduce_bucket_size": int(ds.reduce_bucket_size),
                            "allgather_bucket_size": int(ds.allgather_bucket_size), "overlap_comm": False,
                            "contiguous_gradients": True}
    if ds.stage == 3:
        zero.update({"stage3_param_persistence_threshold": int(ds.param_persistence_threshold),
                     "stage3_prefetch_bucket_size": int(ds.allgather_bucket_size),
                     "stage3_gather_16bit_weights_on_model_save": False})
        zero.pop("allgather_bucket_size")
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu"}
    out: dict[str, Any] = {}
    if ds.config:
        path = Path(ds.config)
        try:
            loaded = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"deepspeed.config: file '{path}' does not exist") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"deepspeed.config: '{path}' is not a readable JSON file ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"deepspeed.config: '{path}' must hold a JSON object, got {type(loaded).__name__}")
        out.update(loaded)
        zero = out.get("zero_optimization", zero)
    out.update({"train_micro_batch_size_per_gpu": int(cfg.data.batch_size),
                "gradient_accumulation_steps": int(cfg.train.grad_accum),
                "train_batch_size": int(cfg.data.batch_size) * int(cfg.train.grad_accum) * int(world_size),
                "gradient_clipping": float(cfg.train.grad_clip),
                "zero_optimization": zero, "zero_allow_untested_optimizer": True,
                "zero_force_ds_cpu_optimizer": False, "steps_per_print": 10**12, "wall_clock_breakdown": False,
                "fp16": {"enabled": False}, "bf16": {"enabled": False},
                "torch_autocast": {"enabled": cfg.train.precision == "bf16", "dtype": "bfloat16",
                                   "lower_precision_safe_modules": []}})
    return out


class EngineForward:
    """What the task's ``losses`` calls as ``model(...)``: the DeepSpeed engine's forward (bf16 autocast
    comes from the engine's ``torch_autocast`` config); every other attribute is the engine's."""

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


class ShardedState(ShardedStateRef):
    """The checkpoint's ``optimizer`` part: a reference to ``iter_N_zero/`` (DeepSpeed's per-rank fp32
    partitions and AdamW moments) with the strategy, ZeRO stage, world size and each file's SHA-256.

    ``load_state_dict`` raises ``ValueError`` (the checkpointer reports it as a checkpoint that does not
    fit) for a checkpoint of another strategy, stage or world size, a missing folder or a damaged file."""

    def load_state_dict(self, state: dict) -> None:
        s = self.strategy
        if state.get("strategy") == "deepspeed" and (int(state["zero_stage"]) != s.stage
                                                     or int(state["world_size"]) != s.world_size):
            raise ValueError(f"its DeepSpeed state is ZeRO-{state['zero_stage']} over {state['world_size']} ranks; "
                             f"this run is ZeRO-{s.stage} over {s.world_size} ranks")
        folder = check_sharded_state(state, s, "DeepSpeed")
        path, _client = s.engine.load_checkpoint(str(s.directory), tag=state["dir"], load_optimizer_states=True,
                                                 load_lr_scheduler_states=False, load_module_strict=True)
        if path is None:
            raise ValueError(f"DeepSpeed could not load '{folder}'")
        s.saved = dict(state)


class DeepSpeedStrategy(Strategy):
    """A model and optimizer under DeepSpeed ZeRO (see the module docstring).

    Args:
        cfg: the run config (``train``, ``data.batch_size``, ``deepspeed``).
        accelerator: the run's ``Accelerator`` (process group, device; its mixed precision is unused).
        model: the plain model (fp32, initial weights); ZeRO-3 partitions it in place.
        optimizer: the client AdamW built over ``model``'s parameters (the schedule is built on it).
        directory: the run's ``checkpoints/`` folder (where ``iter_N_zero/`` are written).

    Attributes:
        engine: the DeepSpeed engine. model: what the step loop calls (:class:`EngineForward`).
        optimizer: the client AdamW (the schedule sets its ``param_groups``; DeepSpeed steps it over its
        partitions). module: ``engine.module``. template: a plain copy of the model that holds the
        gathered full weights. model_part, optimizer_part: the checkpoint's ``model`` and ``optimizer`` entries.
    """

    name = "deepspeed"

    def __init__(self, cfg, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path):
        import deepspeed

        super().__init__(accelerator)
        self.cfg, self.directory = cfg, Path(directory)
        self.ds_config = deepspeed_config(cfg, self.world_size)
        #: the ZeRO stage that runs (a ``deepspeed.config`` file's ``zero_optimization`` decides it)
        self.stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self.template = copy.deepcopy(model).to(accelerator.device)
        self.template.requires_grad_(False)
        if not torch.distributed.is_initialized():
            ensure_dist_env()
        backend = "nccl" if accelerator.device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        # DeepSpeed views parameters as bytes and as slices of flat buffers: plain row-major strides (the
        # tokenizer's channels_last conv weights become contiguous; convolutions then take another kernel)
        for p in model.parameters():
            if p.dim() and p.stride() != torch.empty(p.shape, device="meta").stride():
                p.data = torch.empty(p.shape, dtype=p.dtype, device=p.device).copy_(p.data)
        self.engine, _opt, _, _ = deepspeed.initialize(model=model.to(accelerator.device), optimizer=optimizer,
                                                       config=self.ds_config, dist_init_required=False)
        self.model = EngineForward(self.engine)
        self.optimizer = optimizer
        self.module = self.engine.module
        self.model_part, self.optimizer_part = FullWeights(self), ShardedState(self)
        self.saved: dict = {}

    def backward(self, loss: torch.Tensor, last: bool = True) -> None:
        """``engine.backward`` of ``loss`` (already divided by ``grad_accum``); before the last micro-step
        also ``engine.step()``, which there only advances DeepSpeed's micro-step count.

        Raises:
            RuntimeError: ``last`` disagrees with DeepSpeed's accumulation boundary.
        """
        if last != self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeed's accumulation boundary disagrees with the step loop's: train.grad_accum "
                               "and the engine's gradient_accumulation_steps differ")
        self.engine.backward(loss, scale_wrt_gas=False)
        if not last:
            self.engine.step()

    def step(self, max_norm: float, skip: torch.Tensor | bool) -> Update:
        """``engine.step()``: reduce, clip to ``gradient_clipping`` (= ``max_norm``), AdamW, or no update on
        a non-finite gradient norm (``skip`` acts through the gradients: module docstring). The norm is
        ``inf`` for a step DeepSpeed skipped."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        applied = bool(self.engine.was_step_applied())
        if not applied and norm == norm and abs(norm) != float("inf"):
            norm = float("inf")
        return Update(torch.tensor(norm, dtype=torch.float32, device=self.device), not applied)

    def update_ema(self, ema, good: torch.Tensor | None = None) -> None:
        """From the engine's module; under ZeRO-3 inside ``GatheredParameters`` (every rank)."""
        if self.stage < 3:
            return ema.update(self.module, good=good)
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters())):
            ema.update(self.module, good=good)

    @property
    def plain_model(self) -> nn.Module:
        return self.template

    @torch.no_grad()
    def full_weights(self) -> nn.Module:
        """The plain model holding the current full weights (gathered over ranks under ZeRO-3: every
        rank must call it). For evaluation, pictures, exports and ``iter_N.pt``."""
        module = self.engine.module
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters())):
                self.template.load_state_dict(module.state_dict())
        else:
            self.template.load_state_dict(module.state_dict())
        return self.template

    def before_save(self, step: int) -> None:
        """Every rank: write DeepSpeed's sharded state to ``iter_N_zero/`` (via ``iter_N_zero.tmp/``) and
        gather the full weights, before the checkpointer writes ``iter_N.pt`` (which names the folder)."""
        name = sharded_dir_name(step)

        def write(tmp: Path) -> None:
            self.engine.save_checkpoint(str(self.directory), tag=tmp.name, client_state={}, save_latest=False)
            if self.is_main:
                for script in ("zero_to_fp32.py", "zero_to_torch.py"):  # DeepSpeed's converters, not needed here
                    (self.directory / script).unlink(missing_ok=True)

        files = write_sharded_state(self, name, write)
        self.saved = {"strategy": "deepspeed", "zero_stage": self.stage, "world_size": self.world_size,
                      "dir": name, "files": files}
        self.full_weights()
