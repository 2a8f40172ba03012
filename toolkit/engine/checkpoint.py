"""Checkpoints, end to end: the format, saving and when, integrity, pruning, resuming, exports, and
loading a trained run.

Layout of a run folder's ``checkpoints/`` (the only place that knows it)::

    iter_{N:09d}.pt              the training state at optimizer step N
    iter_{N:09d}_{suffix}.jit    TorchScript exports of the task (CPU, fp32), written before the .pt
    iter_{N:09d}_zero/           train.strategy=deepspeed only: DeepSpeed's per-rank (sharded) optimizer
                                 state, written before the .pt, which names it and holds each file's
                                 SHA-256 (toolkit.engine.strategy); pruned and quarantined with the .pt
    quarantine/                  files that are not usable checkpoints of this run, moved aside (never deleted)

Every file is written to ``NAME.tmp`` and renamed into place (:func:`toolkit.files.atomic_open`),
exports first and the ``.pt`` last, so an ``iter_N.pt`` that exists is complete and its exports exist
too. A save that fails (a full disk) removes what it wrote of that step and raises
:class:`~toolkit.files.WriteError` naming the file; the previous checkpoints are untouched. A save
from weights (model or EMA) that are not finite is refused (:class:`~toolkit.engine.step.NonFiniteError`).

Integrity: each ``.pt`` carries ``integrity = {"sha256": ..., "exports": {suffix: sha256}}``, the
SHA-256 of its own content (a canonical walk over every key, number and tensor byte, the entry itself
left out; see :func:`state_digest`) and of each export file's bytes. The hash lives inside the file
(nothing to lose or mismatch beside it) and is checked at every load: a flipped bit is a damaged
checkpoint, not silently wrong weights.

A checkpoint is *usable* by a run if it loads with ``weights_only=True``, its hash matches, its step is
the one in its name, and it belongs to the run: same task name and the same model state-dict keys and
shapes. At the start of a run (main process, under the run lock: :mod:`toolkit.engine.lock`)
:meth:`Checkpointer.resume` removes stale ``*.tmp`` files, picks the newest usable checkpoint, moves
every unusable ``iter_N.pt`` newer than it (and its exports) to ``quarantine/`` with a warning, deletes
orphaned exports (whose ``.pt`` is gone) and warns about missing or damaged exports of the chosen one.
If the folder holds unusable checkpoints and no usable one, it refuses to start again from step 0
(:class:`CheckpointError`) unless ``allow_fresh_start`` (``checkpoint.allow_fresh_start``), which
quarantines them first. Pruning keeps the newest ``keep`` *usable* checkpoints; an unusable file met
there is quarantined, never counted and never deleted.

A checkpoint holds builtins and tensors only (``torch.load(weights_only=True)`` loads it): one entry
per stateful part handed to the :class:`Checkpointer` (``model``, ``ema``, ``optimizer``,
``scheduler``, ``scaler``, ``train_step``), ``step``, ``rng`` (one entry per rank, every state as
tensors), ``data`` (the stream position that resume reads back), ``world_size``, ``config`` (the
resolved config) and ``integrity``.

Other code loads a trained run with :func:`load_trained_model` (a run folder or an ``iter_N.pt``,
EMA or raw weights) and finds exports with :func:`latest_exports`; neither needs the trainer.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from toolkit.engine.step import NonFiniteError
from toolkit.engine.strategy import sharded_dir_names, sharded_dirs
from toolkit.files import atomic_open, file_sha256, remove_stale_tmp

CKPT_RE = re.compile(r"^iter_(\d{9})\.pt$")
EXPORT_RE = re.compile(r"^iter_(\d{9})_.+\.jit$")
WEIGHTS = ("ema", "model")
INTEGRITY = "integrity"
QUARANTINE = "quarantine"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, is damaged or does not fit; the message names the file."""


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


