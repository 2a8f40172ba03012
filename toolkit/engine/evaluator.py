"""Validation and pictures: each decides its own schedule.

:class:`Evaluator` runs the task over ``data.val`` (split across ranks, each sample once) in two modes
at once, as the task's :class:`~toolkit.tasks.base.EvalOutput` asks:

* **sums**: per-batch scalars added over batches and then over ranks (an all-reduce in float64);
  pixel errors, correct counts, confusion-matrix cells;
* **gathered features**: per-sample rows concatenated over batches and then gathered from every rank
  (``all_gather_object`` on CPU tensors), so metrics see the whole validation set at once, as
  open_clip's ``evaluate`` scores retrieval over all image/text pairs, not within a batch.

:class:`Visualizer` draws the task's visuals of one fixed validation batch every ``log.image_every``
steps on the main process.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.distributed as dist

from toolkit.data.pipeline import NoSamplesError, eval_loader
from toolkit.engine.device import move_batch


SAMPLES = "__samples__"  #: the count of validation samples, carried with the sums


def _gather_features(features: dict[str, list[torch.Tensor]], world_size: int) -> dict[str, torch.Tensor]:
    """Concatenate this rank's feature rows, then every rank's, in rank order (CPU tensors)."""
    local = {k: torch.cat(v) for k, v in features.items() if v}
    if world_size > 1:
        gathered: list[dict] = [{} for _ in range(world_size)]
        dist.all_gather_object(gathered, local)
        keys = sorted(set().union(*gathered))
        return {k: torch.cat([g[k] for g in gathered if k in g]) for k in keys}
    return local


def _reduce_sums(sums: dict[str, float], accelerator) -> dict[str, float]:
    """Add the sums of every rank (float64; keys missing on a rank count as 0)."""
    if accelerator is None or accelerator.num_processes == 1:
        return dict(sums)
    from accelerate.utils import gather_object

    keys = sorted(set().union(*gather_object([sorted(sums)])))
    total = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(total, reduction="sum").tolist()))


class Evaluator:
    """Validation of a model (and its EMA) over ``data.val``.

    Args:
        cfg: the run config (``data.val``, ``data.val_batch_size``/``batch_size``, ``eval.*``, ``run.seed``).
        task: the task (decode, ``evaluate_batch``, ``metrics``, ``eval_images``).
        accelerator: the run's Accelerator (device, rank, world size, reductions); None = this process
            alone on ``device`` (the command-line evaluation).

    Attributes:
        last: the values of the latest :meth:`run` (``val/*`` and ``val_ema/*``).
    """

    def __init__(self, cfg, task, accelerator=None, device: torch.device | None = None):
        self.shards = cfg.data.val
        self.batch_size = cfg.data.val_batch_size or cfg.data.batch_size
        self.every, self.max_batches, self.with_ema = cfg.eval.every, cfg.eval.max_batches, cfg.eval.ema
        self.max_steps, self.seed = cfg.train.max_steps, cfg.run.seed
        self.task, self.accelerator = task, accelerator
        self.device = accelerator.device if accelerator is not None else (device or torch.device("cpu"))
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world_size = accelerator.num_processes if accelerator is not None else 1
        self.is_main = self.rank == 0
        self.last: dict[str, float] = {}

    def due(self, step: int) -> bool:
        """At every ``eval.every`` steps and at the end, if there is a validation set."""
        return bool(self.shards) and ((self.every and step % self.every == 0) or step == self.max_steps)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> tuple[dict[str, float], dict[str, float], dict[str, torch.Tensor]]:
        """(metrics, sums, gathered features) of ``model`` (unwrapped: no collective runs inside its forward).

        Raises:
            ShardListError: if ``data.val`` matches no shard.
            NoSamplesError: on every rank, if the pass read no valid sample on any rank (a score of
                nothing is an error, not 0).
        """
        loader = eval_loader(self.shards, self.task.decode_eval, self.batch_size, rank=self.rank,
                             world_size=self.world_size, num_workers=0, seed=self.seed, keys=self.task.shard_keys)
        was_training = model.training
        model.eval()
        sums: dict[str, float] = defaultdict(float)
        sums[SAMPLES] = 0.0  # reduced with the task's sums: no extra collective
        features: dict[str, list[torch.Tensor]] = defaultdict(list)
        for i, batch in enumerate(loader):
            if self.max_batches and i >= self.max_batches:
                break
            sums[SAMPLES] += len(next(iter(batch.values())))
            out = self.task.evaluate_batch(model, move_batch(batch, self.device))
            for key, value in out.sums.items():
                sums[key] += float(value)
            for key, value in out.features.items():
                features[key].append(value.detach().float().cpu())
        model.train(was_training)
        sums = _reduce_sums(sums, self.accelerator)
        if sums.pop(SAMPLES) == 0:
            raise NoSamplesError(f"validation read no valid sample from data.val '{self.shards}' "
                                 f"({loader.skipped} skipped on rank {self.rank}): check the shards")
        gathered = _gather_features(features, self.world_size)
        return self.task.metrics(sums, gathered), sums, gathered

    def run(self, step: int, model: torch.nn.Module, ema_model: torch.nn.Module | None, logger) -> dict[str, float]:
        """Evaluate the model (and the EMA if ``eval.ema``), log scalars, images and a console line."""
        metrics, sums, features = self.evaluate(model)
        results = {f"val/{k}": v for k, v in metrics.items()}
        if self.is_main:
            logger.images(step, {f"images/val_{k}": v for k, v in self.task.eval_images(sums, features).items()})
        if ema_model is not None and self.with_ema:
            results.update({f"val_ema/{k}": v for k, v in self.evaluate(ema_model)[0].items()})
        logger.scalars(step, results)
        logger.print(f"eval @ {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        bad = [k for k, v in results.items() if not math.isfinite(v)]
        if bad:
            logger.print(f"warning: non-finite validation metrics at step {step}: {', '.join(bad)}")
        self.last = results
        return results


class Visualizer:
    """The task's visuals of one fixed validation batch (else the latest training batch) every ``every`` steps.

    Args:
        every: ``log.image_every`` (0 = never). shards, batch_size, seed: where the fixed batch comes from.
        task: the task (``visuals``, decode); is_main: draw only on the main process.
    """

    def __init__(self, every: int, shards: str, batch_size: int, seed: int, task, is_main: bool):
        self.every, self.shards, self.batch_size, self.seed = every, shards, batch_size, seed
        self.task, self.is_main = task, is_main
        self.batch: dict | None = None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0 and self.is_main

    def fixed_batch(self) -> dict | None:
        if self.batch is None and self.shards:
            loader = eval_loader(self.shards, self.task.decode_eval, self.batch_size, num_workers=0, seed=self.seed,
                                 keys=self.task.shard_keys)
            self.batch = next(iter(loader), None)
        return self.batch

    @torch.no_grad()
    def log(self, step: int, model: torch.nn.Module, device: torch.device, logger, fallback: dict | None = None) -> None:
        source = self.fixed_batch() or fallback
        if source is None:
            return
        was_training = model.training
        model.eval()
        images = self.task.visuals(model, move_batch(source, device))
        model.train(was_training)
        logger.images(step, {f"images/{k}": v for k, v in images.items()})
