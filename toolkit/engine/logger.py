"""Run logging on the main process: TensorBoard, ``metrics.jsonl`` and the console.

TensorBoard event files go to ``RUN/tb`` (``tensorboard --logdir runs/`` shows every run). The same
scalars are appended to ``RUN/metrics.jsonl`` (one JSON object per log step) for scripts and reports.
The console gets a tqdm progress bar with ETA (when ``progress`` is on and stderr is a terminal; job
logs get only the lines) and one concise line per log step, with its own ETA. Other ranks log nothing.

HParams: when a run logs its final evaluation (``val/*`` scalars at step ``total_steps``), :meth:`RunLogger.close`
adds TensorBoard's HParams summaries to ``RUN/tb`` (no timestamped subfolder): the hyperparameters are the run's
sweep overrides and seed (``RUN/sweep.json``, written by ``python -m launch --sweep``) or else a fixed set of
its config (``run.seed``, ``optim.lr``, ``optim.weight_decay``, ``data.batch_size``, ``train.max_steps``,
``train.precision`` and every scalar ``task.*`` key, from ``RUN/config.yaml``); the metrics are the final
``val/*`` and ``val_ema/*`` scalars, so ``tensorboard --logdir runs/`` compares a sweep's runs side by side.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from toolkit.files import WriteError


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1)


class RunLogger:
    """Logger for one run; writes only on the main process (``enabled``) and only after :meth:`open`.

    Args:
        run_dir: the run folder.
        enabled: write anything at all.
        total_steps: for the progress bar and ETA.
        progress: show a tqdm bar (when stderr is a terminal).
    """

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, progress: bool = True):
        self.run_dir, self.enabled, self.total, self.progress = Path(run_dir), enabled, total_steps, progress
        self.start_step = 0
        self.t0 = time.time()
        self.writer = None
        self.jsonl = None
        self.bar = None
        self.final_eval: dict[str, float] = {}  #: ``val/*``/``val_ema/*`` scalars logged at step ``total_steps``

    def open(self, start_step: int = 0) -> None:
        """Open TensorBoard, ``metrics.jsonl`` (appending) and the progress bar, starting at ``start_step``."""
        self.start_step, self.t0 = start_step, time.time()
        if not self.enabled or self.writer is not None:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        path = self.run_dir / "metrics.jsonl"
        torn = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
        self.jsonl = open(path, "a", buffering=1)
        if torn:  # a line cut off by a crash or a full disk: end it, so every later line parses
            self.jsonl.write("\n")
        if self.progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            mininterval=0.5, file=sys.stderr)

    def print(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def advance(self, step: int, loss=None) -> None:
        """Move the progress bar to ``step``; ``loss`` (a number, a 0-d tensor, or a callable giving one)
        is read only when a bar is shown, so no device value is synchronised otherwise."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                value = float(loss() if callable(loss) else loss)
                self.bar.set_postfix(loss=f"{value:.4g}", refresh=False)

    def eta(self, step: int) -> float:
        done = step - self.start_step
        return (time.time() - self.t0) / done * (self.total - step) if done > 0 else float("nan")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
            if step == self.total and tag.startswith(("val/", "val_ema/")):
                self.final_eval[tag] = float(value)
        try:
            self.jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        except OSError as exc:  # a full disk: name the file
            raise WriteError(exc.errno or 0, f"cannot write '{self.jsonl.name}': {exc.strerror or exc}") from exc

    def images(self, step: int, images: dict[str, torch.Tensor]) -> None:
        if self.writer is None:
            return
        for tag, img in images.items():
            self.writer.add_image(tag, img.detach().float().clamp(0, 1).cpu(), step, dataformats="CHW")

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def line(self, step: int, values: dict[str, float]) -> None:
        """One concise console line: step, loss, lr, throughput, the slowest rank (several ranks), ETA."""
        parts = [f"step {step}/{self.total}"]
        for key, label, fmt in (("train/loss", "loss", ".4g"), ("train/lr", "lr", ".3g"),
                                ("train/grad_norm", "gnorm", ".3g"), ("perf/samples_per_s", "samples/s", ".1f"),
                                ("perf/step_time_s", "s/step", ".3f"), ("perf/peak_mem_mb", "peak MiB", ".0f"),
                                ("train/skipped_steps", "skipped steps", ".0f")):
            if key in values and (key != "train/skipped_steps" or values[key] > 0):
                parts.append(f"{label} {values[key]:{fmt}}")
        if "perf/slowest_rank" in values:  # several ranks: the slowest one's own step time over the median's
            parts.append(f"slowest rank {values['perf/slowest_rank']:.0f} x{values['perf/straggler_ratio']:.2f}")
        parts.append(f"eta {_fmt_duration(self.eta(step))}")
        self.print(" | ".join(parts))

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def hparams(self, params: dict, metrics: dict[str, float]) -> None:
        """Write the HParams plugin's summaries (experiment, session start and end) to this run's event file.

        Args:
            params: hyperparameter name -> bool, int, float or str (anything else is written as its ``str``).
            metrics: scalar tags of this run (already logged with :meth:`scalars`) -> final value; the dashboard
                reads each metric's value from the run's scalars under that tag.
        """
        if self.writer is None or not metrics:
            return
        from torch.utils.tensorboard.summary import hparams

        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
        for summary in hparams(clean, dict(metrics)):
            self.writer.file_writer.add_summary(summary)

    def _run_hparams(self) -> dict:
        """The run's hyperparameters for :meth:`hparams` (see the module docstring)."""
        try:
            info = json.loads((self.run_dir / "sweep.json").read_text())
            return {**info.get("overrides", {}), "run.seed": info.get("seed"), "sweep.point": info.get("point")}
        except (OSError, ValueError):
            pass
        import yaml

        try:
            cfg = yaml.safe_load((self.run_dir / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return {}
        params = {key: cfg.get(sec, {}).get(name) for key in ("run.seed", "optim.lr", "optim.weight_decay",
                                                              "data.batch_size", "train.max_steps", "train.precision")
                  for sec, name in [key.split(".")]}
        params.update({f"task.{k}": v for k, v in (cfg.get("task") or {}).items() if isinstance(v, (bool, int, float, str))})
        return params

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None and self.final_eval:
            self.hparams(self._run_hparams(), self.final_eval)
            self.final_eval = {}
        if self.writer is not None:
            writer, jsonl, self.writer, self.jsonl = self.writer, self.jsonl, None, None
            try:
                writer.close()
            finally:
                jsonl.close()