# --- integrity ---------------------------------------------------------------------------------
def _digest(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            h.update(f"{type(key).__name__}:{key!r}=".encode())
            _digest(h, obj[key])
    elif isinstance(obj, (list, tuple)):  # one tag: a tuple may come back from a load as a list
        h.update(f"L{len(obj)};".encode())
        for item in obj:
            _digest(h, item)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def state_digest(state: dict) -> str:
    """SHA-256 (hex) of a checkpoint's content: every key, number, string, and each tensor's dtype,
    shape and bytes, in a canonical order; the ``integrity`` entry is left out. The same before
    ``torch.save`` and after ``torch.load``."""
    h = hashlib.sha256()
    _digest(h, {k: v for k, v in state.items() if k != INTEGRITY})
    return h.hexdigest()


def non_finite_entries(state: dict, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in a (nested) state dict holding a NaN or an infinity."""
    bad = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            bad.extend(non_finite_entries(value, name + "."))
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def _shapes(state_dict: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}



def _warn(msg: str) -> None:
    print(f"[checkpoint] warning: {msg}", file=sys.stderr, flush=True)


class Checkpointer:
    """Save, verify, list, prune, quarantine, resume and export the checkpoints of one run folder.

    The trainer hands it the stateful parts once; the checkpointer decides when to save
    (:meth:`due`), what goes into the file, which files are usable, and how resume restores it.

    Args:
        directory: ``RUN/checkpoints``.
        keep: how many of the newest usable checkpoints to keep (>= 1).
        every: save every this many steps (0 = only at the end and on stop requests).
        parts: name -> object with ``state_dict``/``load_state_dict`` (None values are saved as ``{}``).
            ``parts["model"]`` (if given) defines which checkpoints belong to the run (keys and shapes).
        exporter: returns the modules to script at every save (suffix -> module); None = no exports.
        accelerator: gathers RNG states of every rank, broadcasts the resume decision of the main
            process and synchronises the ranks around a save (None: one process).
        config: the resolved run config (plain dict) stored in every checkpoint; its ``task.name``
            defines, with the model, which checkpoints belong to the run.
        allow_fresh_start: with unusable checkpoints and no usable one, quarantine them and start from
            step 0 instead of refusing.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, every: int = 0, parts: dict[str, Stateful | None] | None = None,
                 exporter: Callable[[], dict[str, nn.Module]] | None = None, accelerator=None, config: dict | None = None,
                 allow_fresh_start: bool = False):
        self.dir = Path(directory)
        self.keep = max(1, keep)
        self.every = every
        self.parts = dict(parts or {})
        self.exporter = exporter
        self.accelerator = accelerator
        self.config = config or {}
        self.allow_fresh_start = allow_fresh_start
        self.is_main = accelerator is None or accelerator.is_main_process
        self.task_name = (self.config.get("task") or {}).get("name")
        model = self.parts.get("model")
        self.model_shapes = _shapes(model.state_dict()) if model is not None else None
        self._verified: dict[str, tuple[int, int]] = {}  # usable checkpoints seen: name -> (size, mtime_ns)
        self.last_path: Path | None = None  # the newest checkpoint this run resumed from or wrote

    # --- layout --------------------------------------------------------------------------------
    def path(self, step: int) -> Path:
        return self.dir / f"iter_{step:09d}.pt"

    def export_path(self, step: int, suffix: str) -> Path:
        return self.dir / f"iter_{step:09d}_{suffix}.jit"

    def export_files(self, step: int) -> list[Path]:
        """The export files of step ``step`` present in the folder."""
        return sorted(self.dir.glob(f"iter_{step:09d}_*.jit"))

    def companions(self, step: int) -> list[Path]:
        """Exports of step ``step`` and (``train.strategy=deepspeed``) its sharded-state folder
        ``iter_N_zero/`` (:mod:`toolkit.engine.strategy`): what goes with ``iter_N.pt`` when it is pruned
        or quarantined."""
        folders = [self.dir / name for name in sharded_dir_names(step)]
        return self.export_files(step) + [f for f in folders if f.is_dir()]

    def list(self) -> list[tuple[int, Path]]:
        """Checkpoint files (``iter_N.pt``, usable or not) as (step, path), oldest first."""
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

        Raises:
            NonFiniteError: on every rank, if the model or EMA weights hold a NaN or an infinity
                (nothing is written; the weights are the same on every rank).
            WriteError: on the main process, if the filesystem refuses a file (names it); what this
                save wrote is removed, earlier checkpoints are untouched.
        """
        from accelerate.utils import gather_object

        bad = [f"{name}.{key}" for name in ("model", "ema") if self.parts.get(name) is not None
               for key in non_finite_entries(self.parts[name].state_dict())]
        if bad:
            raise NonFiniteError(f"refusing to write {self.path(step)}: non-finite weights in {bad[0]}"
                                 + (f" and {len(bad) - 1} more tensors" if len(bad) > 1 else "")
                                 + (f"; last finite checkpoint: {self.last_path}" if self.last_path else ""))
        rngs = gather_object([rng_state()]) if self.accelerator is not None else [rng_state()]
        path = None
        if self.is_main:
            state = {name: (part.state_dict() if part is not None else {}) for name, part in self.parts.items()}
            state.update({"step": step, "rng": {str(rank): s for rank, s in enumerate(rngs)}, "data": dict(data or {}),
                          "world_size": len(rngs), "config": self.config})
            exports = script_modules(self.exporter()) if self.exporter is not None else {}
            path = self.write(step, state, exports)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        self.last_path = self.path(step)
        return path

    def write(self, step: int, state: dict, exports: dict[str, torch.jit.ScriptModule] | None = None) -> Path:
        """Write the exports, then the state with its ``integrity`` entry, then prune. Returns the ``.pt`` path.

        Raises:
            WriteError: if a file cannot be written (this step's files are removed again).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(step)
        hashes = {}
        try:
            for suffix, module in (exports or {}).items():
                buf = io.BytesIO()
                torch.jit.save(module, buf)
                hashes[suffix] = hashlib.sha256(buf.getbuffer()).hexdigest()
                with atomic_open(self.export_path(step, suffix)) as f:
                    f.write(buf.getbuffer())
            state = {**state, INTEGRITY: {"sha256": state_digest(state), "exports": hashes}}
            with atomic_open(path) as f:
                torch.save(state, f)
        except BaseException:
            if not path.exists():  # no partial set of files under final names
                for suffix in hashes:
                    self.export_path(step, suffix).unlink(missing_ok=True)
            raise
        self._remember(path)
        self.last_path = path
        self.prune()
        return path

    def prune(self) -> None:
        """Keep the newest ``keep`` usable checkpoints (with their exports), delete older usable ones;
        quarantine the unusable files met on the way (never counted, never deleted)."""
        usable = [(step, path) for step, path in self.list() if self._is_usable(path)]
        for step, path in usable[: max(0, len(usable) - self.keep)]:
            path.unlink(missing_ok=True)
            self._verified.pop(path.name, None)
            for extra in self.companions(step):
                shutil.rmtree(extra, ignore_errors=True) if extra.is_dir() else extra.unlink(missing_ok=True)

    # --- verification ------------------------------------------------------------------------------
    @staticmethod
    def load(path: str | os.PathLike) -> dict:
        """Load one checkpoint on the CPU with ``weights_only=True`` and check its content hash.

        Raises:
            CheckpointError: naming the file if it is missing, truncated, damaged (hash mismatch) or not
                a toolkit checkpoint.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise CheckpointError(f"checkpoint '{path}' does not exist") from exc
        except Exception as exc:  # truncated zip, pickle errors, ...
            raise CheckpointError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc})") from exc
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            raise CheckpointError(f"'{path}' is not a toolkit checkpoint (expected keys 'model' and 'step')")
        recorded = (state.get(INTEGRITY) or {}).get("sha256")
        if recorded is not None and recorded != state_digest(state):
            raise CheckpointError(f"checkpoint '{path}' is damaged: its content does not match the SHA-256 "
                                  "recorded when it was written")
        return state

    def inspect(self, path: Path) -> tuple[dict | None, str]:
        """``(state, "")`` if ``path`` is a usable checkpoint of this run, else ``(None, why not)``."""
        try:
            state = self.load(path)
        except CheckpointError as exc:
            return None, str(exc)
        m = CKPT_RE.match(path.name)
        if m and int(state["step"]) != int(m.group(1)):
            return None, f"'{path}' holds step {state['step']}, not the step in its name"
        task = (state.get("config") or {}).get("task", {}).get("name")
        if self.task_name and task != self.task_name:
            return None, f"'{path}' belongs to task {task!r}, not this run's {self.task_name!r}"
        if self.model_shapes is not None:
            theirs = _shapes(state["model"])
            if theirs != self.model_shapes:
                diff = sorted(set(theirs.items()) ^ set(self.model_shapes.items()))
                return None, (f"'{path}' holds another model (keys/shapes differ from this run's, "
                              f"e.g. {diff[0][0]!r})")
        return state, ""

    def _remember(self, path: Path) -> None:
        st = path.stat()
        self._verified[path.name] = (st.st_size, st.st_mtime_ns)

    def _is_usable(self, path: Path) -> bool:
        """Usable? Each file is inspected once (again if its size or mtime changes); an unusable one is
        quarantined."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        if self._verified.get(path.name) == (st.st_size, st.st_mtime_ns):
            return True
        _state, why = self.inspect(path)
        if why:
            self.quarantine(path, why)
            return False
        self._remember(path)
        return True

    def quarantine(self, path: Path, why: str) -> Path:
        """Move ``path`` (and its exports) to ``checkpoints/quarantine/`` with a warning; returns the new path."""
        qdir = self.dir / QUARANTINE
        qdir.mkdir(exist_ok=True)
        m = CKPT_RE.match(path.name)
        files = [path] + (self.companions(int(m.group(1))) if m else [])
        n = 0
        while any((qdir / (f.name + (f".{n}" if n else ""))).exists() for f in files):
            n += 1
        for f in files:
            os.replace(f, qdir / (f.name + (f".{n}" if n else "")))
        self._verified.pop(path.name, None)
        _warn(f"{why}: moved {path.name}{' and its exports' if len(files) > 1 else ''} to {qdir}/ "
              "(not counted, not deleted)")
        return qdir / (path.name + (f".{n}" if n else ""))

    # --- loading -------------------------------------------------------------------------------
    def load_latest(self) -> tuple[dict, Path] | None:
        """The newest usable checkpoint, or None if there is none; the others are reported and skipped
        (nothing is moved)."""
        for _step, path in reversed(self.list()):
            state, why = self.inspect(path)
            if state is not None:
                return state, path
            print(f"[checkpoint] {why}; trying the previous one", file=sys.stderr)
        return None

    def _choose(self) -> tuple[tuple[dict, Path] | None, str]:
        """The main process's start-up pass (see the module docstring): ``((state, path) or None, refusal)``."""
        for tmp in remove_stale_tmp(self.dir):
            _warn(f"removed {tmp.name}, left by an interrupted write")
        chosen, unusable = None, []
        for _step, path in reversed(self.list()):
            state, why = self.inspect(path)
            if state is None:
                unusable.append((path, why))
                continue
            chosen = (state, path)
            self._remember(path)
            break
        if chosen is None and unusable and not self.allow_fresh_start:
            listing = "; ".join(why for _, why in unusable[:3])
            listing += f"; and {len(unusable) - 3} more" if len(unusable) > 3 else ""
            return None, (f"{self.dir} holds {len(unusable)} checkpoint(s) this run cannot use and none it can "
                          f"({listing}): refusing to start again from step 0; set checkpoint.allow_fresh_start=true "
                          f"to move them to {self.dir / QUARANTINE}/ and start from step 0")
        for path, why in unusable:
            self.quarantine(path, why + (f"; resuming from {chosen[1].name}" if chosen else "; starting from step 0"))
        steps = {step for step, _ in self.list()}
        for p in sorted(self.dir.glob("iter_*.jit")) if self.dir.is_dir() else []:
            if (m := EXPORT_RE.match(p.name)) and int(m.group(1)) not in steps:
                p.unlink()
                _warn(f"removed orphaned export {p.name} (its checkpoint is gone)")
        for step, folder in list(sharded_dirs(self.dir)):  # sharded state without its .pt, or a stale .tmp
            if step is None or step not in steps:
                shutil.rmtree(folder, ignore_errors=True)
                _warn(f"removed {folder.name}/ (sharded DeepSpeed/FSDP state of an interrupted or removed checkpoint)")
        if chosen is not None:
            self._check_exports(*chosen)
        return chosen, ""

    def _check_exports(self, state: dict, path: Path) -> None:
        """Warn about exports of ``state`` that are missing or do not match their recorded hash."""
        step = int(state["step"])
        recorded = (state.get(INTEGRITY) or {}).get("exports") or {}
        missing = [self.export_path(step, s).name for s in recorded if not self.export_path(step, s).exists()]
        damaged = [self.export_path(step, s).name for s, h in recorded.items()
                   if self.export_path(step, s).exists() and file_sha256(self.export_path(step, s)) != h]
        if missing:
            _warn(f"{path.name}: its exports are missing: {', '.join(missing)}")
        if damaged:
            _warn(f"{path.name}: its exports are damaged (SHA-256 mismatch): {', '.join(damaged)}")

    def resume(self, rank: int = 0, world_size: int = 1) -> Resumed | None:
        """Load the newest usable checkpoint into the parts; restore this rank's RNG if the world size
        is unchanged. Returns None if the run has none (a fresh start).

        The main process decides (and tidies the folder, see the module docstring); the other ranks load
        the checkpoint it chose.

        Raises:
            CheckpointError: on every rank, if the folder holds only unusable checkpoints (and
                ``allow_fresh_start`` is off), or if the checkpoint does not fit the parts (names the file).
        """
        chosen, refusal = None, ""
        if self.is_main:
            try:
                chosen, refusal = self._choose()
            except Exception as exc:  # noqa: BLE001 - told to every rank, so none waits forever
                refusal = f"cannot prepare {self.dir}: {type(exc).__name__}: {exc}"
        decision = [str(chosen[1]) if chosen else None, refusal]
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            decision = broadcast_object_list(decision, from_process=0)
        if decision[1]:
            raise CheckpointError(decision[1])
        if decision[0] is None:
            return None
        path = Path(decision[0])
        state = chosen[0] if chosen else self.load(path)
        del chosen
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
        self.last_path = path
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
    """(state dict, resolved config dict, checkpoint path, EMA used) of a run folder's newest checkpoint
    that loads and matches its content hash (damaged newer ones are reported and skipped), or of an ``iter_N.pt``.

    Args:
        weights: ``ema`` (the EMA weights when the checkpoint has them, else the model's) or ``model``.

    Raises:
        ValueError: bad ``weights``; FileNotFoundError: no checkpoint; CheckpointError: unreadable or damaged.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    path = checkpoint_path(source)
    found = Checkpointer(path.parent).load_latest() if Path(source).is_dir() else None
    state, path = found if found is not None else (Checkpointer.load(path), path)
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
