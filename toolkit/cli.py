"""Shared pieces of the command-line tools.

* :class:`Parser`: an ``argparse.ArgumentParser`` whose usage errors are one line (``prog: error: ...``,
  exit code 2) instead of a usage block and a message; every CLI of the project uses it.
* :func:`int_at_least`, :func:`float_at_least`, :func:`float_below`, :func:`device_type`: ``type=`` checks
  whose errors name the expected value (argparse adds the flag).
* :func:`check_writable`, :func:`check_nuscenes_dataroot`: path checks before any work is done.
* :func:`error_line`: one line for an exception a CLI expects (OS errors name their file, a corrupt tar
  names the shard); :data:`EXPECTED_ERRORS`: the exception classes that mean bad input.

``python -m toolkit.<tool> --task NAME ...`` (``evaluate``, ``reconstruct``, ``predict``) finds the family of
task ``NAME`` and its module ``toolkit/tasks/<family>/<tool>.py``, which contributes ``add_arguments(parser)``
and ``run(args)``; a tool may have a generic part for families without their own. Parsers are composed from a
common parent (``--task``, ``--device``, ``--json``) with ``parents=``, as dinov2's ``run/submit.py`` does.
Bad input ends with one line on stderr (``error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Callable

from toolkit.config import ConfigError

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with one-line usage errors: ``PROG: error: MESSAGE (see PROG --help)`` on
    stderr and exit code 2 (sub-command parsers made by ``add_subparsers`` are of this class too)."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    parse.__name__ = f"int>={low}"
    return parse


def float_at_least(low: float, strict: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number >= ``low`` (> ``low`` with ``strict``)."""
    what = f"{'>' if strict else '>='} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected a finite number {what}, got {text!r}")
        return value
    parse.__name__ = f"float{what}"
    return parse


