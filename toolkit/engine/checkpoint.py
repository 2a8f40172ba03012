"""Checkpoints, end to end: the format, saving and when, resuming, exports, and loading a trained run.

Layout of a run folder's ``checkpoints/`` (the only place that knows it)::

    iter_{N:09d}.pt              the training state at optimizer step N
    iter_{N:09d}_{suffix}.jit    TorchScript exports of the task (CPU, fp32), written before the .pt

Every file is written to ``NAME.tmp`` and renamed into place (:func:`toolkit.files.atomic_open`),
exports first and the ``.pt`` last, so an ``iter_N.pt`` that exists is complete and its exports exist
too. Resume picks the newest ``.pt`` that loads; a damaged newest one is reported and the previous one
is used. Only the newest ``keep`` checkpoints (with their exports) are kept.

A checkpoint holds builtins and tensors only (``torch.load(weights_only=True)`` loads it): one entry
per stateful part handed to the :class:`Checkpointer` (``model``, ``ema``, ``optimizer``,
``scheduler``, ``scaler``), ``step``, ``rng`` (one entry per rank, every state as tensors), ``data``
(the stream position that resume reads back), ``world_size`` and ``config`` (the resolved config).

Other code loads a trained run with :func:`load_trained_model` (a run folder or an ``iter_N.pt``,
EMA or raw weights) and finds exports with :func:`latest_exports`; neither needs the trainer.
"""

from __future__ import annotations

import copy
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from toolkit.files import atomic_open

CKPT_RE = re.compile(r"^iter_(\d{9})\.pt$")
WEIGHTS = ("ema", "model")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


@dataclass
class Resumed:
    """What :meth:`Checkpointer.resume` restored.

    Attributes:
        step: optimizer steps done. path: the checkpoint. data: its saved stream position.
        config: its resolved config (a plain dict). rng_restored: this rank's RNG states were restored
            (False when the world size changed: the caller reseeds).
    """

    step: int
    path: Path
    data: dict
    config: dict
    rng_restored: bool


