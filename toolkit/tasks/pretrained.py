"""Weights of another run, for tasks built on earlier stages (frozen encoders, initialisations)."""

from __future__ import annotations

from pathlib import Path

import torch


def load_run(source: str, weights: str = "ema") -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, resolved config dict) of a run folder's newest checkpoint or of an ``iter_N.pt``.

    Args:
        source: a run folder (``runs/cilp``) or a checkpoint file.
        weights: ``ema`` (the EMA weights when the checkpoint has them) or ``model``.

    Raises:
        FileNotFoundError: no checkpoint there, naming ``source``; ValueError: bad ``weights``.
    """
    from toolkit.engine.checkpoint import Checkpointer

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    path = Path(source)
    if path.is_dir():
        ckpts = Checkpointer(path / "checkpoints").list()
        if not ckpts:
            raise FileNotFoundError(f"run '{source}' has no checkpoint (expected {path}/checkpoints/iter_*.pt): "
                                    "train that stage first")
        path = ckpts[-1][1]
    elif not path.is_file():
        raise FileNotFoundError(f"'{source}' is neither a run folder nor a checkpoint file")
    state = Checkpointer.load(path)
    use_ema = weights == "ema" and state.get("ema")
    return (state["ema"]["module"] if use_ema else state["model"]), state["config"]


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix.``, with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
