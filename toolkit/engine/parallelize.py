"""Compilation and activation checkpointing applied to a model by one function (torchtitan's
``models/*/parallelize.py`` style): the training loop does not change.

``train.activation_checkpointing: blocks`` wraps the forward of each block the task declares
(:meth:`toolkit.tasks.base.Task.blocks`) in ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``:
the block's activations are not kept for backward but recomputed from its input (memory for compute).
``train.compile: model`` compiles the whole model, ``blocks`` each declared block ("regional
compilation": repeated blocks share one compiled graph, so compile time is a fraction of the
model's), both with ``nn.Module.compile()``, which compiles in place: the module keeps its class,
parameters and ``state_dict`` keys (no ``_orig_mod.`` prefix), so checkpoints, the EMA and
exports see a plain module. Checkpointing is applied first, then compilation (as torchtitan).

Both are applied after the EMA copy is made (the EMA and the exports are plain modules).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from toolkit.config import ConfigError

COMPILE_CHOICES = ("false", "model", "blocks")
CHECKPOINTING_CHOICES = ("false", "blocks")


class CheckpointedForward:
    """A block's ``forward`` replaced by its checkpointed call (set as the instance's ``forward``).

    Args:
        forward: the block's original bound ``forward``.
    """

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():  # evaluation: nothing to save, nothing to recompute
            return self.forward(*args, **kwargs)
        return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)


def is_parallelized(model: nn.Module) -> bool:
    """True if :func:`parallelize` changed ``model`` or one of its submodules (compiled or checkpointed)."""
    return any(getattr(m, "_compiled_call_impl", None) is not None or isinstance(m.__dict__.get("forward"),
               CheckpointedForward) for m in model.modules())


def parallelize(model: nn.Module, blocks: list[nn.Module], compile: str = "false",
                activation_checkpointing: str = "false", task_name: str = "", backend: str = "inductor") -> nn.Module:
    """Apply ``train.activation_checkpointing`` then ``train.compile`` to ``model`` in place.

    Args:
        model: the plain model (its parameters are not replaced: an optimizer built on them stays valid).
        blocks: the task's declared blocks, submodules of ``model`` (:meth:`Task.blocks`).
        compile: "false" | "model" | "blocks"; activation_checkpointing: "false" | "blocks"
            (booleans from YAML are accepted: ``false`` = "false").
        task_name: for the error message.
        backend: ``torch.compile`` backend ("inductor"; "aot_eager" traces the same graphs without code
            generation: seconds instead of minutes on a CPU, no speed-up).

    Returns:
        ``model`` itself.

    Raises:
        ConfigError: an unknown mode, or a ``blocks`` mode for a task that declares no blocks.
    """
    compile, activation_checkpointing = _mode(compile), _mode(activation_checkpointing)
    if compile not in COMPILE_CHOICES:
        raise ConfigError(f"train.compile={compile!r} is not one of {list(COMPILE_CHOICES)}")
    if activation_checkpointing not in CHECKPOINTING_CHOICES:
        raise ConfigError(f"train.activation_checkpointing={activation_checkpointing!r} is not one of "
                          f"{list(CHECKPOINTING_CHOICES)}")
    for key, value in (("train.activation_checkpointing", activation_checkpointing), ("train.compile", compile)):
        if value == "blocks" and not blocks:
            raise ConfigError(f"{key}=blocks: task '{task_name}' declares no blocks (Task.blocks() is empty); "
                              f"use {key}=" + ("model" if key == "train.compile" else "false"))
    owned = {id(m) for m in model.modules()}
    if any(id(b) not in owned for b in blocks):
        raise ValueError(f"task '{task_name}': Task.blocks() returned a module that is not part of the model")
    if activation_checkpointing == "blocks":
        for block in blocks:
            block.forward = CheckpointedForward(block.forward)
    if compile == "model":
        model.compile(backend=backend)
    elif compile == "blocks":
        # blocks of one class share their forward's code: each input shape is one more compiled version
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 2 * len(blocks))
        for block in blocks:
            block.compile(backend=backend)
    return model


def _mode(value) -> str:
    """``False``/``"false"``/``"off"``/``"no"`` -> "false"; any other value as a lower-case string."""
    if value is False or value is None or str(value).lower() in ("false", "off", "no", "0", ""):
        return "false"
    return str(value).lower()
