"""The task plug-in interface: everything task-specific, nothing of the engine.

The engine (:mod:`toolkit.engine`) owns devices, precision, distribution, the optimizer, EMA,
checkpoints and exports, evaluation schedules, logging and data streaming. A task owns:

* ``Config``: a dataclass for its ``task:`` config section (with a ``name`` field and optionally
  ``validate()`` raising ``ValueError`` naming the ``task.*`` key);
* :meth:`build_model`: the ``nn.Module`` to train (a staged task may load upstream runs with
  :func:`toolkit.engine.checkpoint.load_trained_model`);
* :meth:`decode_train` / :meth:`decode_eval`: one WebDataset sample (dict of raw bytes by extension)
  -> dict of numpy arrays / numbers, collated into batches by the engine; ``shard_keys`` names the
  members they read;
* :meth:`losses`: a batch -> :class:`StepOutput`: the loss terms (summed into the back-propagated
  loss, each logged as ``train/<term>``, the sum as ``train/loss``) and, separately, values that are
  only logged (a temperature, an accuracy) as ``train/<key>``;
* :meth:`evaluate_batch` -> :class:`EvalOutput`: per-batch *sums* (added over batches and ranks) and
  per-sample *features* (gathered over ranks for whole-set metrics such as retrieval);
  :meth:`metrics` turns both into the validation values;
* :meth:`visuals`: images of one batch for TensorBoard; :meth:`eval_images`: images of a whole
  evaluation (a confusion matrix);
* :meth:`exports`: modules to TorchScript at every checkpoint, built from the one set of weights the
  engine chose (EMA or raw, per ``eval.ema``); :meth:`export_inputs`: example inputs for them;
* :meth:`info`: static figures logged once; :meth:`after_optimizer_step`: in-place, idempotent updates after each
  step, skipped steps included (clamping a logit scale); :meth:`title`: the run's name in reports;
* :meth:`example`: a tiny configuration and raw samples for the contract test
  (``tests/test_task_contract.py`` runs every registered task through every hook).

Contract for distributed training: :meth:`losses` must call ``model(...)`` (the wrapped module it is
given) exactly once per micro-step, so DDP sees one forward per backward. Evaluation hooks get the
unwrapped module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


@dataclass
class StepOutput:
    """What :meth:`Task.losses` returns.

    Attributes:
        losses: name -> scalar tensor; their sum is back-propagated (one term called ``loss`` is usual).
        logs: name -> scalar tensor, logged only (detached by the engine, never back-propagated).
    """

    losses: dict[str, torch.Tensor]
    logs: dict[str, torch.Tensor] = field(default_factory=dict)

    def total(self) -> torch.Tensor:
        """The loss to back-propagate: the sum of the terms (the term itself when there is one)."""
        terms = list(self.losses.values())
        if not terms:
            raise ValueError("a task's losses() returned no loss term")
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total


@dataclass
class EvalOutput:
    """What :meth:`Task.evaluate_batch` returns for one batch.

    Attributes:
        sums: name -> scalar tensor (float64 advised), added over batches and ranks.
        features: name -> (B, ...) tensor, one row per sample, concatenated over the whole evaluation
            and gathered over ranks (rows of different keys stay aligned).
    """

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class Task:
    """Base class for tasks. Subclasses set ``name`` and ``Config`` and override the hooks."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    #: sample members (extensions inside the tar) the decode functions read; None = all of them.
    #: The others are skipped while streaming, so the shuffle buffer holds only what is used.
    shard_keys: ClassVar[tuple[str, ...] | None] = None
    #: the metric columns of ``python -m toolkit.report``: (header, key in ``summary.json``'s last evaluation,
    #: format spec). Default: seed 003's table (validation loss and accuracy).
    report_columns: ClassVar[tuple[tuple[str, str, str], ...]] = (("Val loss", "val/loss", ".5f"),
                                                                   ("Accuracy (%)", "val/accuracy", ".2f"))

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # --- model --------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The model's repeated building blocks (submodules of ``model``, e.g. transformer or residual
        blocks), for ``train.compile=blocks`` (each compiled on its own, regional compilation) and
        ``train.activation_checkpointing=blocks`` (each block's activations recomputed in backward).
        Each must be called as ``block(...)`` (not ``block.forward(...)``) by its parent and return
        tensors. Default: none (the ``blocks`` modes then raise ConfigError)."""
        return []

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
    def losses(self, model: nn.Module, batch: dict) -> StepOutput:
        """Loss terms and logged values of one micro-batch."""
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called on the unwrapped model after every optimizer step, also after a step the engine skipped
        (non-finite loss or gradient norm, decided on the device without a host read): so it must be
        idempotent, e.g. a clamp, not an increment."""

    # --- evaluation -------------------------------------------------------------------------------
    def evaluate_batch(self, model: nn.Module, batch: dict) -> EvalOutput:
        """Sums and per-sample features of one validation batch. Default: nothing."""
        return EvalOutput()

    def metrics(self, sums: dict[str, float], features: dict[str, torch.Tensor]) -> dict[str, float]:
        """Validation metrics from the sums over all batches and ranks and the gathered features."""
        return dict(sums)

    def visuals(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Images for TensorBoard: name -> float tensor (3, H, W) in [0, 1]."""
        return {}

    def eval_images(self, sums: dict[str, float], features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images of a whole evaluation (e.g. a confusion matrix), logged at each evaluation."""
        return {}

    # --- export ---------------------------------------------------------------------------------
    def exports(self, model: nn.Module) -> dict[str, nn.Module]:
        """Modules to script and save as ``iter_N_<suffix>.jit`` at every checkpoint (CPU, fp32).

        ``model`` holds the weights the engine exports (EMA or raw, per ``eval.ema``)."""
        return {}

    def export_inputs(self, batch: dict) -> dict[str, tuple[torch.Tensor, ...]]:
        """Example positional inputs of each export, taken from a decoded batch (contract test)."""
        return {}

    def info(self, model: nn.Module) -> dict[str, float]:
        """Static figures logged once at the start (scalars)."""
        return {}

    @classmethod
    def title(cls, task_cfg: dict) -> str:
        """How reports name a run of this task, from its ``task`` config section (a plain dict)."""
        return str(task_cfg.get("name", cls.name))

    # --- contract test ----------------------------------------------------------------------------
    @classmethod
    def example(cls, workdir: Path, rng: np.random.Generator) -> tuple[dict, list[dict]]:
        """A tiny configuration and raw samples that exercise every hook in seconds on a CPU.

        Returns:
            (``task.*`` overrides as a dict, list of raw WebDataset samples: extension -> bytes).
            A staged task may write the upstream runs it needs into ``workdir``.
        """
        raise NotImplementedError(f"task {cls.name!r} has no example() for the contract test")
