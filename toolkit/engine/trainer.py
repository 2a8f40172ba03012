"""The training loop: one readable loop on Accelerate, for every task.

``Trainer(cfg).fit()`` runs the same way alone (``python -m toolkit.train``) and under
``torchrun --nproc_per_node=N`` (DDP; gloo on CPU, NCCL on CUDA). Per optimizer step::

    for each of grad_accum micro-steps:            # no gradient all-reduce until the last one
        batch = next(loader)                       # WebDataset stream, never passed to accelerator.prepare
        losses = task.losses(model, batch)         # one forward through the DDP-wrapped model
        accelerator.backward(losses["loss"] / grad_accum)
    clip gradients; optimizer.step(); scheduler.step(); EMA update
    every log.every steps: TensorBoard scalars + a console line
    every eval.every steps: validation (model and EMA) over data.val
    every log.image_every steps: task visuals
    every checkpoint.every steps and at the end: iter_N.pt + TorchScript exports

Starting again with the same run folder resumes from the newest complete checkpoint: model, EMA,
optimizer, scheduler, loss scaler, step, every rank's RNG state and the data stream position
(``data.resume=exact``). A stop request (SIGTERM/SIGUSR1 via :meth:`Trainer.request_stop`, or a job
scheduler) makes every rank stop together at the next step boundary and write a checkpoint first.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed

from toolkit.config import Config, run_dir, to_dict, to_yaml
from toolkit.data.pipeline import SKIPPED_KEY, eval_loader, train_loader
from toolkit.engine.checkpoint import Checkpointer, CheckpointError, rng_state, set_rng_state
from toolkit.engine.device import check_precision, check_world_size, move_batch, peak_memory_mb, select_device
from toolkit.engine.ema import EMA
from toolkit.engine.logger import RunLogger
from toolkit.engine.optim import build_optimizer, build_scheduler
from toolkit.tasks import build_task

STOP_EXIT = 1     #: checkpoint and stop (SIGTERM / SIGUSR1, a scheduler killing the job)
STOP_REQUEUE = 2  #: checkpoint, stop, and let the launcher requeue the job (time limit, preemption notice)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


class Trainer:
    """Build everything for a run; :meth:`fit` trains it to ``train.max_steps`` (resuming if possible).

    Raises:
        ConfigError: for a device or precision that cannot run here.
        CheckpointError: if the newest checkpoint does not fit the model.
        ShardListError: if ``data.train`` matches no shard.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run_dir = run_dir(cfg)
        device = select_device(cfg.train.device)
        mixed = check_precision(device, cfg.train.precision)
        check_world_size(device, int(os.environ.get("WORLD_SIZE", "1")))
        ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters)
        self.accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed, kwargs_handlers=[ddp])
        self.device = self.accelerator.device
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process

        self.task = build_task(cfg.task)
        set_seed(cfg.run.seed)  # identical initial weights on every rank
        model = self.task.build_model()
        self.n_params, self.n_trainable = count_parameters(model)
        self.ema = EMA(model, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
        optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.max_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if self.ema is not None:
            self.ema.to(self.device)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", keep=cfg.checkpoint.keep)
        self.step = 0
        self.resumed_from: Path | None = None
        self._val_batch = None
        self._stop_request = 0

    # ------------------------------------------------------------------------------------------ utils
    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def request_stop(self, code: int = STOP_EXIT) -> None:
        """Ask every rank to checkpoint and stop at the next step boundary.

        Safe to call from a signal handler, on any one rank, before or during :meth:`fit`; the ranks
        agree on the largest code requested anywhere (:data:`STOP_EXIT` or :data:`STOP_REQUEUE`).
        """
        self._stop_request = max(self._stop_request, int(code))

    def _agreed_stop_code(self) -> int:
        """The largest stop code requested on any rank (one small all-reduce per step)."""
        code = torch.tensor([self._stop_request], dtype=torch.int32, device=self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MAX)
        return int(code.item())

    def _state(self) -> dict:
        """Checkpoint content; called on every rank (RNG states are gathered), used on the main one."""
        rngs = gather_object([rng_state()])
        scaler = self.accelerator.scaler
        return {
            "step": self.step,
            "model": self.unwrapped.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": {str(rank): state for rank, state in enumerate(rngs)},
            "data": {"batches_per_rank": self.step * self.cfg.train.grad_accum,
                     "batch_size": self.cfg.data.batch_size, "num_workers": self.cfg.data.num_workers},
            "world_size": self.world_size,
            "config": to_dict(self.cfg),
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``iter_{step}.pt`` (+ exports) on the main process; every rank must call it."""
        state = self._state()
        path = None
        if self.is_main:
            exports = {}
            if self.cfg.checkpoint.export_jit:
                exports = export_modules(self.task, self.unwrapped, self.ema.module if self.ema else None)
            path = self.checkpointer.save(self.step, state, exports)
        self.accelerator.wait_for_everyone()
        return path

    def _resume(self) -> bool:
        """Load the newest complete checkpoint of the run folder, if any. Returns True if RNG was restored."""
        found = self.checkpointer.load_latest()
        if found is None:
            return False
        state, path = found
        try:
            self.unwrapped.load_state_dict(state["model"])
            if self.ema is not None and state.get("ema"):
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.accelerator.scaler is not None and state.get("scaler"):
                self.accelerator.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint '{path}' does not fit this run's model/optimizer: {exc}") from exc
        self.step = int(state["step"])
        self.resumed_from = path
        self._saved_config = state.get("config", {})
        rng = state.get("rng", {}).get(str(self.rank))
        if rng is not None and int(state.get("world_size", -1)) == self.world_size:
            set_rng_state(rng)
            return True
        return False

    def _finished_summary(self) -> dict | None:
        """The run's ``summary.json`` if it records a finished run at the current step, else None."""
        if self.step < self.cfg.train.max_steps:
            return None
        try:
            summary = json.loads((self.run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        if summary.get("status") == "finished" and summary.get("step") == self.step:
            return summary
        return None

    def _config_changes(self) -> list[str]:
        old, new = getattr(self, "_saved_config", {}), to_dict(self.cfg)
        changes = []

        def walk(a, b, prefix=""):
            for key in sorted(set(a) | set(b)):
                va, vb = a.get(key), b.get(key)
                if isinstance(va, dict) and isinstance(vb, dict):
                    walk(va, vb, f"{prefix}{key}.")
                elif va != vb:
                    changes.append(f"{prefix}{key}: {va!r} -> {vb!r}")

        walk(old, new)
        return changes

    # ----------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Task metrics over ``data.val`` (split across ranks), reduced over all ranks.

        ``model`` is an unwrapped module (not DDP): evaluation runs no collective inside the forward."""
        cfg = self.cfg
        loader = eval_loader(cfg.data.val, self.task.decode_eval, cfg.data.val_batch_size or cfg.data.batch_size,
                             rank=self.rank, world_size=self.world_size, num_workers=0, seed=cfg.run.seed,
                             keys=self.task.shard_keys)
        was_training = model.training
        model.eval()
        sums: dict[str, float] = defaultdict(float)
        for i, batch in enumerate(loader):
            if cfg.eval.max_batches and i >= cfg.eval.max_batches:
                break
            batch.pop(SKIPPED_KEY, None)
            for key, value in self.task.metric_sums(model, move_batch(batch, self.device)).items():
                sums[key] += float(value)
        model.train(was_training)
        keys = sorted(set().union(*gather_object([sorted(sums)])))
        total = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        self.last_eval_sums = dict(zip(keys, total.tolist()))
        return self.task.metrics(self.last_eval_sums)

    def _log_visuals(self, logger: RunLogger, batch: dict) -> None:
        if not self.is_main:
            return
        if self._val_batch is None and self.cfg.data.val:
            first = next(iter(eval_loader(self.cfg.data.val, self.task.decode_eval, self.cfg.data.batch_size,
                                          num_workers=0, seed=self.cfg.run.seed, keys=self.task.shard_keys)), None)
            self._val_batch = first
        source = self._val_batch if self._val_batch is not None else batch
        source = {k: v for k, v in source.items() if k != SKIPPED_KEY}
        model = self.unwrapped
        was_training = model.training
        model.eval()
        with torch.no_grad():
            images = self.task.visuals(model, move_batch(source, self.device))
        model.train(was_training)
        logger.images(self.step, {f"images/{k}": v for k, v in images.items()})

    # ----------------------------------------------------------------------------------------- loop
    def fit(self) -> dict:
        """Train until ``train.max_steps`` or a stop request. Returns a summary dict."""
        cfg, acc = self.cfg, self.accelerator
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.run_dir / "config.yaml", to_yaml(cfg))
        acc.wait_for_everyone()
        rng_restored = self._resume()
        if not rng_restored:
            set_seed(cfg.run.seed + 1000 * self.step, device_specific=True)
        logger = RunLogger(self.run_dir, self.is_main, cfg.train.max_steps, self.step, cfg.log.progress)
        if self.resumed_from is not None:
            logger.print(f"resumed from {self.resumed_from} at step {self.step}")
            changes = self._config_changes()
            if changes:
                logger.print("config differs from the checkpoint's: " + "; ".join(changes[:8]))
        else:
            logger.text("config", "```\n" + to_yaml(cfg) + "\n```")
            info = {f"info/{k}": float(v) for k, v in self.task.info(self.unwrapped).items()}
            info.update({"info/parameters": float(self.n_params), "info/trainable_parameters": float(self.n_trainable),
                         "info/world_size": float(self.world_size)})
            logger.scalars(self.step, info)
        logger.print(f"run {self.run_dir} | task {cfg.task.name} | {self.n_params / 1e6:.2f}M parameters | "
                     f"device {self.device} x{self.world_size} | precision {cfg.train.precision} | "
                     f"batch {cfg.data.batch_size} x accum {cfg.train.grad_accum} x world {self.world_size}")

        done = self._finished_summary()
        if done is not None:  # running a finished run again keeps its results
            logger.print(f"already finished at step {self.step}: {self.run_dir / 'summary.json'}")
            logger.close()
            return done

        skip = self.step * cfg.train.grad_accum if cfg.data.resume == "exact" else 0
        data_seed = cfg.run.seed if cfg.data.resume == "exact" else cfg.run.seed + 7919 * self.step
        loader = train_loader(cfg.data.train, self.task.decode_train, cfg.data.batch_size, seed=data_seed,
                              rank=self.rank, num_workers=cfg.data.num_workers,
                              shuffle_buffer=cfg.data.shuffle_buffer, skip_batches=skip,
                              keys=self.task.shard_keys)
        if skip:
            logger.print(f"fast-forwarding the data stream by {skip} batches per rank (data.resume=exact)")
        batches = iter(loader)
        samples_per_step = cfg.data.batch_size * cfg.train.grad_accum * self.world_size
        skipped_total = 0
        window = defaultdict(float)
        window_steps, window_time = 0, 0.0
        status = "finished"
        stop = 0
        self.model.train()
        t_start = time.time()

        while self.step < cfg.train.max_steps:
            t0 = time.time()
            for micro in range(cfg.train.grad_accum):
                batch = next(batches)
                skipped_total += int(batch.pop(SKIPPED_KEY, 0))
                batch = move_batch(batch, self.device)
                last = micro == cfg.train.grad_accum - 1
                with acc.no_sync(self.model) if not last else contextlib.nullcontext():
                    losses = self.task.losses(self.model, batch)
                    acc.backward(losses["loss"] / cfg.train.grad_accum)
                for key, value in losses.items():
                    window[f"train/{key}"] += float(value.detach()) / cfg.train.grad_accum
            if cfg.train.grad_clip > 0:
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None]) \
                    if hasattr(torch.nn.utils, "get_total_norm") else torch.tensor(float("nan"))
            self.optimizer.step()
            if not acc.optimizer_step_was_skipped:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.task.after_optimizer_step(self.unwrapped)
            if self.ema is not None:
                self.ema.update(self.unwrapped)
            self.step += 1
            window["train/grad_norm"] += float(grad_norm) if grad_norm is not None else float("nan")
            window_steps += 1
            window_time += time.time() - t0
            logger.advance(self.step, window["train/loss"] / window_steps)

            if self.step % cfg.log.every == 0 or self.step == cfg.train.max_steps:
                values = {k: v / window_steps for k, v in window.items()}
                if self.world_size > 1:  # average the training losses over ranks (same keys everywhere)
                    keys = sorted(values)
                    avg = acc.reduce(torch.tensor([values[k] for k in keys], device=self.device), reduction="mean")
                    values = dict(zip(keys, avg.tolist()))
                step_time = window_time / window_steps
                values.update({"train/lr": self.scheduler.get_last_lr()[0], "perf/step_time_s": step_time,
                               "perf/samples_per_s": samples_per_step / step_time,
                               "perf/peak_mem_mb": peak_memory_mb(self.device),
                               "data/skipped_samples": float(skipped_total)})
                if self.ema is not None:
                    values["train/ema_decay"] = self.ema.current_decay()
                if acc.scaler is not None:
                    values["train/loss_scale"] = float(acc.scaler.get_scale())
                logger.scalars(self.step, values)
                logger.line(self.step, values)
                window.clear()
                window_steps, window_time = 0, 0.0
                if not math.isfinite(values.get("train/loss", 0.0)):
                    logger.print("warning: the training loss is not finite")

            if cfg.log.image_every and self.step % cfg.log.image_every == 0:
                self._log_visuals(logger, batch)
            eval_now = cfg.data.val and ((cfg.eval.every and self.step % cfg.eval.every == 0)
                                         or self.step == cfg.train.max_steps)
            if eval_now:
                self._run_eval(logger)
            stop = self._agreed_stop_code()
            if stop or self.step % cfg.checkpoint.every == 0 or self.step == cfg.train.max_steps:
                path = self.save_checkpoint()
                if path is not None:
                    logger.print(f"saved {path}")
            if stop:
                status = "stopped"
                logger.print(f"stop requested: checkpointed at step {self.step} and stopping")
                break

        logger.flush()
        elapsed = time.time() - t_start
        summary = {"status": status, "stop_code": stop if status == "stopped" else 0, "step": self.step, "max_steps": cfg.train.max_steps,
                   "run_dir": str(self.run_dir), "parameters": self.n_params, "trainable_parameters": self.n_trainable,
                   "world_size": self.world_size, "device": str(self.device), "precision": cfg.train.precision,
                   "train_seconds": round(elapsed, 2), "peak_mem_mb": round(peak_memory_mb(self.device), 1),
                   "skipped_samples": skipped_total, "last_eval": getattr(self, "_last_eval", {}),
                   "resumed_from": str(self.resumed_from) if self.resumed_from else None}
        if self.is_main:
            _write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=1))
        logger.close()
        return summary

    def _run_eval(self, logger: RunLogger) -> None:
        results = {f"val/{k}": v for k, v in self.evaluate(self.unwrapped).items()}
        if self.is_main:
            logger.images(self.step, {f"images/val_{k}": v for k, v in self.task.eval_images(self.last_eval_sums).items()})
        if self.ema is not None and self.cfg.eval.ema:
            results.update({f"val_ema/{k}": v for k, v in self.evaluate(self.ema.module).items()})
        logger.scalars(self.step, results)
        logger.print(f"eval @ {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        self._last_eval = results


def export_modules(task, model: torch.nn.Module, ema_model: torch.nn.Module | None) -> dict[str, torch.jit.ScriptModule]:
    """Script the task's export modules on CPU in fp32 (loadable anywhere with ``torch.jit.load``)."""
    import copy

    scripted = {}
    for suffix, module in task.exports(model, ema_model).items():
        module = copy.deepcopy(module).float().cpu().eval()
        scripted[suffix] = torch.jit.script(module)
    return scripted
