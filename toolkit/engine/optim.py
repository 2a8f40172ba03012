"""AdamW and the learning-rate schedule (linear warmup, then cosine, linear or constant)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from toolkit.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW (fused) over the trainable parameters; weight decay only on tensors with >= 2 dims (weights of
    convs and linears, not biases, norms or scalars), as in nanoGPT and timm.

    Raises:
        ValueError: if the model has no trainable parameter.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step, and it takes a device-side ``found_inf`` flag, so the engine skips a
    # non-finite step without reading anything back to the host (toolkit.engine.step)
    fused = True if all(p.is_floating_point() for p in params) else None
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=fused)


class WarmupDecay:
    """LR multiplier: ``(step + 1) / warmup`` during warmup, then from 1 down to ``min_ratio`` by ``total``.

    A plain object (not a closure) so ``LambdaLR.state_dict()`` stores its settings.
    """

    def __init__(self, warmup: int, total: int, schedule: str, min_ratio: float):
        self.warmup, self.total, self.schedule, self.min_ratio = warmup, total, schedule, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.schedule == "linear":
            return 1.0 - (1.0 - self.min_ratio) * progress
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` (same ``state_dict``) that can also be moved back and re-evaluated: lr = base lr x
    multiplier(``last_epoch``), exactly what ``LambdaLR.step()`` sets.

    :meth:`rewind` takes back ``n`` steps (the step loop's skipped steps, found at a sync point after the
    schedule had already advanced, :mod:`toolkit.engine.step`); :meth:`refresh` re-evaluates the current
    lr after the base lrs or the multipliers' settings changed (a resume with other settings,
    :func:`reapply_settings`)."""

    def rewind(self, n: int) -> None:
        """Go back ``n`` optimizer steps (``n`` >= 0)."""
        if n:
            self.last_epoch -= n
            self.refresh()

    def refresh(self) -> None:
        """Set every group's lr to base lr x multiplier(``last_epoch``)."""
        lrs = [base * fn(self.last_epoch) for base, fn in zip(self.base_lrs, self.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> Schedule:
    """Per-optimizer-step schedule (call ``step()`` once per optimizer step)."""
    return Schedule(optimizer, WarmupDecay(cfg.warmup_steps, total_steps, cfg.schedule, cfg.min_lr_ratio))


#: optimizer-group settings that come from the config (a checkpoint's copies are replaced on resume)
GROUP_SETTINGS = ("initial_lr", "weight_decay", "betas", "eps")


def schedule_settings(optimizer: torch.optim.Optimizer, scheduler: Schedule) -> dict:
    """The config-given hyper-parameters of a freshly built optimizer and schedule: per-group
    ``initial_lr`` (the base lr), ``weight_decay``, ``betas``, ``eps``, and each lr multiplier's settings
    (warmup, total steps, schedule, min ratio). Take it before a resume; see :func:`reapply_settings`."""
    return {"groups": [{k: copy.copy(g[k]) for k in GROUP_SETTINGS if k in g} for g in optimizer.param_groups],
            "lambdas": [dict(vars(f)) for f in scheduler.lr_lambdas]}


def reapply_settings(optimizer: torch.optim.Optimizer, scheduler: Schedule,
                     settings: dict) -> list[str]:
    """Put the config's hyper-parameters back over the ones a checkpoint restored, so an override on
    resume (``optim.lr``, ``optim.weight_decay``, ``optim.warmup_steps``, ``train.max_steps``, ...) is
    applied, not silently undone; the current lr is recomputed for the resumed step. Nothing is
    touched when nothing differs (an exact resume stays bit-identical).

    Returns:
        ``name: old -> new`` for each setting that changed.
    """
    def plain(v):  # betas come back from a checkpoint as a list or a tuple
        return tuple(v) if isinstance(v, (list, tuple)) else v

    changes = []
    for i, (group, fresh) in enumerate(zip(optimizer.param_groups, settings["groups"])):
        for key, value in fresh.items():
            old = group.get(key)
            if plain(old) != plain(value):
                changes.append(f"group {i} {key}: {old} -> {value}")
                group[key] = value
    for fn, fresh in zip(scheduler.lr_lambdas, settings["lambdas"]):
        for key, value in fresh.items():
            if getattr(fn, key, None) != value:
                changes.append(f"schedule {key}: {getattr(fn, key, None)} -> {value}")
                setattr(fn, key, value)
    if changes:
        scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        scheduler.refresh()
    return changes
