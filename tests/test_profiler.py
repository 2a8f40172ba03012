"""The ``profile:`` section: torch.profiler traces of training steps under RUN/profile/, and the
bench's FLOP and MFU helpers (toolkit.engine.flops)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO, tiny_overrides
from toolkit.config import ConfigError, load_config

CONFIG = REPO / "configs" / "lidar_tokenizer.yaml"


def test_profiled_run_writes_one_readable_trace_of_the_active_steps(lidar_shards, tmp_path):
    """wait 1, warmup 1, active 2: one Chrome trace (JSON) with the two recorded steps' events."""
    from toolkit.engine.trainer import Trainer

    run = tmp_path / "run"
    overrides = tiny_overrides(lidar_shards, run, **{
        "train.max_steps": 5, "eval.every": 0, "data.val": "", "log.image_every": 0, "checkpoint.every": 0,
        "checkpoint.export_jit": False, "profile.enabled": True, "profile.wait": 1, "profile.warmup": 1,
        "profile.active": 2, "profile.record_shapes": True})
    assert Trainer(load_config(CONFIG, overrides)).fit()["status"] == "finished"
    traces = sorted((run / "profile").glob("rank0.*.pt.trace.json"))
    assert len(traces) == 1, sorted((run / "profile").iterdir())
    trace = json.loads(traces[0].read_text())
    events = trace["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#2", "ProfilerStep#3"}, steps
    assert any(e.get("name", "").startswith("aten::convolution") for e in events)


def test_profile_section_is_validated():
    with pytest.raises(ConfigError, match="profile.active must be >= 1"):
        load_config(CONFIG, ["profile.active=0"])
    with pytest.raises(ConfigError, match="profile.wait must be >= 0"):
        load_config(CONFIG, ["profile.wait=-1"])


def test_flops_of_a_linear_layer_forward_and_backward_and_mfu():
    """FlopCounterMode counts 2 FLOPs per multiply-add: forward 2*B*I*O, backward twice that with
    the input's gradient (once without)."""
    from toolkit.engine.flops import flops_per_step, mfu, peak_tflops

    layer = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=True)
    assert flops_per_step(lambda: layer(x)) == 2 * 8 * 64 * 32
    assert flops_per_step(lambda: layer(x).sum().backward()) == 3 * 2 * 8 * 64 * 32
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "fp32") == 19.5
    assert peak_tflops("cpu", "fp32") is None
    assert mfu(494.5e12, 1.0, 989.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mfu(1.0, 0.0, 989.0)


def test_bench_engine_figures_give_flops_mfu_and_the_checkpointing_memory_ratio(lidar_shards, tmp_path):
    """The bench's per-step figures on the tiny tokenizer: FLOPs of forward + backward, MFU only with a
    peak on a CPU, and a lower checkpointed peak of torch allocations."""
    from toolkit.bench import engine_figures

    cfg = load_config(CONFIG, tiny_overrides(lidar_shards, tmp_path / "unused"))
    out = engine_figures(cfg, step_time_s=0.5, checkpointing="blocks", peak=1.0)
    assert out["flops_per_step"] > 1e6
    assert out["achieved_tflops"] == pytest.approx(out["flops_per_step"] / 0.5 / 1e12, abs=1e-6)  # printed rounded
    assert out["mfu"] == pytest.approx(out["flops_per_step"] / 0.5 / 1e12, abs=1e-6)
    assert out["checkpointed_blocks"] == 13
    assert 0 < out["checkpointed_vs_plain_memory"] < 0.9
    assert "mfu" not in engine_figures(cfg, step_time_s=0.5, checkpointing="false")


def test_interleaved_compile_ratio_alternates_eager_and_compiled_rounds(lidar_shards, tmp_path):
    """The load-robust compile ratio: 3 rounds of eager then compiled steps (aot_eager: traced, no code
    generation, so the ratio is near 1), the median between the rounds' min and max."""
    from toolkit.bench import interleaved_compile_ratio

    cfg = load_config(CONFIG, tiny_overrides(lidar_shards, tmp_path / "unused", **{"train.compile_backend": "aot_eager"}))
    out = interleaved_compile_ratio(cfg, "model", rounds=3, steps=1)
    assert out["interleaved_rounds"] == 3 and out["interleaved_compile_s"] > 0
    assert 0 < out["compiled_vs_eager_interleaved_min"] <= out["compiled_vs_eager_interleaved"] \
        <= out["compiled_vs_eager_interleaved_max"]
