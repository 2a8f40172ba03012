"""Training strategies: ``train.strategy: ddp`` (Accelerate's DDP, the default) or ``deepspeed`` (ZeRO 1/2/3).

DDP needs nothing here: the trainer prepares the model with Accelerate. ``deepspeed`` runs plain
DeepSpeed (``deepspeed.initialize`` with the engine's own ``torch.optim.AdamW`` as client optimizer,
not Accelerate's DeepSpeed plugin, which on CPU needs ``transformers`` and drops DeepSpeed with
``cpu=True``) behind small adapters, so the step loop (:mod:`toolkit.engine.step`), the checkpointer
and the EMA run unchanged:

* :class:`StepAccelerator` stands in for the ``Accelerator`` the step loop is given: ``backward``
  is ``engine.backward`` (the loop already divides by ``grad_accum``) followed by ``engine.step()``
  between accumulation boundaries (DeepSpeed counts micro-steps itself, ``gradient_accumulation_steps =
  train.grad_accum``); ``clip_grad_norm_`` at the boundary runs ``engine.step()`` (DeepSpeed clips to
  ``gradient_clipping = train.grad_clip`` and applies AdamW) and returns the gradient norm before
  clipping; ``no_sync`` is a no-op (DeepSpeed reduces at the boundary). Everything else is delegated to
  the real ``Accelerator`` (device, process index, gathers).
* Non-finite guard: DeepSpeed itself skips an update whose gradient norm is NaN/inf (its overflow
  check, in fp32 weights on every stage); the norm then reads ``inf``, so the loop's agreement marks
  the step skipped and counts it. A non-finite loss gives non-finite gradients, so the same holds.
  A skipped DeepSpeed step leaves the learning-rate schedule where it was, like a skipped DDP step.
* Precision: weights, gradients and AdamW states stay fp32 (DeepSpeed's partitions); ``bf16`` runs the
  engine's forward under ``torch.autocast(dtype=bfloat16)`` as Accelerate does for DDP, through DeepSpeed's
  ``torch_autocast`` section (DeepSpeed switches off an autocast opened outside it) with no module marked
  lower-precision-safe, so gradients are still reduced in fp32; inputs need no cast. DeepSpeed's own
  bf16/fp16 modes (16-bit weights) are not used; ``fp16`` is refused.
* :class:`FullWeights` (the checkpoint's ``model`` entry): the full, unsharded weights; under ZeRO-3 gathered
  (:meth:`DeepSpeedStrategy.full_model`, every rank) into a plain copy of the model built before
  partitioning. ``iter_N.pt`` therefore holds full weights loadable with ``weights_only=True`` into a
  plain model; evaluation, pictures and exports use that gathered copy.
* :class:`ShardedState` (the checkpoint's ``optimizer`` entry): DeepSpeed's partitioned state (fp32
  master weights and AdamW moments per rank) written by ``engine.save_checkpoint`` into
  ``checkpoints/iter_N_zero/`` before ``iter_N.pt`` (as ``iter_N_zero.tmp/``, renamed when every rank has
  written), referenced from the ``.pt`` by name with each file's SHA-256 (so the ``.pt``'s integrity hash
  covers them). Resume loads it with ``engine.load_checkpoint`` (same ZeRO stage and world size).
* :class:`GatheredEMA`: under ZeRO-3 the EMA update reads the weights inside
  ``deepspeed.zero.GatheredParameters`` (every rank, one all-gather per step); the EMA copy is full.

Raises (from :func:`build_strategy`):
    ConfigError: ``train.strategy=deepspeed`` without the ``deepspeed`` package
        (``pip install -e .[deepspeed]``), or a ``deepspeed.config`` file that is not a JSON object.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from toolkit.config import ConfigError
from toolkit.files import file_sha256

SHARDED_SUFFIX = "_zero"  #: ``iter_{N:09d}_zero/``: DeepSpeed's sharded state of step N
SHARDED_SUFFIXES = (SHARDED_SUFFIX, "_fsdp")  #: every strategy's sharded-state suffix (fsdp: toolkit.engine.fsdp)


def sharded_dir_name(step: int) -> str:
    """``iter_{step:09d}_zero``: the folder (beside ``iter_N.pt``) holding DeepSpeed's per-rank state."""
    return f"iter_{step:09d}{SHARDED_SUFFIX}"


def sharded_dir_names(step: int) -> list[str]:
    """Every strategy's sharded-state folder name of step ``step`` (``iter_N_zero``, ``iter_N_fsdp``)."""
    return [f"iter_{step:09d}{suffix}" for suffix in SHARDED_SUFFIXES]


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



def _ensure_dist_env() -> None:
    """A single process (no torchrun) still needs a process group for DeepSpeed: a world of one."""
    if "WORLD_SIZE" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port)})


class EngineForward:
    """What the task's ``losses`` calls as ``model(...)``: the DeepSpeed engine's forward (bf16 autocast
    comes from the engine's ``torch_autocast`` config); every other attribute is the engine's."""

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


