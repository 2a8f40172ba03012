"""Trained runs of earlier CILP stages, loaded for the later ones (frozen encoders, initialisations).

Both go through :func:`toolkit.engine.checkpoint.load_trained_model`: the model is rebuilt by its own
task from the config stored in the checkpoint, so nothing here knows the checkpoint layout.
"""

from __future__ import annotations

from toolkit.engine.checkpoint import load_trained_model

from .data import CILPDataConfig
from .models import CILPModel, UnimodalClassifier


def load_cilp(source: str, weights: str = "ema") -> tuple[CILPModel, CILPDataConfig]:
    """The trained CILP model of a run (or ``iter_N.pt``) and its input settings.

    Raises:
        ValueError: if that run is not a ``cilp`` run (FileNotFoundError/CheckpointError as the loader).
    """
    trained = load_trained_model(source, weights)
    if trained.config.task.name != "cilp":
        raise ValueError(f"'{source}' is a {trained.config.task.name!r} run, not a cilp run")
    return trained.model, trained.config.task


def load_lidar_classifier(source: str, weights: str = "ema") -> tuple[UnimodalClassifier, CILPDataConfig]:
    """The trained LiDAR classifier (``fusion`` with ``mode: lidar``) of a run and its input settings.

    Raises:
        ValueError: if that run is not a LiDAR-only ``fusion`` run.
    """
    trained = load_trained_model(source, weights)
    task = trained.config.task
    if task.name != "fusion" or task.mode != "lidar":
        raise ValueError(f"'{source}' is not a LiDAR classifier (a fusion run with mode: lidar)")
    return trained.model, task
