"""train.compile and train.activation_checkpointing (toolkit.engine.parallelize) on the real engine.

The compiled runs use ``train.compile_backend=aot_eager``: the same Dynamo graph capture, in-place
``nn.Module.compile`` and AOTAutograd forward/backward graphs as inductor, without its C++ code
generation (inductor takes 1.5-3 min per run on the CI's 2 cores; its speed is measured by
``python -m toolkit.bench engine``, docs/engine-features.md).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, assert_same_final_weights, tiny_overrides
from toolkit.config import ConfigError, load_config

CONFIG = REPO / "configs" / "lidar_tokenizer.yaml"
FAST = {"eval.every": 0, "data.val": "", "log.image_every": 0, "log.every": 2, "checkpoint.every": 2,
        "train.compile": "blocks", "train.compile_backend": "aot_eager", "train.activation_checkpointing": "blocks"}


def _fit(shards, run, **extra):
    from toolkit.engine.trainer import Trainer

    return Trainer(load_config(CONFIG, tiny_overrides(shards, run, **{**FAST, **extra}))).fit()


@pytest.mark.slow  # > 15 s on 2 cores: left out of make test-fast
def test_compiled_checkpointed_run_resumes_bit_identical_and_exports_load_without_toolkit(lidar_shards, tmp_path):
    """Regional compilation + activation checkpointing: 2 steps, then a new trainer resumes to 4; the
    weights equal an uninterrupted compiled run's bit for bit; the checkpoint has plain keys; the
    exports (of the compiled model's own weights: eval.ema=false) load and run in a fresh interpreter
    that cannot import toolkit."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    raw = {"eval.ema": False}
    assert _fit(lidar_shards, ref, **{"train.max_steps": 4, **raw})["status"] == "finished"
    _fit(lidar_shards, run, **{"train.max_steps": 2, **raw})
    summary = _fit(lidar_shards, run, **{"train.max_steps": 4, **raw})
    assert summary["status"] == "finished"
    assert_same_final_weights(run, ref, 4)

    state = torch.load(run / "checkpoints" / "iter_000000004.pt", weights_only=True)
    keys = [*state["model"], *(state.get("ema") or {})]
    assert keys and not [k for k in keys if "_orig_mod" in k or "checkpoint" in k]

    # example inputs from a real decoded batch, saved for the child process
    from toolkit.tasks import build_task

    cfg = load_config(CONFIG, tiny_overrides(lidar_shards, run))
    task = build_task(cfg.task)
    from toolkit.data.pipeline import train_loader

    batch = next(iter(train_loader(cfg.data.train, task.decode_train, 2, seed=0, num_workers=0, shuffle_buffer=1,
                                   keys=task.shard_keys)))
    inputs = task.export_inputs(batch)
    exports = sorted((run / "checkpoints").glob("iter_000000004_*.jit"))
    assert {p.name.split("_")[-1][:-4] for p in exports} == set(inputs)
    torch.save({k: list(v) for k, v in inputs.items()}, tmp_path / "inputs.pt")
    code = ("import sys; sys.modules['toolkit'] = None  # any import of toolkit fails\n"
            "import torch\n"
            f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r}, weights_only=True)\n"
            f"for path in {[str(p) for p in exports]!r}:\n"
            "    m = torch.jit.load(path)\n"
            "    out = m(*inputs[path.rsplit('_', 1)[1][:-4]])\n"
            "    out = out if isinstance(out, (tuple, list)) else [out]\n"
            "    assert all(torch.isfinite(o).all() for o in out if isinstance(o, torch.Tensor)), path\n"
            "print('loaded', len(inputs))\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"loaded {len(inputs)}" in res.stdout


def test_activation_checkpointing_gives_the_same_gradients_with_less_memory(lidar_shards):
    """Checkpointed blocks recompute their activations in backward: the gradients equal the plain
    model's bit for bit, and the step's peak of torch allocations is lower."""
    from toolkit.bench import _one_step_parts, step_peak_memory
    from toolkit.engine.parallelize import is_parallelized, parallelize
    from toolkit.tasks import build_task

    cfg = load_config(CONFIG, tiny_overrides(lidar_shards, REPO / "runs" / "unused", **{"data.batch_size": 4}))
    model, batch, loss_of, device = _one_step_parts(cfg)
    task = build_task(cfg.task)

    def grads():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss_of(model, batch).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_grads = grads()
    plain_peak = step_peak_memory(lambda: loss_of(model, batch).backward(), device)
    assert not is_parallelized(model)
    parallelize(model, task.blocks(model), activation_checkpointing="blocks", task_name=task.name)
    assert is_parallelized(model)
    ckpt_grads = grads()
    ckpt_peak = step_peak_memory(lambda: loss_of(model, batch).backward(), device)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name in plain_grads:
        assert torch.equal(plain_grads[name], ckpt_grads[name]), name
    assert 0 < ckpt_peak < 0.9 * plain_peak, (ckpt_peak, plain_peak)


@pytest.mark.parametrize("overrides, message", [
    (["train.compile=everything"], "train.compile='everything' is not one of"),
    (["train.activation_checkpointing=model"], "train.activation_checkpointing='model' is not one of"),
    (["train.strategy=deepspeed", "train.compile=model"], "not supported with train.strategy=deepspeed"),
])
def test_bad_compile_settings_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, overrides)


def test_compile_false_from_yaml_boolean_is_accepted():
    cfg = load_config(CONFIG, ["train.compile=false", "train.activation_checkpointing=false"])
    assert (cfg.train.compile, cfg.train.activation_checkpointing) == ("false", "false")


def test_blocks_modes_refused_for_a_task_without_blocks():
    """A task that declares no blocks cannot use the ``blocks`` modes: one clear ConfigError."""
    from toolkit.engine.parallelize import parallelize

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"train.compile=blocks: task 'plain' declares no blocks"):
        parallelize(model, [], compile="blocks", task_name="plain")
    with pytest.raises(ConfigError, match=r"train.activation_checkpointing=blocks: task 'plain' declares no blocks"):
        parallelize(model, [], activation_checkpointing="blocks", task_name="plain")
    with pytest.raises(ValueError, match="not part of the model"):
        parallelize(model, [torch.nn.Linear(2, 2)], activation_checkpointing="blocks", task_name="plain")
    assert np.isfinite(model(torch.ones(1, 2)).sum().item())
