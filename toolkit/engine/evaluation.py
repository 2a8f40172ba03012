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


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m toolkit.evaluate --sweep MANIFEST`` (see :func:`run_sweep`)."""
    from toolkit.cli import device_type, int_at_least

    p.add_argument("--sweep", required=True, help="a sweep's manifest.json (or its folder), from python -m launch --sweep")
    p.add_argument("--shards", help="shards to evaluate on (default: each run's data.val)")
    p.add_argument("--draws", type=int_at_least(1), default=1,
                   help="evaluations per run with the decode's random choices seeded run.seed + 0..N-1 (default 1)")
    p.add_argument("--batch-size", type=int_at_least(0), default=0, help="evaluation batch size (default: the run's)")
    p.add_argument("--max-batches", type=int_at_least(0), default=0, help="stop after this many batches (0 = all)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="checkpoint weights (default ema)")
    p.add_argument("--device", default="cpu", type=device_type, help="torch device (default cpu)")
    p.add_argument("--force", action="store_true", help="evaluate again even when a cached result exists")


def cache_name(shards: str | None, draws: int, weights: str, max_batches: int) -> str:
    """The file name of a run's cached result in ``RUN/eval/``: ``val_draws3_ema.json`` for the run's own
    ``data.val`` (``shards-<sha1 8>_...`` for other ``--shards``; ``_b<N>`` with ``--max-batches N``)."""
    import hashlib

    where = "val" if not shards else "shards-" + hashlib.sha1(shards.encode()).hexdigest()[:8]
    return f"{where}_draws{draws}_{weights}" + (f"_b{max_batches}" if max_batches else "") + ".json"


def _newest_checkpoint(run_dir) -> str | None:
    from pathlib import Path

    found = sorted((Path(run_dir) / "checkpoints").glob("iter_*.pt"))
    return str(found[-1]) if found else None


def run_sweep(args) -> int:
    """Evaluate every finished run of a sweep (:mod:`launch.sweep`) with :func:`run`; returns the exit code.

    Each result is cached as ``RUN/eval/<cache_name>.json`` (the JSON of :func:`run` plus the run's name, point
    and seed); a run whose cached result was computed on its newest checkpoint is not evaluated again (unless
    ``--force``), so an interrupted evaluation resumes where it stopped. Unfinished and failed runs are listed
    and skipped. Exit code 0, or 1 when a finished run could not be evaluated.

    Raises:
        ValueError: an unreadable manifest (naming it).
    """
    import json
    from pathlib import Path

    import yaml

    from launch.sweep import read_manifest
    from toolkit.cli import error_line, expected_errors
    from toolkit.files import write_text

    manifest = read_manifest(args.sweep)
    done = cached = failed = 0
    for entry in manifest["runs"]:
        name, run_dir = entry["name"], Path(entry["dir"])
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("status") != "finished":
            print(f"{name}: not finished ({entry.get('status', 'unknown')}), skipped", flush=True)
            continue
        out = run_dir / "eval" / cache_name(args.shards, args.draws, args.weights, args.max_batches)
        newest = _newest_checkpoint(run_dir)
        if out.exists() and not args.force:
            try:
                old = json.loads(out.read_text())
            except ValueError:
                old = {}
            if old.get("checkpoint") == newest:
                print(f"{name}: cached {out}", flush=True)
                cached += 1
                continue
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        ns = argparse.Namespace(task=cfg["task"]["name"], run=str(run_dir), checkpoint=None, weights=args.weights,
                                shards=args.shards or cfg["data"]["val"], batch_size=args.batch_size,
                                max_batches=args.max_batches, draws=args.draws, device=args.device)
        print(f"{name}:", flush=True)
        try:
            result = run(ns)
        except expected_errors() as exc:
            print(f"error: {name}: {error_line(exc)}", flush=True)
            failed += 1
            continue
        result.update(run=name, point=entry.get("point"), seed=entry.get("seed"), overrides=entry.get("overrides"))
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, json.dumps(result, indent=1) + "\n")
        done += 1
    print(f"sweep {manifest.get('sweep')}: {done} evaluated, {cached} cached, {failed} failed; "
          f"results in RUN/eval/{cache_name(args.shards, args.draws, args.weights, args.max_batches)}")
    return 1 if failed else 0
