"""Task plug-ins. A config picks one by ``task.name``; see :class:`toolkit.tasks.base.Task`.

Tasks register here by name -> ``module:Class`` and are imported lazily, so a task's dependencies
are only needed when it runs. A task's *family* is the folder it lives in (``toolkit/tasks/<family>/``);
a family may add its own parts of the command-line tools as modules named after them
(``evaluate.py``, ``reconstruct.py``), found by :func:`family_module`. See ``toolkit/tasks/README.md``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .base import EvalOutput, StepOutput, Task

TASKS: dict[str, str] = {
    "lidar_tokenizer": "toolkit.tasks.lidar_tokenizer.task:LidarTokenizerTask",
    "fusion": "toolkit.tasks.cilp.fusion:FusionTask",
    "cilp": "toolkit.tasks.cilp.contrastive:CILPTask",
    "cilp_projector": "toolkit.tasks.cilp.projector:CILPProjectorTask",
    "rgb2lidar": "toolkit.tasks.cilp.rgb2lidar:RGB2LiDARTask",
    "bev": "toolkit.tasks.bev.task:BEVTask",
    "token_fusion": "toolkit.tasks.token_fusion.task:TokenFusionTask",
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


def family_of(name: str) -> str:
    """The family (folder under ``toolkit/tasks/``) of a registered task, e.g. ``fusion`` -> ``cilp``.

    Raises:
        KeyError: if no task has that name.
    """
    if name not in TASKS:
        raise KeyError(name)
    return TASKS[name].split(":")[0].split(".")[2]


def family_module(name: str, part: str) -> ModuleType | None:
    """The family's module ``part`` (e.g. ``evaluate``) for task ``name``, or None if the family has none."""
    qualified = f"toolkit.tasks.{family_of(name)}.{part}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name == qualified:
            return None
        raise


__all__ = ["Task", "StepOutput", "EvalOutput", "TASKS", "task_names", "get_task_class", "build_task", "family_of",
           "family_module"]
