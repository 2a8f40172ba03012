"""The training loop: one readable loop on Accelerate, for every task.

``Trainer(cfg).fit()`` runs the same way alone (``python -m toolkit.train``) and under
``torchrun --nproc_per_node=N`` (DDP; gloo on CPU, NCCL on CUDA). :meth:`Trainer.fit` only
coordinates; each component decides its own timing (as torchtitan's ``train()``)::

    resume (checkpointer)  ->  for each optimizer step:
        train_step(batches)   # grad_accum micro-steps, clip; one all-reduce agrees on skipping a
                              # non-finite step and on stopping; optimizer, schedule, EMA            (step.py)
        train_step.sync       # every SYNC_EVERY steps, at log steps, before a checkpoint: the one host
                              # read of the agreement (nothing else is read back per step)       (step.py)
        window: log every log.every                                                          (step.py)
        visualizer: images every log.image_every                                         (evaluator.py)
        evaluator: validation every eval.every and at the end                            (evaluator.py)
        checkpointer: every checkpoint.every, at the end and on a stop request          (checkpoint.py)

Starting again with the same run folder resumes from the newest usable checkpoint: model, EMA,
optimizer, scheduler, loss scaler, step, every rank's RNG state and the saved data stream position
(``data.resume=exact``); optimizer and schedule settings that the config changed since (``optim.*``,
``train.max_steps``) are applied over the restored ones, and said so. ``train.strategy`` picks DDP
(Accelerate), DeepSpeed ZeRO (:mod:`toolkit.engine.zero`) or FSDP2 (:mod:`toolkit.engine.fsdp`), all behind
the verbs of :class:`toolkit.engine.strategy.Strategy`; the loop is the same, the full weights are gathered
before pictures, validation and checkpoints. A stop request
(SIGTERM/SIGUSR1/SIGINT via :meth:`Trainer.request_stop`, or a job scheduler) makes every rank stop
together at the next sync point (at most :data:`SYNC_EVERY` steps later) and write a checkpoint first. Exports are built from the EMA
weights when ``eval.ema`` is on and the run keeps an EMA, else from the model's.

Faults: rank 0 holds the run folder's lock (:mod:`toolkit.engine.lock`) from construction to the end
of :meth:`Trainer.fit`; the shards of ``data.train`` and ``data.val`` are checked for the task's
members before anything is built; non-finite steps are skipped (:mod:`toolkit.engine.step`); the
checkpointer verifies, quarantines and refuses (:mod:`toolkit.engine.checkpoint`). Any error leaves
:meth:`fit` with the loader's workers shut down, the logs closed and the lock released.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, set_seed

from toolkit.config import Config, config_diff, run_dir, to_dict, to_yaml
from toolkit.data.pipeline import check_shards, train_loader
from toolkit.engine.checkpoint import Checkpointer
from toolkit.engine.device import check_precision, check_world_size, peak_memory_mb, select_device
from toolkit.engine.dist import init_restarted_group
from toolkit.engine.ema import EMA
from toolkit.engine.evaluator import Evaluator, Visualizer
from toolkit.engine.lock import acquire_run_lock, release_run_lock
from toolkit.engine.logger import RunLogger
from toolkit.engine.optim import build_optimizer, build_scheduler, reapply_settings, schedule_settings
from toolkit.engine.parallelize import is_parallelized, parallelize
from toolkit.engine.profiler import StepProfiler
from toolkit.engine.strategy import build_strategy
from toolkit.engine.step import MetricWindow, TrainStep
from toolkit.engine.stragglers import gather_with_own_time, time_forward
from toolkit.engine.watchdog import Watchdog, process_group_timeout
from toolkit.files import write_text
from toolkit.tasks import build_task

STOP_EXIT = 1     #: checkpoint and stop (SIGTERM / SIGUSR1, a scheduler killing the job)
STOP_REQUEUE = 2  #: checkpoint, stop, and let the launcher requeue the job (time limit, preemption notice)
#: steps between two reads of the ranks' per-step agreement (stop request, non-finite steps): a stop
#: request is acted on at most this many steps later; on CUDA the GPU's queue is drained this often only
SYNC_EVERY = 10


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


class Trainer:
    """Build every component of a run; :meth:`fit` trains it to ``train.max_steps`` (resuming if possible).

    Raises:
        ConfigError: for a device or precision that cannot run here.
        RunLockedError: if another process holds the run folder (rank 0).
        ShardListError: if ``data.train``/``data.val`` match no shard or lack the task's members.
        CheckpointError (from :meth:`fit`): if the checkpoints cannot be used (see the checkpointer).
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.run_dir = run_dir(cfg)
        device = select_device(cfg.train.device)
        mixed = check_precision(device, cfg.train.precision)
        check_world_size(device, int(os.environ.get("WORLD_SIZE", "1")))
        ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters)
        init_restarted_group(device, process_group_timeout(cfg.dist.timeout_s))  # torchrun --max-restarts (dist.py)
        handlers = [ddp]
        if process_group_timeout(cfg.dist.timeout_s) is not None:  # init and collectives (toolkit.engine.watchdog)
            handlers.append(InitProcessGroupKwargs(timeout=process_group_timeout(cfg.dist.timeout_s)))
        self.accelerator = acc = Accelerator(cpu=device == "cpu", mixed_precision=mixed, kwargs_handlers=handlers)
        self.device = acc.device
        self.rank, self.world_size, self.is_main = acc.process_index, acc.num_processes, acc.is_main_process
        self.lock = acquire_run_lock(self.run_dir) if self.is_main else None
        try:
            self._build(cfg, acc)
        except BaseException:
            release_run_lock(self.lock)
            raise

    def _build(self, cfg: Config, acc: Accelerator) -> None:
        """Every component of the run, the shards checked first."""
        self.task = build_task(cfg.task)
        check_shards(cfg.data.train, self.task.shard_keys, "data.train")
        if cfg.data.val:
            check_shards(cfg.data.val, self.task.shard_keys, "data.val")
        set_seed(cfg.run.seed)  # identical initial weights on every rank
        model = self.task.build_model()
        self.n_params, self.n_trainable = count_parameters(model)
        self.ema = EMA(model, cfg.ema.decay, cfg.ema.warmup).to(self.device) if cfg.ema.enabled else None
        # train.activation_checkpointing / train.compile, in place, after the EMA's plain copy (parallelize.py)
        parallelize(model, self.task.blocks(model), cfg.train.compile, cfg.train.activation_checkpointing,
                    self.task.name, cfg.train.compile_backend)
        optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.max_steps)
        # DDP, DeepSpeed ZeRO or FSDP2, behind one interface (toolkit.engine.strategy)
        self.strategy = s = build_strategy(cfg, acc, model, optimizer, self.run_dir / "checkpoints",
                                           self.task.blocks(model))
        self.model, self.optimizer = s.model, s.optimizer
        self.settings = schedule_settings(self.optimizer, self.scheduler)  # the config's, re-applied on resume
        self.export_model = self.ema.module if self.ema is not None and cfg.eval.ema else self.unwrapped

        self.train_step = TrainStep(s, self.scheduler, self.task, self.ema, cfg.train.grad_accum, cfg.train.grad_clip,
                                    cfg.train.max_bad_steps, last_good=lambda: self.checkpointer.last_path,
                                    stop_request=lambda: self._stop_request)
        parts = {"model": s.model_part, "ema": self.ema, "optimizer": s.optimizer_part, "scheduler": self.scheduler,
                 "scaler": acc.scaler, "train_step": self.train_step}
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", cfg.checkpoint.keep, cfg.checkpoint.every, parts,
                                         self._exports if cfg.checkpoint.export_jit else None, acc, to_dict(cfg),
                                         allow_fresh_start=cfg.checkpoint.allow_fresh_start)
        self.evaluator = Evaluator(cfg, self.task, acc)
        self.visualizer = Visualizer(cfg.log.image_every, cfg.data.val, cfg.data.batch_size, cfg.run.seed, self.task,
                                     self.is_main)
        self.window = MetricWindow(cfg.log.every, cfg.train.max_steps,
                                   cfg.data.batch_size * cfg.train.grad_accum * self.world_size)
        self.logger = RunLogger(self.run_dir, self.is_main, cfg.train.max_steps, cfg.log.progress)
        if self.world_size > 1:
            # straggler visibility (stragglers.py): the plain module that runs the forward (DeepSpeed: the engine's)
            time_forward(s.module, self.train_step)
        # every rank exits, naming the culprit, when one makes no progress for dist.timeout_s (watchdog.py)
        self.watchdog = Watchdog(cfg.dist.timeout_s, self.rank, self.world_size, cfg.dist.heartbeat_s,
                                 on_exit=self.logger.flush)
        self.profiler = StepProfiler(cfg.profile, self.run_dir, self.rank, self.device)  # profile: (profiler.py)
        self.sync_every = max(1, min(SYNC_EVERY, cfg.log.every))
        self.step = 0
        self.resumed = None       # toolkit.engine.checkpoint.Resumed, set by resume()
        self.applied: list[str] = []  # settings of the config applied over the checkpoint's, set by resume()
        self.batches = None       # the training stream (toolkit.data.pipeline.Batches), set by fit()
        self._stop_request = 0
        self._skips_reported = 0

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The plain model holding the full weights; under a sharding strategy as gathered last (before
        pictures, validation and checkpoints: :meth:`_gather_full_weights`)."""
        return self.strategy.plain_model

    @property
    def resumed_from(self) -> Path | None:
        return self.resumed.path if self.resumed is not None else None

    def _exports(self) -> dict[str, torch.nn.Module]:
        """The task's exports from the chosen weights; a compiled or checkpointed model's weights are
        copied into a freshly built plain model first (TorchScript cannot script a checkpointed block's forward,
        and the exports stay free of compiled code)."""
        model = self.export_model
        if is_parallelized(model):
            plain = self.task.build_model()
            plain.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
            model = plain.to(next(model.parameters()).device).train(model.training)
        return self.task.exports(model)

    # ----------------------------------------------------------------------------------------- loop
    def fit(self) -> dict:
        """Train until ``train.max_steps`` or a stop request. Returns a summary dict.

        Raises:
            CheckpointError: unusable checkpoints and no usable one (see ``checkpoint.allow_fresh_start``).
            NonFiniteError: ``train.max_bad_steps`` non-finite steps in a row, or non-finite weights at a save.
            CorruptDataError, NoSamplesError: data that yields no usable sample.
            WriteError: a checkpoint that cannot be written (a full disk), naming the file.
        """
        cfg = self.cfg
        with self._holding_the_run():
            self._start()
            finished = self._finished_summary()
            if finished is not None:  # running a finished run again keeps its results
                self.logger.print(f"already finished at step {self.step}: {self.run_dir / 'summary.json'}")
                self.logger.close()
                return finished
            status, stop, t_start = "finished", 0, time.time()
            self.model.train()
            self.profiler.start()
            with self.watchdog.watching(self.step), contextlib.closing(iter(self._train_stream())) as stream:
                # (closing stops the loader's workers)
                while self.step < cfg.train.max_steps:
                    t0 = time.perf_counter()
                    stats = self.train_step(stream, self.step + 1)
                    self.step += 1
                    synced = self._sync_due(self.step)
                    if synced:  # the one host read of the agreement (on CUDA: waits for the queued steps)
                        stop = self.train_step.sync(self.step)
                    self.window.add(stats, time.perf_counter() - t0)
                    self.logger.advance(self.step, self.window.mean_loss if synced else None)
                    if self.window.due(self.step):
                        self._log_training()
                    self._gather_full_weights()  # sharded strategies' full weights, every rank
                    if self.visualizer.due(self.step):
                        self.visualizer.log(self.step, self.unwrapped, self.device, self.logger, self.train_step.last_batch)
                    if self.evaluator.due(self.step):
                        self.evaluator.run(self.step, self.unwrapped, self.ema.module if self.ema else None, self.logger)
                    if self.checkpointer.due(self.step, final=bool(stop) or self.step == cfg.train.max_steps):
                        stop = self.train_step.sync(self.step)  # (a no-op if this step was a sync point)
                        self.save_checkpoint()
                    self.profiler.step()
                    self.watchdog.beat(self.step)
                    if stop:
                        status = "stopped"
                        self.logger.print(f"stop requested: checkpointed at step {self.step} and stopping")
                        break
            return self._finish(status, stop, time.time() - t_start)

    def _gather_full_weights(self) -> None:
        """On every rank, before a step's pictures or validation: gather the full weights into
        :attr:`unwrapped` (a collective under ZeRO-3 and FSDP2; the visualizer runs on the main process only)."""
        v = self.visualizer
        if (v.every and self.step % v.every == 0) or self.evaluator.due(self.step):
            self.strategy.full_weights()

    def _sync_due(self, step: int) -> bool:
        """Read the ranks' agreement (stop, skipped steps) at this step? Every :data:`SYNC_EVERY` steps
        (at most ``log.every``), at log steps and at the last step: by step number, the same on every rank."""
        return step % self.sync_every == 0 or self.window.due(step)

    @contextlib.contextmanager
    def _holding_the_run(self):
        """Hold the run lock (rank 0) around :meth:`fit`; on any error close the logs (quietly, so the
        error itself is what propagates) and always release the lock."""
        if self.is_main and self.lock is None:
            self.lock = acquire_run_lock(self.run_dir)
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.logger.close()
            raise
        finally:
            self.profiler.close()
            release_run_lock(self.lock)
            self.lock = None

    # ---------------------------------------------------------------------------------- the pieces
    def resume(self) -> bool:
        """Load the newest complete checkpoint of the run folder, if any; seed the RNGs otherwise.

        Returns True if a checkpoint was loaded."""
        self.resumed = self.checkpointer.resume(self.rank, self.world_size)
        if self.resumed is not None:
            self.step = self.resumed.step
            self.applied = reapply_settings(self.optimizer, self.scheduler, self.settings)
        if self.resumed is None or not self.resumed.rng_restored:
            set_seed(self.cfg.run.seed + 1000 * self.step, device_specific=True)
        return self.resumed is not None

    def _start(self) -> None:
        """Write the resolved config, resume, open the logs and print what runs where."""
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml", to_yaml(cfg))
        self.accelerator.wait_for_everyone()
        self.resume()
        self.logger.open(self.step)
        if self.resumed is not None:
            self.logger.print(f"resumed from {self.resumed.path} at step {self.step}")
            changes = config_diff(self.resumed.config, to_dict(cfg))
            if changes:
                self.logger.print("config differs from the checkpoint's: " + "; ".join(changes[:8]))
            if self.applied:
                self.logger.print("applied over the checkpoint's optimizer/schedule: " + "; ".join(self.applied[:8]))
        else:
            self.logger.text("config", "```\n" + to_yaml(cfg) + "\n```")
            info = {f"info/{k}": float(v) for k, v in self.task.info(self.unwrapped).items()}
            info.update({"info/parameters": float(self.n_params), "info/trainable_parameters": float(self.n_trainable),
                         "info/world_size": float(self.world_size)})
            self.logger.scalars(self.step, info)
        self.logger.print(f"run {self.run_dir} | task {cfg.task.name} | {self.n_params / 1e6:.2f}M parameters | "
                          f"device {self.device} x{self.world_size} | precision {cfg.train.precision} | "
                          f"batch {cfg.data.batch_size} x accum {cfg.train.grad_accum} x world {self.world_size}")

    def _data_position(self) -> dict:
        return {"batches_per_rank": self.step * self.cfg.train.grad_accum, "batch_size": self.cfg.data.batch_size,
                "num_workers": self.cfg.data.num_workers}

    def _train_stream(self):
        """The training stream, fast-forwarded to the checkpoint's saved position (``data.resume=exact``).

        A position saved with another batch size or worker count cannot be replayed: the stream is then
        reseeded by the step (as ``data.resume=reseed``), with a note."""
        cfg, saved = self.cfg, self.resumed.data if self.resumed is not None else {}
        skip, exact = 0, cfg.data.resume == "exact"
        if exact and saved:
            same = all(saved.get(k) == v for k, v in self._data_position().items() if k != "batches_per_rank")
            if same:
                skip = int(saved.get("batches_per_rank", 0))
            else:
                exact = False
                self.logger.print(f"data position saved with batch_size/num_workers {saved.get('batch_size')}/"
                                  f"{saved.get('num_workers')} cannot be replayed: the stream is reseeded")
        seed = cfg.run.seed if exact else cfg.run.seed + 7919 * self.step
        if skip:
            self.logger.print(f"fast-forwarding the data stream by {skip} batches per rank (data.resume=exact)")
        self.batches = train_loader(cfg.data.train, self.task.decode_train, cfg.data.batch_size, seed=seed,
                                    rank=self.rank, num_workers=cfg.data.num_workers,
                                    shuffle_buffer=cfg.data.shuffle_buffer, skip_batches=skip, keys=self.task.shard_keys)
        return self.batches

    def _log_training(self) -> None:
        own_time = self.train_step.own_seconds / max(1, self.window.steps)
        self.train_step.own_seconds, spread = 0.0, {}
        # the log step's one collective: the window's means, averaged over ranks, and each rank's own step time
        reduce = gather_with_own_time(self.accelerator, own_time, spread) if self.world_size > 1 else None
        values = self.window.read(reduce, self.train_step.skipped_steps)
        values.update(spread)  # straggler visibility (toolkit.engine.stragglers)
        values.update({"train/lr": self.scheduler.get_last_lr()[0], "perf/peak_mem_mb": peak_memory_mb(self.device),
                       "data/skipped_samples": float(self.batches.skipped)})
        if self.ema is not None:
            values["train/ema_decay"] = self.ema.current_decay()
        if self.accelerator.scaler is not None:
            values["train/loss_scale"] = float(self.accelerator.scaler.get_scale())
        self.logger.scalars(self.step, values)
        self.logger.line(self.step, values)
        skipped = self.train_step.skipped_steps
        if skipped > self._skips_reported:
            self.logger.print(f"warning: {skipped - self._skips_reported} optimizer steps skipped since the last log "
                              f"line (non-finite loss or gradient norm; {skipped} in this run)")
            self._skips_reported = skipped

    def request_stop(self, code: int = STOP_EXIT) -> None:
        """Ask every rank to checkpoint and stop at the next step boundary.

        Safe to call from a signal handler, on any one rank, before or during :meth:`fit`; the ranks
        agree on the largest code requested anywhere (:data:`STOP_EXIT` or :data:`STOP_REQUEUE`) and
        stop at the next sync point (at most :data:`SYNC_EVERY` steps, and at most ``log.every``, later).
        """
        self._stop_request = max(self._stop_request, int(code))

    def save_checkpoint(self) -> Path | None:
        """Write ``iter_{step}.pt`` (+ exports) on the main process; every rank must call it."""
        self.strategy.before_save(self.step)  # sharded state first (every rank), full weights gathered
        path = self.checkpointer.save(self.step, self._data_position())
        if path is not None:
            self.logger.print(f"saved {path}")
        return path

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

    def _finish(self, status: str, stop: int, elapsed: float) -> dict:
        """Write ``summary.json`` (main process), close the logs, return the summary."""
        self.logger.flush()
        summary = {"status": status, "stop_code": stop if status == "stopped" else 0, "step": self.step,
                   "max_steps": self.cfg.train.max_steps, "run_dir": str(self.run_dir), "parameters": self.n_params,
                   "trainable_parameters": self.n_trainable, "world_size": self.world_size, "device": str(self.device),
                   "precision": self.cfg.train.precision, "train_seconds": round(elapsed, 2),
                   "peak_mem_mb": round(peak_memory_mb(self.device), 1), "skipped_samples": self.batches.skipped,
                   "skipped_steps": self.train_step.skipped_steps,
                   "last_eval": self.evaluator.last,
                   "resumed_from": str(self.resumed_from) if self.resumed_from else None}
        if self.is_main:
            write_text(self.run_dir / "summary.json", json.dumps(summary, indent=1))
        self.logger.close()
        return summary
