"""Task plug-ins. A config picks one by ``task.name``; see :class:`toolkit.tasks.base.Task`.

Tasks register here by name -> ``module:Class`` and are imported lazily, so a task's dependencies
are only needed when it runs.
"""

from __future__ import annotations

import importlib

from .base import Task

TASKS: dict[str, str] = {
    "lidar_tokenizer": "toolkit.tasks.lidar_tokenizer:LidarTokenizerTask",
    "fusion": "toolkit.tasks.cilp.fusion:FusionTask",
    "cilp": "toolkit.tasks.cilp.contrastive:CILPTask",
    "cilp_projector": "toolkit.tasks.cilp.projector:CILPProjectorTask",
    "rgb2lidar": "toolkit.tasks.cilp.rgb2lidar:RGB2LiDARTask",
}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task_class(name: str) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        KeyError: if no task has that name.
    """
    if name not in TASKS:
        raise KeyError(name)
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_task(task_cfg) -> Task:
    """Instantiate the task for a task config dataclass (its ``name`` picks the class)."""
    return get_task_class(task_cfg.name)(task_cfg)


__all__ = ["Task", "TASKS", "task_names", "get_task_class", "build_task"]
