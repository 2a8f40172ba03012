"""Generic evaluation of a trained run from the command line (``python -m toolkit.evaluate --task NAME``).

For families without their own ``evaluate.py``: the model of ``--run`` (newest checkpoint) or
``--checkpoint`` is rebuilt from its stored config (:func:`~toolkit.engine.checkpoint.load_trained_model`),
and the task's validation metrics are computed over ``--shards`` by the training
:class:`~toolkit.engine.evaluator.Evaluator` in one process: the same sums and the same whole-set
metrics from gathered features as the run logged under ``val/`` (or ``val_ema/`` with EMA weights).

``--draws N`` repeats the evaluation with the decode's random parts (a task's point subsampling, say) drawn
from the seeds ``run.seed + 0 .. N - 1`` and reports each metric's mean and standard deviation over the
draws; draw 0 is the one the run logged. Use it before ranking runs whose difference is a few samples.
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
    p.add_argument("--draws", type=int, default=1,
                   help="evaluate N times with the decode's random choices seeded run.seed + 0..N-1 and print "
                        "each metric's mean and std (draw 0 = what the run logged; default 1)")


def run(args) -> dict:
    """Evaluate and print one line per metric; returns the JSON dict.

    Raises:
        ValueError: without a model source, when the run's task is not ``--task``, or ``--draws`` < 1.
    """
    import numpy as np

    from toolkit.engine.checkpoint import load_trained_model
    from toolkit.engine.evaluator import Evaluator

    if bool(args.run) == bool(args.checkpoint):
        raise ValueError("give exactly one of --run or --checkpoint")
    draws = getattr(args, "draws", 1)  # family parsers (bev) that extend the generic one may lack --draws
    if draws < 1:
        raise ValueError(f"--draws must be >= 1, got {draws}")
    trained = load_trained_model(args.run or args.checkpoint, args.weights)
    cfg = trained.config
    if cfg.task.name != args.task:
        raise ValueError(f"{trained.path} is a {cfg.task.name!r} run, not {args.task!r}")
    cfg.data.val = args.shards
    cfg.data.val_batch_size = args.batch_size or cfg.data.val_batch_size
    cfg.eval.max_batches = args.max_batches
    device = torch.device(args.device)
    model, seed = trained.model.to(device), cfg.run.seed
    runs = []
    for d in range(draws):
        cfg.run.seed = seed + d
        runs.append(Evaluator(cfg, trained.task, device=device).evaluate(model)[:2])
    metrics, sums = runs[0]
    std = {}
    if draws > 1:
        every = {k: np.array([m[k] for m, _ in runs], np.float64) for k in metrics}
        metrics = {k: float(v.mean()) for k, v in every.items()}
        std = {k: float(v.std()) for k, v in every.items()}
    print(f"{trained.path} ({trained.weights} weights) on {args.shards}"
          + (f", mean +- std over {draws} draws (seeds {seed}..{seed + draws - 1})" if draws > 1 else "") + ":")
    for key, value in metrics.items():
        print(f"  {key:24s} {value:.6g}" + (f" +- {std[key]:.3g}" if std else ""))
    out = {"metrics": metrics, "sums": sums, "checkpoint": str(trained.path), "weights": trained.weights,
           "shards": args.shards}
    if draws > 1:
        out.update(metrics_std=std, draws=[m for m, _ in runs], seeds=list(range(seed, seed + draws)))
    return out
