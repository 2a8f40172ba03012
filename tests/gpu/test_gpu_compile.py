"""torch.compile on CUDA (inductor): the compiled tiny tokenizer computes what eager computes, and the
engine's ``train.compile=model`` trains (when the engine has it). In their own file, run last by
scripts/gpu-check: compiling is the slowest part of the suite (tens of seconds per graph)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import REPO
from gpu_support import CONFIG, CUDA_ONLY, DEVICE, GPU, config_accepts, cuda_overrides, logged, range_shards, fresh_accelerate_state  # noqa: F401
from toolkit.config import load_config
from toolkit.engine.trainer import Trainer

pytestmark = GPU


@pytest.fixture
def no_tf32():
    """fp32 arithmetic on both sides (TF32 convolutions would pick kernels per graph and differ by ~1e-3)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@CUDA_ONLY
def test_torch_compile_on_cuda_matches_eager(range_shards, no_tf32):
    """Inductor-compiled forward and backward of the tiny tokenizer equal eager within float32 rounding
    (TF32 off on both sides): the loss, the whole gradient and every parameter's gradient to 1e-3 relative
    L2. A parameter's gradient is compared to its own size plus 1e-6 of the largest one: the biases of
    convolutions followed by a GroupNorm have a gradient that is zero but for rounding (on an H200: norm
    3.6e-9 eager, 5.9e-9 apart, against gradients of order 1), where relative error means nothing."""
    from toolkit.gpu_bench import collate, range_sample
    from toolkit.tasks import build_task

    cfg = load_config(CONFIG, cuda_overrides(range_shards, REPO / "runs" / "unused"))
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model().to(DEVICE)
    rng = np.random.default_rng(1)
    batch = collate([task.decode_train(range_sample(rng, f"k{i}", cols=256), rng) for i in range(4)], 4,
                    torch.device(DEVICE))

    def loss_and_grads(m):
        model.zero_grad(set_to_none=True)
        loss = task.losses(m, batch).total()
        loss.backward()
        return loss.detach(), [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]

    eager_loss, eager_grads = loss_and_grads(model)
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model))
    assert torch.isfinite(compiled_loss)
    assert abs(compiled_loss - eager_loss) <= 1e-3 * abs(eager_loss)
    assert len(compiled_grads) == len(eager_grads)
    whole_c, whole_e = torch.cat([g.flatten() for g in compiled_grads]), torch.cat([g.flatten() for g in eager_grads])
    assert (whole_c - whole_e).norm() <= 1e-3 * whole_e.norm()
    largest = max(g.norm() for g in eager_grads)
    names = [n for n, p in model.named_parameters() if p.grad is not None]
    for name, g_c, g_e in zip(names, compiled_grads, eager_grads):
        gap = (g_c - g_e).norm()
        assert gap <= 1e-3 * g_e.norm() + 1e-6 * largest, f"{name}: {gap:.3g} apart, eager norm {g_e.norm():.3g}"


def test_engine_train_compile_model_on_cuda(range_shards, tmp_path):
    """``train.compile=model`` (when the engine has it) trains on CUDA and logs finite losses."""
    if DEVICE != "cuda":
        pytest.skip("inductor on CPU needs a C++ toolchain and minutes: CUDA only")
    problem = config_accepts(["train.compile=model"])
    if problem:
        pytest.skip(f"train.compile=model is not accepted by the config: {problem}")
    run = tmp_path / "run"
    values = {"train.compile": "model", "train.max_steps": 6, "train.precision": "bf16", "log.every": 2,
              "checkpoint.every": 0, "eval.every": 0, "log.image_every": 0, "data.val": "", "checkpoint.export_jit": False}
    assert Trainer(load_config(CONFIG, cuda_overrides(range_shards, run, **values))).fit()["status"] == "finished"
    assert all(math.isfinite(v) for v in logged(run).values())
