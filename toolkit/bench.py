"""Benchmarks that print figures (ratios within one run; never timed tests).

``python -m toolkit.bench [loader|engine|all] --config CONFIG.yaml [key=value ...] [--json]``

* ``loader``: samples/s of the engine's WebDataset training loader (resampled shards, shuffle
  buffer, the task's decode, batching, ``data.num_workers`` workers) against a bare single-process
  loop that reads the same tar files with ``tarfile`` and decodes the same arrays the same way.
  Ratio > 1 means the pipeline is faster than the bare loop.
* ``engine``: seconds per optimizer step of the real :class:`~toolkit.engine.trainer.Trainer` loop
  (data from shards, EMA, logging, stop-trigger checks; checkpoints and evaluation off) against a bare
  PyTorch loop (forward, backward, clip, AdamW step) with the same model, batch size and precision on
  batches already in memory. Ratio = engine / bare (1.0 = no overhead).

``--json`` prints the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
import torch


def bench_loader(cfg, samples: int = 512) -> dict:
    """Samples/s of the training loader vs a bare tar loop over the same shards."""
    from toolkit.data.pipeline import expand_shards, train_loader
    from toolkit.tasks import build_task

    task = build_task(cfg.task)
    urls = expand_shards(cfg.data.train)
    bs = cfg.data.batch_size
    n_batches = max(2, samples // bs)

    loader = train_loader(cfg.data.train, task.decode_train, bs, seed=cfg.run.seed,
                          num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer,
                          keys=task.shard_keys)
    it = iter(loader)
    next(it)  # start the workers and fill the pipeline once
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    pipeline_s = time.perf_counter() - t0
    del it, loader

    rng = np.random.default_rng(0)
    done = 0
    t0 = time.perf_counter()
    while done < n_batches * bs:
        for url in urls:
            with tarfile.open(url) as tar:
                members: dict[str, dict] = {}
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
                for sample in members.values():
                    task.decode_train(sample, rng)
                    done += 1
                    if done >= n_batches * bs:
                        break
            if done >= n_batches * bs:
                break
    bare_s = time.perf_counter() - t0
    pipeline_rate = n_batches * bs / pipeline_s
    bare_rate = done / bare_s
    return {"loader_samples_per_s": round(pipeline_rate, 1), "bare_tar_loop_samples_per_s": round(bare_rate, 1),
            "loader_vs_bare_ratio": round(pipeline_rate / bare_rate, 3), "loader_workers": cfg.data.num_workers,
            "loader_samples": n_batches * bs, "shards": len(urls)}


def bench_engine(cfg, steps: int = 30, warmup: int = 5) -> dict:
    """Seconds per step of the Trainer loop vs a bare PyTorch loop (same model, batch, precision)."""
    from toolkit.config import to_dict
    from toolkit.data.pipeline import train_loader
    from toolkit.engine.device import check_precision, select_device
    from toolkit.engine.optim import build_optimizer
    from toolkit.engine.trainer import Trainer
    from toolkit.tasks import build_task

    with tempfile.TemporaryDirectory() as tmp:
        from toolkit.config import from_dict

        raw = to_dict(cfg)
        raw["run"]["dir"] = tmp
        raw["train"]["max_steps"] = warmup + steps
        raw["checkpoint"]["every"] = 10 ** 9
        raw["checkpoint"]["export_jit"] = False
        raw["eval"]["every"] = 0
        raw["data"]["val"] = ""
        raw["log"]["image_every"] = 0
        raw["log"]["progress"] = False
        raw["log"]["every"] = warmup  # one window for warm-up, the rest for the measurement
        ecfg = from_dict(raw, source="bench")
        trainer = Trainer(ecfg)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            trainer.fit()
        rows = [json.loads(line) for line in open(f"{tmp}/metrics.jsonl") if '"perf/step_time_s"' in line]
        engine_step = float(np.mean([r["perf/step_time_s"] for r in rows[1:]])) if len(rows) > 1 else rows[0]["perf/step_time_s"]

    # bare loop: the same model and batches, already in memory
    device = torch.device(select_device(cfg.train.device))
    mixed = check_precision(device.type, cfg.train.precision)
    task = build_task(cfg.task)
    torch.manual_seed(cfg.run.seed)
    model = task.build_model().to(device)
    opt = build_optimizer(model, cfg.optim)
    loader = iter(train_loader(cfg.data.train, task.decode_train, cfg.data.batch_size, seed=cfg.run.seed,
                               num_workers=0, shuffle_buffer=cfg.data.shuffle_buffer))
    batches = []
    for _ in range(min(8, warmup + steps)):
        b = next(loader)
        batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()})
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type) if mixed == "fp16" else None
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with autocast():
            loss = task.losses(model, batches[i % len(batches)]).total()
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
        (scaler.step(opt), scaler.update()) if scaler else opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    bare_step = float(np.mean(times[warmup:]))
    return {"engine_step_s": round(engine_step, 4), "bare_step_s": round(bare_step, 4),
            "engine_vs_bare_ratio": round(engine_step / bare_step, 3), "steps": steps, "device": str(device),
            "precision": cfg.train.precision, "batch_size": cfg.data.batch_size}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolkit.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="?", choices=["loader", "engine", "all"], default="all")
    p.add_argument("--config", "-c", required=True, help="run config whose data/model/precision to benchmark")
    p.add_argument("--steps", type=int, default=30, help="measured optimizer steps (engine)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps not measured (engine)")
    p.add_argument("--samples", type=int, default=512, help="samples to read (loader)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_intermixed_args(argv)
    from toolkit.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    result: dict = {"config": args.config, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.which in ("loader", "all"):
        result.update(bench_loader(cfg, args.samples))
    if args.which in ("engine", "all"):
        result.update(bench_engine(cfg, args.steps, args.warmup))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