class Checkpointer:
    """Save, list, prune, resume and export the checkpoints of one run folder.

    The trainer hands it the stateful parts once; the checkpointer decides when to save
    (:meth:`due`), what goes into the file, and how resume restores it.

    Args:
        directory: ``RUN/checkpoints``.
        keep: how many of the newest checkpoints to keep (>= 1).
        every: save every this many steps (0 = only at the end and on stop requests).
        parts: name -> object with ``state_dict``/``load_state_dict`` (None values are saved as ``{}``).
        exporter: returns the modules to script at every save (suffix -> module); None = no exports.
        accelerator: gathers RNG states of every rank and synchronises them around a save (None: one process).
        config: the resolved run config (plain dict) stored in every checkpoint.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, every: int = 0, parts: dict[str, Stateful | None] | None = None,
                 exporter: Callable[[], dict[str, nn.Module]] | None = None, accelerator=None, config: dict | None = None):
        self.dir = Path(directory)
        self.keep = max(1, keep)
        self.every = every
        self.parts = dict(parts or {})
        self.exporter = exporter
        self.accelerator = accelerator
        self.config = config or {}

    # --- layout --------------------------------------------------------------------------------
    def path(self, step: int) -> Path:
        return self.dir / f"iter_{step:09d}.pt"

    def export_path(self, step: int, suffix: str) -> Path:
        return self.dir / f"iter_{step:09d}_{suffix}.jit"

    def list(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as (step, path), oldest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), self.dir / name) for name in os.listdir(self.dir) if (m := CKPT_RE.match(name))]
        return sorted(found)

    # --- saving --------------------------------------------------------------------------------
    def due(self, step: int, final: bool = False) -> bool:
        """Save now? At every ``every`` steps, and always at the end of a run or on a stop request."""
        return final or bool(self.every and step % self.every == 0)

    def save(self, step: int, data: dict | None = None) -> Path | None:
        """Write ``iter_{step}.pt`` (and the exports) on the main process; every rank must call it.

        Args:
            step: optimizer steps done.
            data: the data stream position (read back by :meth:`resume`).

        Returns:
            The ``.pt`` path on the main process, None on the others.
        """
        from accelerate.utils import gather_object

        rngs = gather_object([rng_state()]) if self.accelerator is not None else [rng_state()]
        path = None
        if self.accelerator is None or self.accelerator.is_main_process:
            state = {name: (part.state_dict() if part is not None else {}) for name, part in self.parts.items()}
            state.update({"step": step, "rng": {str(rank): s for rank, s in enumerate(rngs)}, "data": dict(data or {}),
                          "world_size": len(rngs), "config": self.config})
            exports = script_modules(self.exporter()) if self.exporter is not None else {}
            path = self.write(step, state, exports)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return path

    def write(self, step: int, state: dict, exports: dict[str, torch.jit.ScriptModule] | None = None) -> Path:
        """Write the exports, then the state, then prune. Returns the ``.pt`` path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for suffix, module in (exports or {}).items():
            with atomic_open(self.export_path(step, suffix)) as f:
                torch.jit.save(module, f)
        path = self.path(step)
        with atomic_open(path) as f:
            torch.save(state, f)
        self.prune()
        return path

    def prune(self) -> None:
        ckpts = self.list()
        for step, path in ckpts[: max(0, len(ckpts) - self.keep)]:
            path.unlink(missing_ok=True)
            for extra in self.dir.glob(f"iter_{step:09d}_*.jit"):
                extra.unlink(missing_ok=True)

    # --- loading -------------------------------------------------------------------------------
    @staticmethod
    def load(path: str | os.PathLike) -> dict:
        """Load one checkpoint on the CPU with ``weights_only=True``.

        Raises:
            CheckpointError: naming the file if it is missing, truncated or not a toolkit checkpoint.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise CheckpointError(f"checkpoint '{path}' does not exist") from exc
        except Exception as exc:  # truncated zip, pickle errors, ...
            raise CheckpointError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc})") from exc
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            raise CheckpointError(f"'{path}' is not a toolkit checkpoint (expected keys 'model' and 'step')")
        return state

    def load_latest(self) -> tuple[dict, Path] | None:
        """The newest checkpoint that loads, or None if there is none; damaged ones are reported and skipped."""
        for _step, path in reversed(self.list()):
            try:
                return self.load(path), path
            except CheckpointError as exc:
                print(f"[checkpoint] {exc}; trying the previous one", file=sys.stderr)
        return None

    def resume(self, rank: int = 0, world_size: int = 1) -> Resumed | None:
        """Load the newest complete checkpoint into the parts; restore this rank's RNG if the world size
        is unchanged. Returns None if the run has no checkpoint.

        Raises:
            CheckpointError: if the checkpoint does not fit the parts (names the file).
        """
        found = self.load_latest()
        if found is None:
            return None
        state, path = found
        try:
            for name, part in self.parts.items():
                if part is not None and state.get(name):
                    part.load_state_dict(state[name])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint '{path}' does not fit this run's model/optimizer: {exc}") from exc
        rng = state.get("rng", {}).get(str(rank))
        restored = rng is not None and int(state.get("world_size", -1)) == world_size
        if restored:
            set_rng_state(rng)
        return Resumed(int(state["step"]), path, dict(state.get("data", {})), dict(state.get("config", {})), restored)


def script_modules(modules: dict[str, nn.Module]) -> dict[str, torch.jit.ScriptModule]:
    """Script modules on the CPU in fp32 (loadable anywhere with ``torch.jit.load``, without this package)."""
    return {suffix: torch.jit.script(copy.deepcopy(m).float().cpu().eval()) for suffix, m in modules.items()}


# --- trained runs ------------------------------------------------------------------------------
def checkpoint_path(source: str | os.PathLike) -> Path:
    """The newest ``iter_N.pt`` of a run folder, or ``source`` itself if it is a checkpoint file.

    Raises:
        FileNotFoundError: naming ``source`` if it has no checkpoint or does not exist.
    """
    path = Path(source)
    if path.is_dir():
        ckpts = Checkpointer(path / "checkpoints").list()
        if not ckpts:
            raise FileNotFoundError(f"run '{source}' has no checkpoint (expected {path}/checkpoints/iter_*.pt): "
                                    "train that stage first")
        return ckpts[-1][1]
    if not path.exists():
        raise FileNotFoundError(f"'{source}' does not exist (expected a run folder or a checkpoint file)")
    if not path.is_file():
        raise FileNotFoundError(f"'{source}' is neither a run folder nor a checkpoint file")
    return path


def load_trained_weights(source: str | os.PathLike, weights: str = "ema") -> tuple[dict[str, torch.Tensor], dict, Path, bool]:
    """(state dict, resolved config dict, checkpoint path, EMA used) of a run folder's newest checkpoint or an ``iter_N.pt``.

    Args:
        weights: ``ema`` (the EMA weights when the checkpoint has them, else the model's) or ``model``.

    Raises:
        ValueError: bad ``weights``; FileNotFoundError: no checkpoint; CheckpointError: unreadable.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    path = checkpoint_path(source)
    state = Checkpointer.load(path)
    use_ema = bool(weights == "ema" and state.get("ema"))
    return (state["ema"]["module"] if use_ema else state["model"]), state.get("config", {}), path, use_ema


@dataclass
class TrainedModel:
    """A trained run's model (CPU, eval mode), its config and where it came from."""

    model: nn.Module
    config: Any  # toolkit.config.Config
    path: Path
    weights: str  # "ema" or "model": the weights actually loaded
    task: Any  # the toolkit.tasks.base.Task instance that built the model


def load_trained_model(source: str | os.PathLike, weights: str = "ema") -> TrainedModel:
    """Rebuild a trained run's model from the config stored in its checkpoint and load its weights.

    The task named in that config builds the model (a staged task may itself load its upstream runs).

    Args:
        source: a run folder (its newest checkpoint) or an ``iter_N.pt``.
        weights: ``ema`` (default; the model's weights if the run kept no EMA) or ``model``.

    Raises:
        FileNotFoundError, CheckpointError: no or unreadable checkpoint (named);
        ConfigError: a stored config this version cannot read; ValueError: bad ``weights``.
    """
    from toolkit.config import from_dict
    from toolkit.tasks import build_task

    state, config, path, use_ema = load_trained_weights(source, weights)
    cfg = from_dict(config, source=f"config stored in {path}")
    task = build_task(cfg.task)
    model = task.build_model()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint '{path}' does not fit the model its config builds: {exc}") from exc
    return TrainedModel(model.eval(), cfg, path, "ema" if use_ema else "model", task)


def latest_exports(run: str | os.PathLike, suffixes: tuple[str, ...]) -> tuple[str, ...]:
    """Paths of the ``suffixes`` exports of the newest checkpoint of ``run`` that has all of them.

    Raises:
        FileNotFoundError: if no complete checkpoint of the run has those exports.
    """
    ck = Checkpointer(Path(run) / "checkpoints")
    for step, _ in reversed(ck.list()):
        paths = tuple(ck.export_path(step, s) for s in suffixes)
        if all(p.exists() for p in paths):
            return tuple(str(p) for p in paths)
    raise FileNotFoundError(f"no checkpoint with {'/'.join(suffixes)} exports in '{run}/checkpoints'")


# --- RNG -----------------------------------------------------------------------------------------
def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states (torch CPU/CUDA, numpy, python ``random``) as tensors."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor(list(py_state[1]), dtype=torch.int64),
        "python_version": torch.tensor([py_state[0]], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_meta"][0]),
                         int(state["numpy_meta"][1]), float(state["numpy_gauss"][0])))
    random.setstate((int(state["python_version"][0]), tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
