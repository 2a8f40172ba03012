"""Shared pieces of the command-line tools that work per task family (``evaluate``, ``reconstruct``).

``python -m toolkit.<tool> --task NAME ...`` finds the family of task ``NAME`` and its module
``toolkit/tasks/<family>/<tool>.py``, which contributes ``add_arguments(parser)`` and ``run(args)``;
a tool may have a generic part for families without their own. Parsers are composed from a common
parent (``--task``, ``--device``, ``--json``) with ``parents=``, as dinov2's ``run/submit.py`` does.
Bad input ends with one line on stderr (``error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from types import ModuleType
from typing import Callable

from toolkit.config import ConfigError


def add_model_arguments(p: argparse.ArgumentParser, exports: str | None = None) -> None:
    """``--run``, ``--checkpoint`` and ``--weights``: where a trained model comes from."""
    what = f"the newest checkpoint's {exports} exports" if exports else "its newest checkpoint"
    p.add_argument("--run", help=f"run folder: use {what}")
    p.add_argument("--checkpoint", help="a checkpoint file (iter_N.pt)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema",
                   help="checkpoint weights: the EMA's (default; the model's if the run kept none) or the model's")


def _common(tool: str, with_json: bool) -> argparse.ArgumentParser:
    from toolkit.tasks import task_names

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--task", required=True, choices=task_names(), help=f"task whose family {tool}s")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    if with_json:
        p.add_argument("--json", help="also write the result as JSON to this file")
    return p


def dispatch(tool: str, argv: list[str] | None, description: str,
             generic: ModuleType | None = None, with_json: bool = True) -> int:
    """Parse ``argv`` for ``python -m toolkit.<tool>``, run the family's part (or ``generic``), return the exit code.

    Raises:
        SystemExit: from argparse for ``--help`` and usage errors.
    """
    from toolkit.engine.checkpoint import CheckpointError
    from toolkit.files import write_text
    from toolkit.tasks import family_module

    from toolkit.tasks import task_names

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task")
    task = pre.parse_known_args(argv)[0].task
    known = task in task_names()
    part = (family_module(task, tool) if known else None) or generic
    common = _common(tool, with_json)
    p = argparse.ArgumentParser(prog=f"python -m toolkit.{tool}", parents=[common], description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if part is None and known:
        p.error(f"task {task!r} has no {tool} (its family has no {tool}.py)")
    if part is not None:
        part.add_arguments(p)
    args = p.parse_args(argv)
    try:
        result = part.run(args)
    except (ValueError, FileNotFoundError, KeyError, CheckpointError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if with_json and args.json:
        write_text(args.json, json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


def main_for(tool: str, description: str, generic: ModuleType | None = None, with_json: bool = True) -> Callable:
    """A ``main(argv=None) -> int`` for ``python -m toolkit.<tool>``."""
    return lambda argv=None: dispatch(tool, argv, description, generic, with_json)
