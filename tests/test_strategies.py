"""``train.strategy``: DeepSpeed ZeRO 1/2/3 against DDP, with real torchrun processes (2 CPU ranks, gloo).

The runs share a module fixture (DDP, ZeRO-2 and ZeRO-3, fp32, 2 accumulation steps, 6 steps with
checkpoints at 3 and 6); the first DeepSpeed process of a machine JIT-compiles DeepSpeed's small
shared-memory op (45-65 s, cached in ``~/.cache/torch_extensions``).

Why not bit-identical to DDP: ZeRO keeps every parameter as a view of one flat row-major buffer, so
the tokenizer's channels_last convolution weights become contiguous and the convolutions take another
kernel (the step-1 loss already differs by ~1e-7 relative in fp32); and the gradients are reduced over
other bucket boundaries and their norm summed in another order. AdamW divides each gradient by its own
running RMS, so for weights whose gradient is near zero a last-bit difference moves the update by up to
``lr`` (a few of the 63k weights differ by ~1e-3 after 6 steps). Measured: losses agree to ~1e-5
relative, weights to ~3e-4 in relative L2 norm; the tests assert 1e-4 and 2e-3.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

from conftest import REPO, run_cli, tiny_overrides

pytest.importorskip("deepspeed")

from helpers.strategy_runs import CONFIG, LAST  # noqa: E402
from helpers.strategy_runs import ckpt as _ckpt, flat as _flat, losses as _losses, torchrun as _torchrun  # noqa: E402


ZERO3 = {"train.strategy": "deepspeed", "deepspeed.stage": 3, "deepspeed.param_persistence_threshold": 0}


@pytest.fixture(scope="module")
def runs(lidar_shards, tmp_path_factory):
    """DDP, ZeRO-2 and ZeRO-3 (every parameter partitioned) runs of the same config, fp32."""
    root = tmp_path_factory.mktemp("strategies")
    out = {"ddp": root / "ddp", "zero2": root / "zero2", "zero3": root / "zero3"}
    _torchrun(lidar_shards, out["ddp"])
    _torchrun(lidar_shards, out["zero2"], **{"train.strategy": "deepspeed", "deepspeed.stage": 2, "checkpoint.keep": 1})
    _torchrun(lidar_shards, out["zero3"], **ZERO3)
    out["shards"] = lidar_shards
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_zero_ends_like_ddp(runs, name):
    ddp, zero = runs["ddp"], runs[name]
    a, b = _losses(ddp), _losses(zero)
    assert sorted(a) == sorted(b) == [2, 4, 6]
    for step in a:
        assert math.isclose(a[step], b[step], rel_tol=1e-4), (step, a[step], b[step])
    # the gradient norm before clipping (DeepSpeed's own): a gradient scaled wrongly shows here, not in
    # AdamW's (scale-invariant) updates
    na, nb = _losses(ddp, "train/grad_norm"), _losses(zero, "train/grad_norm")
    for step in na:
        assert math.isclose(na[step], nb[step], rel_tol=1e-3), (step, na[step], nb[step])
    sa, sb = _ckpt(ddp), _ckpt(zero)
    assert sb["model"].keys() == sa["model"].keys()
    for part in ("model", "ema"):
        wa = _flat(sa[part] if part == "model" else sa[part]["module"])
        wb = _flat(sb[part] if part == "model" else sb[part]["module"])
        rel = float((wa - wb).norm() / wa.norm())
        assert 0 <= rel < 2e-3, (part, rel)
    assert sb["optimizer"]["strategy"] == "deepspeed" and sb["optimizer"]["zero_stage"] == int(name[-1])
    summary = json.loads((zero / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2


@pytest.mark.slow
def test_zero2_keeps_only_the_newest_sharded_state(runs):
    ck = runs["zero2"] / "checkpoints"
    names = sorted(p.name for p in ck.iterdir())
    assert f"{LAST}.pt" in names and f"{LAST}_zero" in names
    assert not any(n.startswith("iter_000000003") for n in names), names  # checkpoint.keep=1 pruned step 3
    assert not any(n.endswith(".tmp") for n in names), names


@pytest.mark.slow
def test_zero3_checkpoint_is_full_and_exports_match(runs):
    """ZeRO-3 partitions every parameter, yet ``iter_N.pt`` holds the full weights: a plain model loads
    them (``weights_only=True``, strict) and the JIT exports (EMA weights) match the eager modules."""
    from toolkit.config import from_dict
    from toolkit.tasks import build_task

    run = runs["zero3"]
    state = _ckpt(run)
    cfg = from_dict(state["config"])
    task = build_task(cfg.task)
    model = task.build_model()
    model.load_state_dict(state["model"])  # strict: every key, full shapes
    ema = task.build_model()
    ema.load_state_dict(state["ema"]["module"])
    assert sum(v.numel() for v in state["model"].values()) > 50_000
    files = state["optimizer"]["files"]
    assert any("optim_states" in f for f in files) and all((run / "checkpoints" / f"{LAST}_zero" / f).is_file()
                                                              for f in files)
    r = torch.rand(2, 1, 32, 64, generator=torch.Generator().manual_seed(1)) * 60.0
    inputs = task.export_inputs({"range": r})
    eager = task.exports(ema.eval())
    for suffix, module in eager.items():
        jit = torch.jit.load(str(run / "checkpoints" / f"{LAST}_{suffix}.jit"))
        with torch.no_grad():
            want, got = module(*inputs[suffix]), jit(*inputs[suffix])
        for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_zero3_resume_is_exact(runs, tmp_path):
    """The ZeRO-3 run started again after its step-3 checkpoint (the later one removed) ends with the
    same weights, EMA and losses, bit for bit, as the uninterrupted run."""
    full = runs["zero3"]
    run = tmp_path / "zero3-resumed"
    shutil.copytree(full, run)
    for p in (run / "checkpoints").glob(f"{LAST}*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (run / "summary.json").unlink()
    (run / "metrics.jsonl").write_text("")
    res = _torchrun(runs["shards"], run, **ZERO3)
    assert "resumed from" in res.stdout + res.stderr and "iter_000000003.pt" in res.stdout + res.stderr
    a, b = _ckpt(full), _ckpt(run)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"]["module"][key], b["ema"]["module"][key]), key
    assert _losses(run)[6] == _losses(full)[6]


@pytest.mark.slow
def test_zero1_bf16_with_accumulation(lidar_shards, tmp_path):
    """ZeRO-1 in bf16 (autocast, fp32 master weights) runs, logs finite losses and checkpoints."""
    run = tmp_path / "zero1-bf16"
    _torchrun(lidar_shards, run, **{"train.strategy": "deepspeed", "deepspeed.stage": 1, "train.precision": "bf16"})
    losses = _losses(run)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses.values())
    state = _ckpt(run)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert json.loads((run / "summary.json").read_text())["precision"] == "bf16"


@pytest.mark.slow
def test_zero2_non_finite_guard(lidar_shards, tmp_path):
    """Divergence under ZeRO-2: DeepSpeed skips the non-finite updates, the engine counts them and stops
    after ``train.max_bad_steps`` (exit 1) naming the last finite checkpoint."""
    run = tmp_path / "zero2-nan"
    values = {"train.strategy": "deepspeed", "deepspeed.stage": 2, "optim.lr": 1e6, "optim.warmup_steps": 0,
              "train.max_bad_steps": 2, "train.max_steps": 20, "train.grad_accum": 1, "checkpoint.every": 1,
              "log.every": 2, "eval.every": 0, "log.image_every": 0}
    res = run_cli(["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "toolkit.train",
                   "--config", str(CONFIG), *tiny_overrides(lidar_shards, run, **values)], timeout=900,
                  env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 1, res.stderr[-3000:]
    assert re.search(r"optimizer steps in a row .* last finite checkpoint: \S+/iter_\d{9}\.pt", res.stderr), \
        res.stderr[-3000:]
    for path in (run / "checkpoints").glob("iter_*.pt"):
        state = torch.load(path, weights_only=True)
        assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point()), path


def test_deepspeed_config_from_the_keys(tmp_path):
    from toolkit.config import ConfigError, load_config
    from toolkit.engine.zero import deepspeed_config

    cfg = load_config(CONFIG, ["train.strategy=deepspeed", "deepspeed.stage=3", "data.batch_size=4",
                               "train.grad_accum=2", "deepspeed.offload_optimizer=true"])
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 16 and ds["gradient_clipping"] == cfg.train.grad_clip
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    custom = tmp_path / "ds.json"
    custom.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": True}, "train_batch_size": 999}))
    cfg = load_config(CONFIG, ["train.strategy=deepspeed", f"deepspeed.config={custom}"])
    ds = deepspeed_config(cfg, world_size=1)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert ds["train_batch_size"] == cfg.data.batch_size * cfg.train.grad_accum  # the engine's, not the file's
    custom.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="deepspeed.config: .* must hold a JSON object"):
        deepspeed_config(cfg, world_size=1)


@pytest.mark.parametrize("overrides,message", [
    (["deepspeed.stage=4"], "deepspeed.stage=4 is not one of"),
    (["deepspeed.offload_param=true"], "deepspeed.offload_param=true needs deepspeed.stage=3"),
    (["train.strategy=deepspeed", "train.precision=fp16"], "train.precision=fp16 is not supported with"),
    (["deepspeed.config=/nonexistent/ds.json"], "deepspeed.config: file '/nonexistent/ds.json' does not exist"),
    (["deepspeed.reduce_bucket_size=0"], "deepspeed.reduce_bucket_size must be >= 1"),
])
def test_bad_strategy_settings_name_the_key(overrides, message):
    from toolkit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, overrides)


def test_bad_strategy_setting_on_the_command_line_is_one_line(tmp_path):
    res = run_cli(["-m", "toolkit.train", "--config", str(CONFIG), "deepspeed.stage=5", f"run.dir={tmp_path}"],
                  timeout=120)
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "deepspeed.stage=5" in lines[0] and "Traceback" not in res.stderr
