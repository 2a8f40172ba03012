"""Train a task: ``python -m toolkit.train --config CONFIG.yaml [key=value ...]``.

The same command runs alone or under ``torchrun --nproc_per_node=N -m toolkit.train ...``. Running it
again with the same run folder resumes from the newest usable checkpoint. SIGTERM, SIGUSR1 or Ctrl-C
(SIGINT) make every rank write a checkpoint at the next step and stop (exit code 0; run again to
continue); a second Ctrl-C (more than half a second after the first) aborts at once (exit code 130;
the last complete checkpoint is kept).

Exit codes: 0 finished or stopped on request; 1 the run failed while training (non-finite steps, data
without usable samples, a checkpoint that cannot be written such as a full disk, any other error); 2 the
run could not start (a config error, the run folder in use by another process, shards that do not
match or lack the task's members, checkpoints that cannot be used); 130 aborted by a second Ctrl-C.
Every error is one line on stderr naming the key, file or folder (unexpected ones add a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback

from toolkit.cli import Parser, check_writable
from toolkit.config import ConfigError, describe, load_config, peek_run_dir, run_dir, to_yaml

EXIT_FAILED, EXIT_NOT_STARTED, EXIT_ABORTED = 1, 2, 130
DEBOUNCE_S = 0.5  #: SIGINTs this close to the first one are the same Ctrl-C
_ABORTED: list[BaseException] = []  #: see _train: an aborted run's exception, kept until exit


class _Parser(Parser):
    """Builds its epilog (which imports every task, and so torch) only when help is printed."""

    def format_help(self) -> str:
        from toolkit.tasks import task_names

        self.epilog = ("overrides are dotted key=value pairs, e.g.:\n"
                       "  python -m toolkit.train --config configs/lidar_tokenizer.yaml train.max_steps=50 "
                       "train.precision=bf16 run.name=try1\n\n"
                       f"tasks: {', '.join(task_names())} (task.* keys: see the task's config dataclass or "
                       "--print-config)\nengine keys and defaults:\n" + "\n".join(describe()))
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m toolkit.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML run config (e.g. configs/lidar_tokenizer.yaml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    return p


def _error(msg: str) -> None:
    sys.stderr.write(f"error: {msg}\n")  # one write: ranks sharing a pipe do not split each other's lines
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    from toolkit.engine.lock import RunLockedError, acquire_run_lock, release_run_lock

    args = build_parser().parse_args(argv)
    lock = None
    try:
        # An existing run folder is locked before anything heavy is imported, so a second run on it
        # fails in well under a second; a new folder is locked by the Trainer as it creates it.
        early = None if args.print_config or int(os.environ.get("RANK", "0")) else peek_run_dir(args.config, args.overrides)
        if early is not None and early.is_dir():
            lock = acquire_run_lock(early)
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return EXIT_NOT_STARTED
        if args.print_config:
            print(to_yaml(cfg), end="")
            print(f"# run folder: {run_dir(cfg)}")
            return 0
        try:
            key = "run.dir" if cfg.run.dir else "run.root/run.name"
            check_writable(run_dir(cfg), f"run folder ({key})", folder=True)
        except ValueError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return EXIT_NOT_STARTED
        return _train(cfg)
    except RunLockedError as exc:
        _error(str(exc))
        return EXIT_NOT_STARTED
    finally:
        release_run_lock(lock)


def _train(cfg) -> int:
    from toolkit.data.pipeline import CorruptDataError, ShardListError
    from toolkit.engine.checkpoint import CheckpointError
    from toolkit.engine.lock import RunLockedError
    from toolkit.engine.step import NonFiniteError
    from toolkit.engine.trainer import STOP_EXIT, Trainer

    try:
        trainer = Trainer(cfg)
    except (ConfigError, ValueError, ShardListError, RunLockedError, CheckpointError) as exc:
        _error(str(exc))
        return EXIT_NOT_STARTED

    first_interrupt = None

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        nonlocal first_interrupt
        if signum == signal.SIGINT:
            if first_interrupt is not None:
                # torchrun passes the terminal's Ctrl-C on to its workers, which got it already: a
                # second SIGINT within DEBOUNCE_S is the same key press
                if time.monotonic() - first_interrupt > DEBOUNCE_S:
                    raise KeyboardInterrupt
                return
            first_interrupt = time.monotonic()
        hint = " (Ctrl-C again aborts at once)" if signum == signal.SIGINT else ""
        print(f"received {signal.Signals(signum).name}: checkpointing at the next sync point (at most 10 steps){hint}",
              file=sys.stderr, flush=True)
        trainer.request_stop(STOP_EXIT)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        summary = trainer.fit()
    except (ShardListError, CheckpointError) as exc:
        _error(str(exc))
        return EXIT_NOT_STARTED
    except KeyboardInterrupt as exc:
        # Keep the interrupted stream's objects alive until the process exits: their finalisers may
        # wait for a hung child (webdataset's pipe: waits up to 2 h for its command), and an abort
        # must not wait for anything.
        _ABORTED.append(exc)
        _error(f"aborted by a second Ctrl-C; the last checkpoint in {trainer.run_dir / 'checkpoints'} is kept "
               "(run the same command to resume)")
        return EXIT_ABORTED
    except (NonFiniteError, CorruptDataError, OSError) as exc:
        _error(str(exc))
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - an unexpected error: its traceback, then one line
        traceback.print_exc()
        _error(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if trainer.is_main:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from toolkit.engine.dist import exit_process

    exit_process(main())  # destroys the process group and leaves at once, even if a library left a thread behind
