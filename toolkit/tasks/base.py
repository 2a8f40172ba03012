"""The task plug-in interface: everything task-specific, nothing of the engine.

The engine (:mod:`toolkit.engine.trainer`) owns devices, precision, distribution, the optimizer, EMA,
checkpoints, logging and data streaming. A task owns:

* ``Config``: a dataclass for its ``task:`` config section (with a ``name`` field);
* :meth:`build_model`: the ``nn.Module`` to train;
* :meth:`decode_train` / :meth:`decode_eval`: one WebDataset sample (dict of raw bytes by extension)
  -> dict of numpy arrays / numbers, collated into batches by the engine; ``shard_keys`` names the
  members they read;
* :meth:`losses`: a batch -> dict of scalars: the total loss under ``"loss"`` (back-propagated), other
  entries (loss terms, a temperature, ...) are logged as ``train/<key>``;
* :meth:`metric_sums` / :meth:`metrics`: validation as sums (the engine adds them over batches and
  ranks) then final values;
* :meth:`visuals`: images of one batch for TensorBoard; :meth:`eval_images`: images of the validation
  sums (a confusion matrix); :meth:`exports`: modules to TorchScript at every checkpoint;
* :meth:`info`: static figures logged once (e.g. compression ratio);
* :meth:`after_optimizer_step`: in-place updates after each step (e.g. clamping a logit scale).

Contract for distributed training: :meth:`losses` must call ``model(...)`` (the wrapped module it is
given) exactly once per micro-step, so DDP sees one forward per backward.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


class Task:
    """Base class for tasks. Subclasses set ``name`` and ``Config`` and override the hooks."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    #: sample members (extensions inside the tar) the decode functions read; None = all of them.
    #: The others are skipped while streaming, so the shuffle buffer holds only what is used.
    shard_keys: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # --- model --------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    # --- data ---------------------------------------------------------------------------------
    def decode_train(self, sample: dict, rng: np.random.Generator) -> dict:
        """Raw WebDataset sample -> training example (augmentations draw from ``rng``).

        Raises:
            Exception: on corrupt data; the engine skips and counts the sample.
        """
        raise NotImplementedError

    def decode_eval(self, sample: dict, rng: np.random.Generator) -> dict:
        """Raw sample -> evaluation example (no augmentation). Defaults to :meth:`decode_train`."""
        return self.decode_train(sample, rng)

    # --- training -------------------------------------------------------------------------------
    def losses(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Scalar losses; ``"loss"`` is the one that is back-propagated."""
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called on the unwrapped model after every optimizer step."""

    # --- evaluation -------------------------------------------------------------------------------
    def metric_sums(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Per-batch sums (float64 scalars) that :meth:`metrics` turns into values. Default: none."""
        return {}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Final validation metrics from the sums over all batches and ranks."""
        return dict(sums)

    def visuals(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Images for TensorBoard: name -> float tensor (3, H, W) in [0, 1]."""
        return {}

    def eval_images(self, sums: dict[str, float]) -> dict[str, torch.Tensor]:
        """Images from the validation sums of the whole set (e.g. a confusion matrix), logged at each evaluation."""
        return {}

    # --- export ---------------------------------------------------------------------------------
    def exports(self, model: nn.Module, ema_model: nn.Module | None) -> dict[str, nn.Module]:
        """Modules to script and save as ``iter_N_<suffix>.jit`` at every checkpoint (CPU, fp32)."""
        return {}

    def info(self, model: nn.Module) -> dict[str, float]:
        """Static figures logged once at the start (scalars)."""
        return {}
