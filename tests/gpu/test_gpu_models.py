"""Models on CUDA: TorchScript exports of a CUDA run load on CUDA and on the CPU and agree; the BEV network
(tiny preset of the task's contract example, camera + LiDAR) runs forward and backward under bf16 autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import REPO  # noqa: F401
from gpu_support import CONFIG, DEVICE, GPU, cuda_overrides, range_shards, fresh_accelerate_state  # noqa: F401
from toolkit.config import load_config

pytestmark = GPU


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


def test_exports_of_a_cuda_run_load_on_cuda_and_cpu_and_agree(range_shards, tmp_path):
    """Every ``iter_3_*.jit`` export of a 3-step run on the GPU loads with ``map_location`` cuda and cpu; on the
    task's export inputs the outputs agree to 1e-2 relative L2 (TF32 convolutions on the GPU)."""
    from toolkit.engine.trainer import Trainer
    from toolkit.gpu_bench import collate, range_sample
    from toolkit.tasks import build_task

    run = tmp_path / "run"
    cfg = load_config(CONFIG, cuda_overrides(range_shards, run, **{"train.max_steps": 3, "eval.every": 0,
                                                                   "log.image_every": 0, "checkpoint.every": 3}))
    assert Trainer(cfg).fit()["status"] == "finished"
    exports = sorted((run / "checkpoints").glob("iter_000000003_*.jit"))
    assert exports, "no exports written"
    task = build_task(cfg.task)
    rng = np.random.default_rng(0)
    batch = collate([task.decode_eval(range_sample(rng, f"e{i}", cols=256), rng) for i in range(2)], 2,
                    torch.device("cpu"))
    inputs = task.export_inputs(batch)
    for path in exports:
        suffix = path.stem.split("_", 2)[2]
        on_cpu = torch.jit.load(str(path), map_location="cpu")
        on_dev = torch.jit.load(str(path), map_location=DEVICE)
        args = inputs[suffix]
        out_cpu = on_cpu(*args)
        out_dev = on_dev(*(a.to(DEVICE) for a in args))
        flat_cpu = out_cpu if isinstance(out_cpu, (tuple, list)) else [out_cpu]
        flat_dev = out_dev if isinstance(out_dev, (tuple, list)) else [out_dev]
        for c, d in zip(flat_cpu, flat_dev):
            assert d.device.type == DEVICE
            assert _rel(d.cpu(), c) <= 1e-2, (path.name, _rel(d.cpu(), c))


def test_bev_tiny_forward_backward_under_bf16(tmp_path):
    """The BEV task's contract example (camera + LiDAR, tiny trunk): bf16 autocast forward and backward on the
    device; finite loss terms; every trainable parameter gets a finite gradient, the image encoder's non-zero."""
    from toolkit.gpu_bench import collate
    from toolkit.tasks import build_task
    from toolkit.tasks.bev.task import BEVTask

    overrides, samples = BEVTask.example(tmp_path, np.random.default_rng(0))
    cfg = load_config(REPO / "configs" / "bev" / "tiny.yaml", [f"task.{k}={v}".replace(" ", "") for k, v in overrides.items()])
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model().to(DEVICE)
    rng = np.random.default_rng(1)
    batch = collate([task.decode_train(s, rng) for s in samples], 3, torch.device(DEVICE))
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = task.losses(model, batch)
    for name, value in out.losses.items():
        assert torch.isfinite(value).all(), name
    total = out.total()
    assert torch.isfinite(total)
    total.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("encoder."))