def float_below(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type``: a number in [``low``, ``high``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"expected a number in [{low:g}, {high:g}), got {text!r}")
        return value
    parse.__name__ = f"float in [{low:g}, {high:g})"
    return parse


def device_type(text: str) -> str:
    """An argparse ``type``: a torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``) that this machine has."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda, cuda:0 or mps, got {text!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda[:N] or mps, got {text!r}")
    return text


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> None:
    """Check that ``path`` (a file, or a folder with ``folder``) can be created or replaced: its nearest
    existing ancestor is a folder this process may write to (``os.access``, which also sees read-only
    file systems).

    Raises:
        ValueError: naming ``what`` (the flag or key), the path and the reason.
    """
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise ValueError(f"{what} '{p}' exists and is not a folder")
        if not folder and p.is_dir():
            raise ValueError(f"{what} '{p}' is a folder, expected a file")
        target = p if folder else p.parent
    else:
        target = p.parent
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        raise ValueError(f"{what} '{p}' cannot be created: '{target}' is not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(target) else "permission denied"
        raise ValueError(f"{what} '{p}' cannot be written: '{target}' is not writable ({reason})")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_nuscenes_dataroot(dataroot: str, version: str, what: str = "--dataroot") -> None:
    """A nuScenes dataroot the devkit can open: the folder, its table folder and ``maps/`` (the devkit
    asserts on each map mask otherwise).

    Raises:
        ValueError: naming ``what``, the folder and what is missing.
    """
    from toolkit.datasets.nuscenes import DatarootError, check_dataroot

    try:
        root = check_dataroot(dataroot, version)
    except DatarootError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if not (root / "maps").is_dir():
        raise ValueError(f"{what} '{root}' has no maps/ folder (a nuScenes dataroot holds maps/, samples/, "
                         f"sweeps/ and {version}/)")


def error_line(exc: BaseException) -> str:
    """One line for an expected exception: an ``OSError`` as ``'FILE': reason``, a tar error with its shard,
    a ``KeyError`` without quotes, anything else as ``str(exc)``; the first line only."""
    if isinstance(exc, tarfile.TarError):
        args = exc.args
        shard = next((a for a in args[1:] if isinstance(a, str)), None) if len(args) > 1 else None
        reason = args[0] if args and isinstance(args[0], str) else str(exc)
        reason = reason.split(" @ ")[0]
        text = f"cannot read shard '{shard}': {reason} (a truncated or corrupt tar)" if shard else \
            f"cannot read a shard: {reason} (a truncated or corrupt tar)"
    elif isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"'{exc.filename}': {exc.strerror}"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror  # e.g. toolkit.files.WriteError: its message names the file
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc) or type(exc).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exception classes that mean bad input to a CLI (config, files, shards, checkpoints)."""
    from toolkit.data.pipeline import CorruptDataError, ShardListError
    from toolkit.engine.checkpoint import CheckpointError

    return (ValueError, OSError, KeyError, tarfile.TarError, CheckpointError, ConfigError, ShardListError,
            CorruptDataError)


def add_model_arguments(p: argparse.ArgumentParser, exports: str | None = None) -> None:
    """``--run``, ``--checkpoint`` and ``--weights``: where a trained model comes from."""
    what = f"the newest checkpoint's {exports} exports" if exports else "its newest checkpoint"
    p.add_argument("--run", help=f"run folder: use {what}")
    p.add_argument("--checkpoint", help="a checkpoint file (iter_N.pt)")
    p.add_argument("--weights", choices=["ema", "model"], default="ema",
                   help="checkpoint weights: the EMA's (default; the model's if the run kept none) or the model's")


def _common(tool: str, with_json: bool) -> argparse.ArgumentParser:
    from toolkit.tasks import task_names

    p = Parser(add_help=False)
    p.add_argument("--task", required=True, choices=task_names(), help=f"task whose family {tool}s")
    p.add_argument("--device", default="cpu", type=device_type, help="torch device (default cpu)")
    if with_json:
        p.add_argument("--json", help="also write the result as JSON to this file")
    return p


#: Numeric options of the families' parts, checked after parsing: attribute -> (flag, lowest value).
_AT_LEAST = {"max_frames": ("--max-frames", 0), "max_samples": ("--max-samples", 0), "max_batches": ("--max-batches", 0),
             "batch_size": ("--batch-size", 0)}


def check_tool_args(args: argparse.Namespace, with_json: bool) -> None:
    """Checks of the options a family's part may have, before it runs: numbers in range, ``--enc``/``--dec``
    TorchScript files, a ``--dataroot`` the devkit can open, a writable ``--json`` / ``--out``.

    Raises:
        ValueError: naming the flag and the value or file.
    """
    for attr, (flag, low) in _AT_LEAST.items():
        value = getattr(args, attr, None)
        if value is not None and value < low:
            raise ValueError(f"{flag} must be >= {low} (0 = all), got {value}")
    for attr in ("enc", "dec"):
        path = getattr(args, attr, None)
        if path:
            if not os.path.isfile(path):
                raise ValueError(f"--{attr} '{path}' does not exist or is not a file")
            import torch

            try:
                torch.jit.load(path, map_location="cpu")
            except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/ValueError for a non-JIT file
                reason = error_line(exc).split(". ")[0][:120]
                raise ValueError(f"--{attr} '{path}' is not a TorchScript file ({reason})") from None
    if getattr(args, "dataroot", None):
        check_nuscenes_dataroot(args.dataroot, getattr(args, "version", None) or "v1.0-mini")
    if with_json and getattr(args, "json", None):
        check_writable(args.json, "--json")
    if getattr(args, "out", None):
        check_writable(args.out, "--out", folder=True)


def dispatch(tool: str, argv: list[str] | None, description: str,
             generic: ModuleType | None = None, with_json: bool = True) -> int:
    """Parse ``argv`` for ``python -m toolkit.<tool>``, run the family's part (or ``generic``), return the exit code.

    Bad input (see :func:`check_tool_args` and :func:`expected_errors`) is one line ``error: ...`` on stderr and
    exit code 2.

    Raises:
        SystemExit: from argparse for ``--help`` and usage errors (code 2, one line).
    """
    from toolkit.files import write_text
    from toolkit.tasks import family_module, task_names

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task")
    task = pre.parse_known_args(argv)[0].task
    known = task in task_names()
    part = (family_module(task, tool) if known else None) or generic
    common = _common(tool, with_json)
    p = Parser(prog=f"python -m toolkit.{tool}", parents=[common], description=description,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    if part is None and known:
        p.error(f"task {task!r} has no {tool} (its family has no {tool}.py)")
    if part is not None:
        part.add_arguments(p)
    args = p.parse_args(argv)
    try:
        check_tool_args(args, with_json)
        try:
            result = part.run(args)
        except RuntimeError as exc:
            from toolkit.engine.checkpoint import CheckpointError

            if isinstance(exc, CheckpointError) or not (getattr(args, "enc", None) or getattr(args, "dec", None)):
                raise
            # user-given TorchScript modules that fail on the data: an encoder and a decoder that do not belong
            # together, or modules of another model
            raise ValueError(f"--enc '{args.enc}' / --dec '{args.dec}' failed on the input (an encoder and a decoder "
                             f"of the same model, in that order?): {_last_error(exc)[:200]}") from None
        if with_json and args.json:
            write_text(args.json, json.dumps(result, indent=1))
            print(f"wrote {args.json}")
    except expected_errors() as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _last_error(exc: BaseException) -> str:
    """The innermost message of a TorchScript interpreter error (its last ``...Error: ...`` line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    inner = [line.split("Error: ", 1)[1] for line in lines if "Error: " in line]
    return inner[-1] if inner else (lines[-1] if lines else type(exc).__name__)


def main_for(tool: str, description: str, generic: ModuleType | None = None, with_json: bool = True) -> Callable:
    """A ``main(argv=None) -> int`` for ``python -m toolkit.<tool>``."""
    return lambda argv=None: dispatch(tool, argv, description, generic, with_json)