class StepAccelerator:
    """The ``Accelerator`` interface the step loop uses, mapped onto a DeepSpeed engine (module docstring)."""

    def __init__(self, accelerator, engine):
        self._acc, self.engine = accelerator, engine
        self.scaler = None  # fp32 weights: no loss scaling

    def __getattr__(self, name):  # device, num_processes, process_index, reduce, gather, ...
        return getattr(self._acc, name)

    def no_sync(self, model):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        """Back-propagate ``loss`` (already divided by ``grad_accum``); between accumulation boundaries
        also advance DeepSpeed's micro-step counter (``engine.step()`` updates nothing there)."""
        self.engine.backward(loss, scale_wrt_gas=False)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        """At the accumulation boundary: ``engine.step()`` (reduce, clip to ``gradient_clipping``, AdamW,
        or skip on a non-finite norm). Returns the global gradient norm before clipping (``inf`` for a
        step DeepSpeed skipped), a 0-d float32 tensor on the device."""
        if not self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeed step requested off an accumulation boundary: train.grad_accum and "
                               "the engine's gradient_accumulation_steps disagree")
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        if not self.engine.was_step_applied() and norm == norm and abs(norm) != float("inf"):
            norm = float("inf")  # skipped by DeepSpeed: make the loop count it as a skipped step
        return torch.tensor(norm, dtype=torch.float32, device=self._acc.device)

    @property
    def optimizer_step_was_skipped(self) -> bool:
        return not self.engine.was_step_applied()

    def unwrap_model(self, model, *args, **kwargs) -> nn.Module:
        return self.engine.module


class OptimizerProxy:
    """The optimizer the step loop and the schedule see: the client AdamW's ``param_groups`` (DeepSpeed
    steps it over its partitions, so the schedule's lr reaches it); ``step``/``zero_grad`` are no-ops
    because :class:`StepAccelerator` steps the engine, which also clears the gradients."""

    def __init__(self, client: torch.optim.Optimizer):
        self.client = client

    @property
    def param_groups(self):
        return self.client.param_groups

    def step(self, *args, **kwargs) -> None:
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None


class GatheredEMA:
    """An :class:`~toolkit.engine.ema.EMA` whose update gathers ZeRO-3 partitions first (every rank
    must call it; the step loop does). Other attributes are the EMA's."""

    def __init__(self, ema, stage: int):
        self.ema, self.stage = ema, stage

    def __getattr__(self, name):
        return getattr(self.ema, name)

    def update(self, model: nn.Module, **kwargs) -> None:
        if self.stage < 3:
            return self.ema.update(model, **kwargs)
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            self.ema.update(model, **kwargs)


class FullWeights:
    """The checkpoint's ``model`` part: full weights (a plain state dict, CPU-loadable with
    ``weights_only=True``). ``state_dict`` returns the copy gathered by the last
    :meth:`DeepSpeedStrategy.full_model` (the trainer gathers before every save);
    ``load_state_dict`` checks the weights fit (the engine's own state comes from :class:`ShardedState`)."""

    def __init__(self, strategy: "DeepSpeedStrategy"):
        self.strategy = strategy

    def state_dict(self) -> dict:
        return self.strategy.template.state_dict()

    def load_state_dict(self, state: dict):
        return self.strategy.template.load_state_dict(state)


class ShardedState:
    """The checkpoint's ``optimizer`` part: a reference to ``iter_N_zero/`` (DeepSpeed's per-rank fp32
    partitions and AdamW moments) with the strategy, ZeRO stage, world size and each file's SHA-256.

    ``load_state_dict`` raises ``ValueError`` (the checkpointer reports it as a checkpoint that does not
    fit) for a checkpoint of another strategy, stage or world size, a missing folder or a damaged file."""

    def __init__(self, strategy: "DeepSpeedStrategy"):
        self.strategy = strategy

    def state_dict(self) -> dict:
        return dict(self.strategy.saved)

    def load_state_dict(self, state: dict) -> None:
        s = self.strategy
        if state.get("strategy") != "deepspeed":
            raise ValueError(f"its optimizer state was written by train.strategy={state.get('strategy', 'ddp')}; "
                             "this run uses train.strategy=deepspeed (resume with the strategy that wrote it)")
        if int(state["zero_stage"]) != s.stage or int(state["world_size"]) != s.world_size:
            raise ValueError(f"its DeepSpeed state is ZeRO-{state['zero_stage']} over {state['world_size']} ranks; "
                             f"this run is ZeRO-{s.stage} over {s.world_size} ranks")
        folder = s.directory / state["dir"]
        for name, digest in state.get("files", {}).items():
            f = folder / name
            if not f.is_file():
                raise ValueError(f"its DeepSpeed state file '{f}' is missing")
            if file_sha256(f) != digest:
                raise ValueError(f"its DeepSpeed state file '{f}' is damaged (SHA-256 mismatch)")
        path, _client = s.engine.load_checkpoint(str(s.directory), tag=state["dir"], load_optimizer_states=True,
                                                 load_lr_scheduler_states=False, load_module_strict=True)
        if path is None:
            raise ValueError(f"DeepSpeed could not load '{folder}'")
        s.saved = dict(state)


