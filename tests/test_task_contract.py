"""One contract test over every registered task (as timm's ``tests/test_models.py`` runs every model).

For each task: its own tiny example (``Task.example``: a config and raw shard samples, upstream runs
written as real checkpoints) goes through every hook the engine calls: decode (train and eval),
collate, losses and a backward pass, the optimizer-step hook, evaluation sums and gathered features ->
metrics, visuals and whole-evaluation images, then the exports are scripted, saved, and loaded and run
in a fresh Python process that never imports this package, matching the eager modules. A new task is
covered by registering it in ``toolkit.tasks.TASKS``.
"""

import json
import math
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from conftest import run_cli
from toolkit.config import load_config
from toolkit.engine.checkpoint import script_modules
from toolkit.tasks import TASKS, build_task, family_of, get_task_class


def _overrides(name: str, task: dict) -> list[str]:
    return [f"task.name={name}"] + [f"task.{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in task.items()]


def _is_image(img) -> bool:
    return img.ndim == 3 and img.shape[0] == 3 and bool(torch.isfinite(img).all()) and img.min() >= 0 and img.max() <= 1


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_honours_the_engine_contract(name, tmp_path):
    cls = get_task_class(name)
    assert cls.name == name and family_of(name)
    task_overrides, samples = cls.example(tmp_path, np.random.default_rng(0))
    assert len(samples) >= 2
    cfg = load_config(None, _overrides(name, task_overrides) + [f"run.dir={tmp_path / 'run'}"])
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model()
    assert task.title(dict(vars(cfg.task))), "a report title"

    # decode -> collate (only the members the task declares are given to it)
    rng = np.random.default_rng(1)
    keep = lambda s: {k: v for k, v in s.items() if task.shard_keys is None or k in task.shard_keys or k.startswith("__")}
    train_batch = default_collate([task.decode_train(keep(s), rng) for s in samples])
    eval_batch = default_collate([task.decode_eval(keep(s), rng) for s in samples])

    # losses: finite scalars; their sum reaches some trainable parameter
    model.train()
    out = task.losses(model, train_batch)
    assert out.losses and all(v.ndim == 0 and torch.isfinite(v) for v in out.losses.values()), out.losses
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.logs.values()), out.logs
    out.total().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    task.after_optimizer_step(model)

    # evaluation: sums and per-sample features -> finite metrics; whole-evaluation images
    model.eval()
    with torch.no_grad():
        ev = task.evaluate_batch(model, eval_batch)
        assert ev.sums or ev.features
        assert all(v.ndim == 0 for v in ev.sums.values())
        assert all(len(v) == len(samples) for v in ev.features.values()), "features: one row per sample"
        sums = {k: float(v) for k, v in ev.sums.items()}
        metrics = task.metrics(sums, {k: v.float() for k, v in ev.features.items()})
        assert metrics and all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
        images = {**task.visuals(model, eval_batch), **task.eval_images(sums, ev.features)}
    assert all(_is_image(img) for img in images.values()), {k: tuple(v.shape) for k, v in images.items()}
    assert all(isinstance(v, float) for v in task.info(model).values())

    # exports: scripted, saved, loaded and run in a fresh process without this package, equal to eager
    exports = task.exports(model)
    inputs = task.export_inputs(eval_batch)
    assert exports and set(inputs) == set(exports), (sorted(exports), sorted(inputs))
    io = {}
    for suffix, module in script_modules(exports).items():
        torch.jit.save(module, str(tmp_path / f"{suffix}.jit"))
        with torch.no_grad():
            io[suffix] = {"inputs": [x.float() for x in inputs[suffix]], "expected": exports[suffix].eval()(*inputs[suffix])}
    torch.save(io, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        io = torch.load({str(tmp_path / 'io.pt')!r})
        for suffix, d in io.items():
            out = torch.jit.load({str(tmp_path)!r} + "/" + suffix + ".jit")(*d["inputs"])
            assert out.shape == d["expected"].shape, suffix
            err = (out - d["expected"]).abs().max().item()
            assert err <= 1e-4 * (1 + d["expected"].abs().max().item()), (suffix, err)
        assert "toolkit" not in sys.modules
        print("ok", sorted(io))
    """)
    res = run_cli([sys.executable, "-c", script], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"ok {sorted(exports)}" in res.stdout


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_trains_evaluates_and_exports_in_the_engine(name, tmp_path):
    """The same example, written as a real tar shard, through the real Trainer: 2 steps, validation of
    the model and its EMA, a checkpoint with the task's exports."""
    import webdataset as wds

    from toolkit.engine.trainer import Trainer

    cls = get_task_class(name)
    task_overrides, samples = cls.example(tmp_path, np.random.default_rng(0))
    shard = tmp_path / "example-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for sample in samples:
            sink.write(sample)
    engine = {"data.train": shard, "data.val": shard, "data.batch_size": 2, "data.num_workers": 0,
              "data.shuffle_buffer": 1, "train.max_steps": 2, "checkpoint.every": 2, "eval.every": 2,
              "log.every": 1, "log.image_every": 2, "log.progress": False, "optim.warmup_steps": 1,
              "run.dir": tmp_path / "run"}
    cfg = load_config(None, _overrides(name, task_overrides) + [f"{k}={v}" for k, v in engine.items()])
    summary = Trainer(cfg).fit()
    assert summary["status"] == "finished" and summary["step"] == 2
    assert summary["last_eval"] and all(k.startswith(("val/", "val_ema/")) for k in summary["last_eval"])
    task = build_task(cfg.task)
    for suffix in task.exports(task.build_model()):
        assert (tmp_path / "run" / "checkpoints" / f"iter_000000002_{suffix}.jit").exists(), suffix
