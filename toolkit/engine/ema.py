"""Exponential moving average (EMA) of model weights.

After every optimizer step: ``ema = d * ema + (1 - d) * w`` for floating-point parameters and buffers
(integer buffers are copied), with ``d = min(decay, (1 + n) / (10 + n))`` when ``warmup`` is on (n =
number of updates so far), as in timm's ``ModelEmaV2``/TensorFlow's ``ExponentialMovingAverage``.
The EMA copy lives on the training device in the model's dtype, never gets gradients, and is not
wrapped by DDP.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """EMA of ``model``'s state.

    Args:
        model: the (unwrapped) module to track; it is deep-copied.
        decay: target decay in [0, 1).
        warmup: ramp the decay up over the first updates.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0

    def to(self, device: torch.device) -> "EMA":
        self.module.to(device)
        return self

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        src = model.state_dict()
        for key, value in self.module.state_dict().items():
            new = src[key].detach()
            if value.dtype.is_floating_point:
                value.lerp_(new.to(value.dtype), 1.0 - d)
            else:
                value.copy_(new)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
