"""Training strategies behind one interface: ``train.strategy: ddp`` (Accelerate's DDP, the default),
``deepspeed`` (ZeRO 1/2/3, :mod:`toolkit.engine.zero`) or ``fsdp`` (FSDP2, :mod:`toolkit.engine.fsdp`).

The step loop (:mod:`toolkit.engine.step`), the trainer and the checkpointer use only the verbs of
:class:`Strategy`, and each verb means the same under every strategy (torchtitan's way: parallelism is
applied to the model by the strategy; the loop does not change):

======================  ==============================================================================
``model``               what the task's ``losses`` calls as ``model(batch...)``
``backward(loss, last)`` accumulate the gradients of ``loss``; ``last=False`` on the micro-steps before
                        the last one of an optimizer step (no gradient communication where the strategy
                        can defer it)
``step(max_norm, skip)`` one optimizer update: finish the gradient reduction, measure the global
                        gradient norm, clip to ``max_norm`` and update, unless that norm is non-finite or
                        ``skip`` is set; gradients cleared. Returns :class:`Update` (the norm before
                        clipping, and whether the update was skipped)
``update_ema(ema, good)`` one EMA update towards the current full weights (weight 0 where ``good`` is False)
``module``              the plain module that trains (its parameters may be shards): the task's
                        ``after_optimizer_step`` and the straggler timer use it
``full_weights()``      the plain model with the current full weights (gathered over the ranks where
                        they are sharded: every rank must call it); ``plain_model`` without gathering
``before_save(step)``   every rank, before ``iter_N.pt`` is written: sharded state to disk, full weights
                        gathered
``model_part``,         the checkpoint's ``model`` (full weights) and ``optimizer`` entries (their
``optimizer_part``      ``state_dict`` / ``load_state_dict``)
======================  ==============================================================================

``device_skip``: True when :meth:`Strategy.step` takes ``skip`` as a device tensor and decides on the
device, without a host read (DDP with the fused AdamW and no fp16 loss scaler: the fused kernel takes
``found_inf``); else ``skip`` is a host bool and the skip is decided on the host (fp16's ``GradScaler``,
FSDP2's foreach AdamW, DeepSpeed). The gradient norm is global (the same on every rank after the
reduction), so every rank makes the same decision without another collective.

Limits, stated where they apply: DeepSpeed decides an update inside its engine (reduce, clip, AdamW, or
skip on a non-finite gradient norm); a ``skip`` requested for a non-finite *loss* is honoured through the
gradients, which a non-finite loss makes non-finite (the step is then skipped and reported so).

Raises (from :func:`build_strategy`):
    ConfigError: ``train.strategy=deepspeed`` without the ``deepspeed`` package, or a bad ``deepspeed.config``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from toolkit.config import ConfigError
from toolkit.files import file_sha256

SHARDED_SUFFIXES = ("_zero", "_fsdp")  #: every strategy's sharded-state folder suffix (``iter_N_zero/``, ``iter_N_fsdp/``)


@dataclass
class Update:
    """What :meth:`Strategy.step` did. ``grad_norm``: the global gradient norm before clipping (0-d float32
    on the device; ``inf`` or NaN when non-finite). ``skipped``: a device bool when the strategy decided on
    the device (:attr:`Strategy.device_skip`), else a host bool."""

    grad_norm: torch.Tensor
    skipped: torch.Tensor | bool


class Strategy:
    """The interface every training strategy implements (module docstring). Subclasses set ``name``,
    ``model``, ``optimizer``, ``module``, ``model_part``, ``optimizer_part`` and ``device_skip``."""

    name = "?"
    device_skip = False

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.device = accelerator.device
        self.world_size = accelerator.num_processes
        self.is_main = accelerator.is_main_process

    def backward(self, loss: torch.Tensor, last: bool = True) -> None:
        raise NotImplementedError

    def step(self, max_norm: float, skip: torch.Tensor | bool) -> Update:
        raise NotImplementedError

    def update_ema(self, ema, good: torch.Tensor | None = None) -> None:
        """One EMA update towards the current full weights (every rank calls it)."""
        ema.update(self.full_weights(), good=good)

    @property
    def plain_model(self) -> nn.Module:
        """The plain model holding the full weights as gathered last (no collective)."""
        raise NotImplementedError

    def full_weights(self) -> nn.Module:
        """The plain model holding the current full weights (a collective where they are sharded)."""
        return self.plain_model

    def before_save(self, step: int) -> None:
        """Every rank, before the checkpointer writes ``iter_N.pt``: nothing for an unsharded strategy."""


class TorchOptimizerStep:
    """:meth:`Strategy.step` for strategies that run a ``torch.optim`` optimizer themselves (DDP, FSDP2):
    subclasses provide ``_clip(max_norm) -> norm`` and set ``optimizer`` (what ``step()`` is called on),
    ``inner`` (the ``torch.optim`` optimizer under any wrapper) and ``scaler`` (fp16's ``GradScaler`` or None).

    On the device path the skip flag is handed to the fused AdamW as ``found_inf``: the protocol of
    optimizers with ``_step_supports_amp_scaling`` (``torch.amp.GradScaler`` sets ``optimizer.found_inf``
    the same way), which leaves weights, moments and step count as they are when it is set.
    """

    def step(self, max_norm: float, skip: torch.Tensor | bool) -> Update:
        norm = self._clip(max_norm)
        if self.device_skip:
            bad = torch.as_tensor(skip, device=norm.device).bool() | ~torch.isfinite(norm)
            self.inner.found_inf = bad.to(torch.float32)
            try:
                self.optimizer.step()
            finally:
                del self.inner.found_inf
            self.optimizer.zero_grad(set_to_none=True)
            return Update(norm, bad)
        finite = bool(torch.isfinite(norm))  # the host path: one read
        if skip or not finite:
            if self.scaler is not None:  # fp16: the GradScaler skips overflowing steps itself and lowers its scale
                if not finite:
                    self.optimizer.step()
                else:  # a non-finite loss with finite gradients: back off too, and reset the scaler's step state
                    self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
            self.optimizer.zero_grad(set_to_none=True)
            return Update(norm, True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return Update(norm, bool(self.accelerator.optimizer_step_was_skipped))


class DDPStrategy(TorchOptimizerStep, Strategy):
    """``train.strategy=ddp``: the model and optimizer prepared by Accelerate (DDP with several processes;
    fp16's ``GradScaler`` and bf16 autocast from its ``mixed_precision``).

    Args:
        accelerator: the run's ``Accelerator``. model: the plain model. optimizer: its ``torch.optim`` optimizer.
    """

    name = "ddp"

    def __init__(self, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer):
        super().__init__(accelerator)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.inner = getattr(self.optimizer, "optimizer", self.optimizer)
        self.scaler = accelerator.scaler
        #: fused AdamW and no loss scaler: the skip is decided on the device
        self.device_skip = self.scaler is None and bool(getattr(self.inner, "_step_supports_amp_scaling", False))
        self.module = accelerator.unwrap_model(self.model)
        self.model_part, self.optimizer_part = self.module, self.optimizer

    def backward(self, loss: torch.Tensor, last: bool = True) -> None:
        ctx = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
        with ctx:
            self.accelerator.backward(loss)

    def _clip(self, max_norm: float) -> torch.Tensor:
        """Unscale (fp16), measure the global norm of the (all-reduced) gradients, clip; 0-d float32."""
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        return torch.as_tensor(norm, device=self.device).detach().to(torch.float32)

    def update_ema(self, ema, good: torch.Tensor | None = None) -> None:
        ema.update(self.module, good=good)

    @property
    def plain_model(self) -> nn.Module:
        return self.module


class FullWeights:
    """The checkpoint's ``model`` part of a sharding strategy: the full weights held by its ``template``
    (a plain copy of the model, gathered by ``full_weights()``; the trainer gathers before every save), a
    plain state dict loadable with ``weights_only=True``. ``load_state_dict`` loads them there (the
    shards themselves come back through the strategy's ``optimizer_part``)."""

    def __init__(self, strategy):
        self.strategy = strategy

    def state_dict(self) -> dict:
        return self.strategy.template.state_dict()

    def load_state_dict(self, state: dict):
        return self.strategy.template.load_state_dict(state)


class ShardedStateRef:
    """The checkpoint's ``optimizer`` part of a sharding strategy: ``state_dict`` is the reference its last
    ``before_save`` recorded in ``strategy.saved`` (strategy, world size, folder, each file's SHA-256);
    subclasses load the shards back in ``load_state_dict``."""

    def __init__(self, strategy):
        self.strategy = strategy

    def state_dict(self) -> dict:
        return dict(self.strategy.saved)

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


def write_sharded_state(strategy: Strategy, name: str, write: Callable[[Path], None]) -> dict[str, str]:
    """Every rank: ``write(folder)`` its shards into ``checkpoints/NAME.tmp/``, renamed to ``NAME/`` once
    every rank has written (an interrupted save leaves only the ``.tmp``). Returns ``{file: SHA-256}`` of
    the folder on the main rank (``{}`` elsewhere), for ``iter_N.pt`` to reference."""
    acc, directory = strategy.accelerator, strategy.directory
    final, tmp = directory / name, directory / (name + ".tmp")
    if strategy.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    write(tmp)
    acc.wait_for_everyone()
    files: dict[str, str] = {}
    if strategy.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        files = {str(p.relative_to(final)): file_sha256(p) for p in sorted(final.rglob("*")) if p.is_file()}
    acc.wait_for_everyone()
    return files


def check_sharded_state(state: dict, strategy: Strategy, what: str) -> Path:
    """The folder of a checkpoint's sharded state, after checking it was written by this strategy and
    every file it lists is there with its SHA-256.

    Raises:
        ValueError: another strategy, a missing or a damaged file (the checkpointer reports it as a
            checkpoint that does not fit, naming the file).
    """
    if state.get("strategy") != strategy.name:
        raise ValueError(f"its optimizer state was written by train.strategy={state.get('strategy', 'ddp')}; "
                         f"this run uses train.strategy={strategy.name} (resume with the strategy that wrote it)")
    folder = strategy.directory / state["dir"]
    for name, digest in state.get("files", {}).items():
        f = folder / name
        if not f.is_file():
            raise ValueError(f"its {what} state file '{f}' is missing")
        if file_sha256(f) != digest:
            raise ValueError(f"its {what} state file '{f}' is damaged (SHA-256 mismatch)")
    return folder


def ensure_dist_env() -> None:
    """A single process (no torchrun) still needs a process group for DeepSpeed and FSDP2: a world of one
    on a free loopback port."""
    if "WORLD_SIZE" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port)})


