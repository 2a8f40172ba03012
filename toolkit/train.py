"""Train a task: ``python -m toolkit.train --config CONFIG.yaml [key=value ...]``.

The same command runs alone or under ``torchrun --nproc_per_node=N -m toolkit.train ...``. Running it
again with the same run folder resumes from the newest complete checkpoint. SIGTERM or SIGUSR1 make
every rank write a checkpoint at the next step and stop (exit code 0; run again to continue).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from toolkit.config import ConfigError, describe, load_config, run_dir, to_yaml


def build_parser() -> argparse.ArgumentParser:
    from toolkit.tasks import task_names

    epilog = ("overrides are dotted key=value pairs, e.g.:\n"
              "  python -m toolkit.train --config configs/lidar_tokenizer.yaml train.max_steps=50 "
              "train.precision=bf16 run.name=try1\n\n"
              f"tasks: {', '.join(task_names())} (task.* keys: see the task's config dataclass or --print-config)\n"
              "engine keys and defaults:\n" + "\n".join(describe()))
    p = argparse.ArgumentParser(prog="python -m toolkit.train", description=__doc__, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML run config (e.g. configs/lidar_tokenizer.yaml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        print(f"# run folder: {run_dir(cfg)}")
        return 0

    from toolkit.data.pipeline import ShardListError
    from toolkit.engine.checkpoint import CheckpointError
    from toolkit.engine.trainer import STOP_EXIT, Trainer

    try:
        trainer = Trainer(cfg)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        print(f"received {signal.Signals(signum).name}: checkpointing at the next step", file=sys.stderr)
        trainer.request_stop(STOP_EXIT)

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, on_signal)
    try:
        summary = trainer.fit()
    except (ShardListError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if trainer.is_main:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
