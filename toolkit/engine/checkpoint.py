"""Checkpoints: ``RUN/checkpoints/iter_{N:09d}.pt`` plus TorchScript exports, written atomically.

Every file is written to ``NAME.tmp`` and renamed into place, exports first and the ``.pt`` last, so
an ``iter_N.pt`` that exists is complete and its exports exist too. Resume picks the newest ``.pt``
that loads; a damaged newest one is reported and the previous one is used. Only the newest ``keep``
checkpoints (with their exports) are kept.

A checkpoint holds builtins and tensors only (``torch.load(weights_only=True)`` loads it):
``model``, ``ema``, ``optimizer``, ``scheduler``, ``scaler``, ``step``, ``rng`` (one entry per rank,
every state as tensors), ``data`` (stream position), ``world_size`` and ``config`` (the resolved config).
"""

from __future__ import annotations

import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

CKPT_RE = re.compile(r"^iter_(\d{9})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class Checkpointer:
    """Save, list, prune and load the checkpoints of one run folder.

    Args:
        directory: ``RUN/checkpoints``.
        keep: how many of the newest checkpoints to keep (>= 1).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.dir = Path(directory)
        self.keep = max(1, keep)

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

    def save(self, step: int, state: dict, exports: dict[str, torch.jit.ScriptModule] | None = None) -> Path:
        """Write the exports, then the state, then prune. Returns the ``.pt`` path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for suffix, module in (exports or {}).items():
            _atomic(self.export_path(step, suffix), lambda p, m=module: torch.jit.save(m, str(p)))
        path = self.path(step)
        _atomic(path, lambda p: torch.save(state, p))
        self.prune()
        return path

    def prune(self) -> None:
        ckpts = self.list()
        for step, path in ckpts[: max(0, len(ckpts) - self.keep)]:
            path.unlink(missing_ok=True)
            for extra in self.dir.glob(f"iter_{step:09d}_*.jit"):
                extra.unlink(missing_ok=True)

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
