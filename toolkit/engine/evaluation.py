"""Generic evaluation of a trained run from the command line (``python -m toolkit.evaluate --task NAME``).

For families without their own ``evaluate.py``: the model of ``--run`` (newest checkpoint) or
``--checkpoint`` is rebuilt from its stored config (:func:`~toolkit.engine.checkpoint.load_trained_model`),
and the task's validation metrics are computed over ``--shards`` by the training
:class:`~toolkit.engine.evaluator.Evaluator` in one process: the same sums and the same whole-set
metrics from gathered features as the run logged under ``val/`` (or ``val_ema/`` with EMA weights).
"""

from __future__ import annotations

import argparse

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    from toolkit.cli import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--shards", required=True, help="shards to evaluate on (brace pattern or glob)")
    p.add_argument("--batch-size", type=int, default=0, help="evaluation batch size (default: the run's)")
    p.add_argument("--max-batches", type=int, default=0, help="stop after this many batches (0 = all)")


def run(args) -> dict:
    """Evaluate and print one line per metric; returns the JSON dict.

    Raises:
        ValueError: without a model source, or when the run's task is not ``--task``.
    """
    from toolkit.engine.checkpoint import load_trained_model
    from toolkit.engine.evaluator import Evaluator

    if bool(args.run) == bool(args.checkpoint):
        raise ValueError("give exactly one of --run or --checkpoint")
    trained = load_trained_model(args.run or args.checkpoint, args.weights)
    cfg = trained.config
    if cfg.task.name != args.task:
        raise ValueError(f"{trained.path} is a {cfg.task.name!r} run, not {args.task!r}")
    cfg.data.val = args.shards
    cfg.data.val_batch_size = args.batch_size or cfg.data.val_batch_size
    cfg.eval.max_batches = args.max_batches
    device = torch.device(args.device)
    metrics, sums, _ = Evaluator(cfg, trained.task, device=device).evaluate(trained.model.to(device))
    print(f"{trained.path} ({trained.weights} weights) on {args.shards}:")
    for key, value in metrics.items():
        print(f"  {key:24s} {value:.6g}")
    return {"metrics": metrics, "sums": sums, "checkpoint": str(trained.path), "weights": trained.weights,
            "shards": args.shards}
