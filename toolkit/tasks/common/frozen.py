"""A frozen submodule: pretrained parts that a later stage uses but never trains."""

from __future__ import annotations

from torch import nn


class Frozen(nn.Module):
    """A submodule that never trains: parameters without gradients and always in eval mode.

    Gradients still flow *through* it (a frozen head after a trained projector must pass them back);
    a frozen part before every trained one builds no graph anyway, as nothing upstream needs gradients.
    Its state-dict keys get the prefix ``module.``.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "Frozen":  # stays in eval mode
        super().train(False)
        return self

    def forward(self, *args):
        return self.module(*args)
