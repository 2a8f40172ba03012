"""Training on one CUDA GPU: device selection, bf16 and fp16 (GradScaler) against fp32, no host
synchronisation inside a step (``torch.cuda.set_sync_debug_mode("error")``), exact resume
(torch.compile: test_gpu_compile.py).

Skipped without CUDA (gpu_support.SKIP_REASON). Each test trains the tiny tokenizer preset of
tests/conftest.py on synthetic range-map shards for a few steps: seconds on a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from gpu_support import CONFIG, CUDA_ONLY, DEVICE, GPU, cuda_overrides, final_weights, logged, range_shards, fresh_accelerate_state  # noqa: F401
from toolkit.config import load_config
from toolkit.engine.step import TrainStep
from toolkit.engine.trainer import Trainer

pytestmark = GPU

#: largest relative difference from the fp32 loss at any logged step of a 20-step run (bf16 keeps 8
#: mantissa bits, fp16 11; the loss is a mean over ~16k pixels, so rounding averages out; a wrong cast or
#: an unscaled fp16 gradient shows as a loss off by far more than this, or as a loss that does not fall)
TOLERANCE = {"bf16": 0.05, "fp16": 0.02}
STEPS = 20


def _fit(shards, run, **extra) -> dict:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    values = {"train.max_steps": STEPS, "log.every": 2, "checkpoint.every": 0, "eval.every": 0, "log.image_every": 0,
              "data.val": "", "checkpoint.export_jit": False, **extra}
    return Trainer(load_config(CONFIG, cuda_overrides(shards, run, **values))).fit()


@pytest.fixture(scope="module")
def fp32_run(range_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("fp32") / "run"
    assert _fit(range_shards, run, **{"train.precision": "fp32"})["status"] == "finished"
    return run


def test_auto_device_selects_cuda_and_the_model_trains_there(range_shards, tmp_path):
    from toolkit.engine.device import check_precision, select_device

    assert select_device("auto") == DEVICE
    if DEVICE == "cuda":
        assert check_precision("cuda", "fp16") == "fp16" and check_precision("cuda", "bf16") == "bf16"
    trainer = Trainer(load_config(CONFIG, cuda_overrides(range_shards, tmp_path / "run", **{
        "train.device": "auto", "train.max_steps": 2, "eval.every": 0, "log.image_every": 0})))
    assert trainer.device.type == DEVICE
    assert all(p.device.type == DEVICE for p in trainer.model.parameters())
    assert trainer.fit()["status"] == "finished"


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=CUDA_ONLY)])
def test_mixed_precision_loss_curve_follows_fp32(range_shards, fp32_run, tmp_path, precision):
    run = tmp_path / precision
    assert _fit(range_shards, run, **{"train.precision": precision})["status"] == "finished"
    ref, got = logged(fp32_run), logged(run)
    curves = (f"fp32 {[round(ref[s], 4) for s in sorted(ref)]}, {precision} {[round(got[s], 4) for s in sorted(got)]}, "
              f"skipped steps {logged(run, 'train/skipped_steps')}, loss scale {logged(run, 'train/loss_scale')}")
    assert sorted(got) == sorted(ref) == list(range(2, STEPS + 1, 2)), curves
    worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in ref)
    assert worst <= TOLERANCE[precision], f"{precision} loss off fp32 by {worst:.3%} (tolerance {TOLERANCE[precision]:.0%}): {curves}"
    assert got[STEPS] < got[2], f"the loss did not fall: {curves}"
    if precision == "fp16":  # dynamic loss scaling ran: its scale is logged, finite and positive
        scales = logged(run, "train/loss_scale")
        assert scales and all(math.isfinite(v) and v > 0 for v in scales.values())


class _StrictStep(TrainStep):
    """A TrainStep during whose calls any CUDA synchronisation raises (``sync`` itself may synchronise)."""

    calls = 0

    def __call__(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return super().__call__(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            _StrictStep.calls += 1


@CUDA_ONLY
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sync_debug_mode_error_over_20_steps_no_host_sync_in_a_step(range_shards, tmp_path, precision):
    """20 optimizer steps with ``set_sync_debug_mode("error")`` around every step: a ``.item()``, a
    blocking copy or a ``cudaStreamSynchronize`` in the step would raise. (fp16 is the documented
    exception: the GradScaler reads its ``found_inf`` on the host every step.)"""
    values = {"train.max_steps": STEPS, "train.precision": precision, "log.every": 10_000, "checkpoint.every": 0,
              "checkpoint.export_jit": False, "eval.every": 0, "log.image_every": 0, "data.val": ""}
    trainer = Trainer(load_config(CONFIG, cuda_overrides(range_shards, tmp_path / "run", **values)))
    assert trainer.train_step.device_skip, "the non-finite guard is not on the device (fused AdamW expected)"
    trainer.train_step.__class__ = _StrictStep
    _StrictStep.calls = 0
    summary = trainer.fit()
    assert summary["status"] == "finished" and summary["step"] == STEPS
    assert _StrictStep.calls == STEPS


def test_resume_on_cuda_ends_like_a_straight_run(range_shards, tmp_path):
    """Two straight 6-step runs (checkpoints at 3 and 6); a third run folder given only the first run's step-3
    checkpoint resumes from it to step 6. Its weights differ from the straight run's by no more than the two
    straight runs differ from each other (0 when CUDA's kernels are deterministic: then bit for bit)."""
    from accelerate.state import AcceleratorState

    def fit(run):
        AcceleratorState._reset_state(reset_partial_state=True)
        values = {"train.max_steps": 6, "checkpoint.every": 3, "eval.every": 0, "log.image_every": 0,
                  "checkpoint.export_jit": False}
        return Trainer(load_config(CONFIG, cuda_overrides(range_shards, run, **values))).fit()

    fit(tmp_path / "a")
    fit(tmp_path / "b")
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    for f in (tmp_path / "a" / "checkpoints").glob("iter_000000003*"):
        (resumed / "checkpoints" / f.name).write_bytes(f.read_bytes())
    summary = fit(resumed)
    assert summary["resumed_from"].endswith("iter_000000003.pt") and summary["step"] == 6
    a, b, r = (final_weights(tmp_path / n, 6) for n in ("a", "b", "resumed"))

    def gap(x, y):
        return max((x[k].double() - y[k].double()).abs().max().item() for k in x if x[k].is_floating_point())

    noise, off = gap(a, b), gap(a, r)
    assert off <= 4 * noise, f"resumed run off by {off:.3g}, two straight runs by {noise:.3g}"
