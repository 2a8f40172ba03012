"""The step loop does not synchronise per step: host reads of tensors happen at sync points only, and a
non-finite step is skipped on the device (no read) with the same result as deciding it on the host."""

import contextlib

import pytest
import torch
from accelerate import Accelerator

from conftest import REPO, tiny_overrides
from toolkit.config import load_config
from toolkit.engine.ema import EMA
from toolkit.engine.optim import Schedule, WarmupDecay
from toolkit.engine.step import NonFiniteError, TrainStep
from toolkit.engine.strategy import DDPStrategy
from toolkit.engine.trainer import SYNC_EVERY, Trainer
from toolkit.tasks.base import StepOutput

CONFIG = REPO / "configs" / "lidar_tokenizer.yaml"
#: every way Python code reads a tensor's value back to the host
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu")


@contextlib.contextmanager
def counting_host_reads():
    """Wrap the Tensor methods that read values to the host with a counter (the methods still run)."""
    counts = {"n": 0}
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(fn):
        def counted(self, *args, **kwargs):
            counts["n"] += 1
            return fn(self, *args, **kwargs)
        return counted

    for name, fn in saved.items():
        setattr(torch.Tensor, name, wrap(fn))
    try:
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


class _StrictStep(TrainStep):
    """A TrainStep whose calls raise on any CUDA synchronisation (``sync`` itself may synchronise)."""

    def __call__(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return super().__call__(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def _reads_of_a_run(lidar_shards, tmp_path, steps: int) -> int:
    overrides = tiny_overrides(lidar_shards, tmp_path / f"run{steps}", **{
        "train.max_steps": steps, "log.every": 10_000, "checkpoint.every": 0, "checkpoint.export_jit": False,
        "eval.every": 0, "log.image_every": 0, "data.val": ""})
    trainer = Trainer(load_config(CONFIG, overrides))
    if torch.cuda.is_available():  # on a GPU: the step itself must never synchronise
        trainer.train_step.__class__ = _StrictStep
    with counting_host_reads() as counts:
        summary = trainer.fit()
    assert summary["status"] == "finished" and summary["step"] == steps
    return counts["n"]


@pytest.mark.slow  # > 15 s on 2 cores: left out of make test-fast
def test_training_loop_reads_the_host_only_at_sync_points(lidar_shards, tmp_path):
    """Two real runs of the tiny preset (log.every large, no checkpoint but the last, no evaluation)
    differ by 10 steps: the reads they differ by are one sync point's (one read), not 10+ (a loop that
    reads its agreement every step: 10 more, measured)."""
    assert SYNC_EVERY == 10
    short = _reads_of_a_run(lidar_shards, tmp_path, 10)
    long = _reads_of_a_run(lidar_shards, tmp_path, 20)
    extra = long - short
    assert 1 <= extra <= 2, f"{extra} more host reads for 10 more steps (short run {short}, long run {long})"


class _Task:
    """A least-squares task whose loss is NaN on the batches marked ``nan``."""

    def losses(self, model, batch):
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        return StepOutput({"loss": loss * float("nan") if batch["nan"] else loss})

    def after_optimizer_step(self, model):
        pass


def _run(bad_steps, sync_at, steps=12, schedule="constant", max_bad=20):
    """``steps`` optimizer steps of a small model with NaN losses at ``bad_steps``; sync at ``sync_at``."""
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    ema = EMA(model, 0.9, warmup=schedule != "constant")
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    sched = Schedule(opt, WarmupDecay(0 if schedule == "constant" else 3, steps, schedule, 0.1))
    strategy = DDPStrategy(acc, model, opt)
    model, opt = strategy.model, strategy.optimizer
    step = TrainStep(strategy, sched, _Task(), ema, grad_clip=1.0, max_bad_steps=max_bad)
    assert step.device_skip
    gen = torch.Generator().manual_seed(1)
    batches = iter([{"x": torch.randn(16, 4, generator=gen), "y": torch.randn(16, 1, generator=gen), "nan": i + 1 in bad_steps}
                    for i in range(steps)])
    unchanged = []
    for i in range(1, steps + 1):
        before = [p.detach().clone() for p in model.parameters()]
        step(batches, i)
        if i in bad_steps:
            unchanged.append(all(torch.equal(a, b) for a, b in zip(before, model.parameters())))
        if i in sync_at:
            step.sync(i)
    return model, ema, opt, sched, step, unchanged


def test_device_skip_matches_a_skip_decided_at_every_step():
    """NaN losses at steps 3, 4 and 8: synchronising only at steps 6 and 12 ends with the same weights,
    EMA, optimizer state and counters, bit for bit, as reading the agreement after every step; the
    weights do not move at a skipped step."""
    every = _run({3, 4, 8}, set(range(1, 13)))
    late = _run({3, 4, 8}, {6, 12})
    for a, b in zip(every[0].parameters(), late[0].parameters()):
        assert torch.equal(a, b)
    for (ka, a), (kb, b) in zip(every[1].module.state_dict().items(), late[1].module.state_dict().items()):
        assert torch.equal(a, b), ka
    sa, sb = every[2].state_dict()["state"], late[2].state_dict()["state"]
    for i in sa:
        assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i]), i
        assert float(sb[i]["step"]) == 9  # 12 steps, 3 skipped
    assert every[4].skipped_steps == late[4].skipped_steps == 3 and late[4].bad_in_a_row == 0
    assert every[5] == late[5] == [True, True, True]
    assert all(torch.isfinite(p).all() for p in late[0].parameters())


def test_a_skipped_step_does_not_advance_the_schedule_or_the_ema_count():
    """With a cosine schedule and EMA warm-up, after the sync point the schedule and the EMA count are
    those of the good steps only (9 of 12)."""
    _, ema, opt, sched, _, _ = _run({3, 4, 8}, {12}, schedule="cosine")
    assert sched.last_epoch == 9 and ema.num_updates == 9
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * WarmupDecay(3, 12, "cosine", 0.1)(9))


def test_too_many_bad_steps_raise_at_the_sync_point_naming_the_step():
    with pytest.raises(NonFiniteError, match=r"step 6: 4 optimizer steps in a row \(since step 3\)"):
        _run(set(range(3, 13)), {6, 12}, max_bad=4)