class DeepSpeedStrategy:
    """A model and optimizer under DeepSpeed ZeRO (see the module docstring).

    Args:
        cfg: the run config (``train``, ``data.batch_size``, ``deepspeed``).
        accelerator: the run's ``Accelerator`` (process group, device; its mixed precision is unused).
        model: the plain model (fp32, initial weights); ZeRO-3 partitions it in place.
        optimizer: the client AdamW built over ``model``'s parameters (the schedule is built on it).
        directory: the run's ``checkpoints/`` folder (where ``iter_N_zero/`` are written).

    Attributes:
        engine: the DeepSpeed engine. model: what the step loop calls (:class:`EngineForward`).
        optimizer: :class:`OptimizerProxy`. step_accelerator: :class:`StepAccelerator`.
        template: a plain copy of the model that holds the gathered full weights.
        model_part, optimizer_part: the checkpoint's ``model`` and ``optimizer`` entries.
    """

    name = "deepspeed"

    def __init__(self, cfg, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path):
        import deepspeed

        self.cfg, self.accelerator, self.directory = cfg, accelerator, Path(directory)
        self.world_size = accelerator.num_processes
        self.ds_config = deepspeed_config(cfg, self.world_size)
        #: the ZeRO stage that runs (a ``deepspeed.config`` file's ``zero_optimization`` decides it)
        self.stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self.is_main = accelerator.is_main_process
        self.template = copy.deepcopy(model).to(accelerator.device)
        self.template.requires_grad_(False)
        if not torch.distributed.is_initialized():
            _ensure_dist_env()
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
        self.optimizer = OptimizerProxy(optimizer)
        self.step_accelerator = StepAccelerator(accelerator, self.engine)
        self.model_part, self.optimizer_part = FullWeights(self), ShardedState(self)
        self.saved: dict = {}

    def wrap_ema(self, ema):
        """The EMA for the step loop (gathers under ZeRO-3); None stays None."""
        return GatheredEMA(ema, self.stage) if ema is not None else None

    @torch.no_grad()
    def full_model(self) -> nn.Module:
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
        final, tmp = self.directory / name, self.directory / (name + ".tmp")
        if self.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.engine.save_checkpoint(str(self.directory), tag=tmp.name, client_state={}, save_latest=False)
        self.accelerator.wait_for_everyone()
        files = {}
        if self.is_main:
            for script in ("zero_to_fp32.py", "zero_to_torch.py"):  # DeepSpeed's converters, not needed here
                (self.directory / script).unlink(missing_ok=True)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            files = {str(p.relative_to(final)): file_sha256(p) for p in sorted(final.rglob("*")) if p.is_file()}
        self.accelerator.wait_for_everyone()
        self.saved = {"strategy": "deepspeed", "zero_stage": self.stage, "world_size": self.world_size,
                      "dir": name, "files": files}
        self.full_model()


def build_strategy(cfg, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
                   directory: Path, blocks: list[nn.Module] | None = None):
    """None for ``train.strategy=ddp`` (the trainer prepares with Accelerate), a
    :class:`DeepSpeedStrategy` for ``deepspeed``, or a :class:`toolkit.engine.fsdp.FSDPStrategy` for
    ``fsdp`` (``blocks``: the task's declared blocks, each sharded on its own).

    Raises:
        ConfigError: ``deepspeed`` not installed, or a bad ``deepspeed.config`` file.
    """
    if cfg.train.strategy == "ddp":
        return None
    if cfg.train.strategy == "fsdp":
        from toolkit.engine.fsdp import FSDPStrategy

        return FSDPStrategy(cfg, accelerator, model, optimizer, directory, list(blocks or []))
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise ConfigError("train.strategy=deepspeed needs the deepspeed package: pip install -e '.[deepspeed]' "
                          f"({type(exc).__name__}: {exc})") from None
    return DeepSpeedStrategy(cfg, accelerator, model, optimizer, directory)


def sharded_dirs(directory: Path) -> Iterator[tuple[int | None, Path]]:
    """``(step, path)`` of every ``iter_N_zero/`` (DeepSpeed) and ``iter_N_fsdp/`` (FSDP2) folder in
    ``directory``; ``(None, path)`` for a left-over ``.tmp/`` of an interrupted save."""
    if not Path(directory).is_dir():
        return
    for suffix in SHARDED_SUFFIXES:
        for p in sorted(Path(directory).glob(f"iter_*{suffix}*")):
            if not p.is_dir():
                continue
            stem = p.name[len("iter_"):]
            if p.name.endswith(suffix) and stem[:9].isdigit():
                yield int(stem[:9]), p
            elif p.name.endswith(suffix + ".tmp"):
                yield None, p