def build_strategy(cfg, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
                   directory: Path, blocks: list[nn.Module] | None = None) -> Strategy:
    """The run's :class:`Strategy`: :class:`DDPStrategy`, :class:`toolkit.engine.zero.DeepSpeedStrategy`
    or :class:`toolkit.engine.fsdp.FSDPStrategy` (``blocks``: the task's declared blocks, each sharded on
    its own). ``directory``: the run's ``checkpoints/`` (where sharded state is written).

    Raises:
        ConfigError: ``deepspeed`` not installed, or a bad ``deepspeed.config`` file.
    """
    if cfg.train.strategy == "ddp":
        return DDPStrategy(accelerator, model, optimizer)
    if cfg.train.strategy == "fsdp":
        from toolkit.engine.fsdp import FSDPStrategy

        return FSDPStrategy(cfg, accelerator, model, optimizer, directory, list(blocks or []))
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise ConfigError("train.strategy=deepspeed needs the deepspeed package: pip install -e '.[deepspeed]' "
                          f"({type(exc).__name__}: {exc})") from None
    from toolkit.engine.zero import DeepSpeedStrategy

    return DeepSpeedStrategy(cfg, accelerator, model, optimizer, directory)


def sharded_dir_names(step: int) -> list[str]:
    """Every strategy's sharded-state folder name of step ``step`` (``iter_N_zero``, ``iter_N_fsdp``)."""
    return [f"iter_{step:09d}{suffix}" for suffix in SHARDED_SUFFIXES]


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
