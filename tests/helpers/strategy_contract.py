"""One rank of the shared strategy test (tests/test_strategy_contract.py), run under torchrun with 2 ranks:
the :class:`toolkit.engine.strategy.Strategy` verbs of one strategy, driven by the real step loop
(:class:`toolkit.engine.step.TrainStep`), against a plain single-process reference computed here.

    python -m torch.distributed.run --nproc_per_node=2 --standalone tests/helpers/strategy_contract.py \
        --strategy ddp|deepspeed|fsdp [--stage 1|2|3] --out DIR

Each rank feeds its half of a fixed global batch. Steps: 1 and 2 finite; 3 with a NaN loss on rank 1
(skipped everywhere); 4 finite; then ``before_save`` + the checkpoint parts, step 5, the parts loaded back,
step 5 again. Rank 0 writes DIR/result.json: per step the gradient norm, whether it was skipped, the
largest weight and EMA gap to the reference (which skips step 3), and the round-trip gaps.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from accelerate import Accelerator  # noqa: E402

from toolkit.config import load_config  # noqa: E402
from toolkit.engine.dist import exit_process  # noqa: E402
from toolkit.engine.ema import EMA  # noqa: E402
from toolkit.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from toolkit.engine.step import TrainStep  # noqa: E402
from toolkit.engine.strategy import build_strategy  # noqa: E402
from toolkit.tasks.base import StepOutput  # noqa: E402

GRAD_CLIP = 0.05  # small enough that every finite step is clipped
STEPS_BEFORE_SAVE = 4
NAN_STEP = 3


class Net(nn.Module):
    """A small MLP whose two hidden layers are its blocks (FSDP2 shards each)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 16), nn.Tanh()),
                                     nn.Sequential(nn.Linear(16, 16), nn.Tanh())])
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


class LeastSquares:
    """The task: mean squared error; a NaN loss on the batches marked ``nan``."""

    def losses(self, model, batch):
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        return StepOutput({"loss": loss * float("nan") if bool(batch["nan"]) else loss})

    def after_optimizer_step(self, model):
        pass


def global_batches(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(7)
    return [{"x": torch.randn(8, 6, generator=gen), "y": torch.randn(8, 1, generator=gen)} for _ in range(n)]


def gap(a: dict, b: dict) -> float:
    return max((a[k].detach().double().cpu() - b[k].detach().double().cpu()).abs().max().item() for k in a)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", required=True)
    ap.add_argument("--stage", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    cfg = load_config(REPO / "configs" / "lidar_tokenizer.yaml",
                      [f"train.strategy={args.strategy}", f"deepspeed.stage={args.stage}", "data.batch_size=4",
                       "train.grad_accum=1", f"train.grad_clip={GRAD_CLIP}", "train.precision=fp32", "optim.lr=0.01",
                       "optim.warmup_steps=0", "optim.schedule=constant", "optim.weight_decay=0.1", "train.device=cpu"])
    acc = Accelerator(cpu=True)
    rank, world = acc.process_index, acc.num_processes
    assert world == 2, "run under torchrun --nproc_per_node=2"
    torch.manual_seed(0)
    model = Net()
    reference = copy.deepcopy(model)
    ema, ref_ema = EMA(model, 0.5, warmup=False), EMA(reference, 0.5, warmup=False)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, 10)
    ref_opt = torch.optim.AdamW([{"params": [p for p in reference.parameters() if p.ndim >= 2], "weight_decay": 0.1},
                                 {"params": [p for p in reference.parameters() if p.ndim < 2], "weight_decay": 0.0}],
                                lr=0.01, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    strategy = build_strategy(cfg, acc, model, optimizer, args.out / "checkpoints", list(model.blocks))
    step = TrainStep(strategy, scheduler, LeastSquares(), ema, grad_accum=1, grad_clip=GRAD_CLIP)
    data = global_batches(STEPS_BEFORE_SAVE + 1)

    def mine(i: int, nan: bool = False) -> dict:
        half = data[i]["x"].shape[0] // world
        return {"x": data[i]["x"][rank * half:(rank + 1) * half], "y": data[i]["y"][rank * half:(rank + 1) * half],
                "nan": torch.tensor(nan and rank == 1)}

    def reference_step(i: int) -> float:
        ref_opt.zero_grad()
        ((reference(data[i]["x"]) - data[i]["y"]) ** 2).mean().backward()
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), GRAD_CLIP)
        ref_opt.step()
        ref_ema.update(reference)
        return float(norm)

    rows = []
    for i in range(STEPS_BEFORE_SAVE):
        stats = step(iter([mine(i, nan=i + 1 == NAN_STEP)]), i + 1)
        step.sync(i + 1)
        skipped = bool(stats.good is not None and not bool(stats.good)) or stats.skipped
        ref_norm = None if i + 1 == NAN_STEP else reference_step(i)
        full = strategy.full_weights().state_dict()
        rows.append({"step": i + 1, "grad_norm": float(stats.grad_norm), "ref_grad_norm": ref_norm, "skipped": skipped,
                     "weights_gap": gap(full, reference.state_dict()),
                     "ema_gap": gap(ema.module.state_dict(), ref_ema.module.state_dict())})
    # checkpoint parts round trip: save, step 5, load back, step 5 again -> the same weights
    strategy.before_save(STEPS_BEFORE_SAVE)
    saved_model = copy.deepcopy(strategy.model_part.state_dict())
    buf = io.BytesIO()
    torch.save(strategy.optimizer_part.state_dict(), buf)
    step(iter([mine(STEPS_BEFORE_SAVE)]), STEPS_BEFORE_SAVE + 1)
    first = copy.deepcopy(strategy.full_weights().state_dict())
    strategy.model_part.load_state_dict(saved_model)
    buf.seek(0)
    strategy.optimizer_part.load_state_dict(torch.load(buf, weights_only=False))
    restored_gap = gap(strategy.full_weights().state_dict(), saved_model)
    scheduler.rewind(1)
    step(iter([mine(STEPS_BEFORE_SAVE)]), STEPS_BEFORE_SAVE + 1)
    replay_gap = gap(strategy.full_weights().state_dict(), first)
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps({
            "strategy": strategy.name, "device_skip": strategy.device_skip, "rows": rows,
            "restored_gap": restored_gap, "replay_gap": replay_gap, "skipped_steps": step.skipped_steps}, indent=1))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
    # destroy the process group and leave through os._exit: FSDP2 still holds the group, and its gloo threads,
    # torn down at interpreter exit, aborted rank 1 now and then ("terminate called without an active exception")
    exit_process(0)
