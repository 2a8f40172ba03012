"""Command-line plumbing of the embedding tools: bad input ends with one line on stderr and exit code 2
(as :mod:`toolkit.cli`)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def run_main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], object],
             argv: list[str] | None) -> int:
    """Parse ``argv``, call ``run(args)``; ``ValueError``/``FileNotFoundError``/``KeyError`` (and their
    subclasses: store, shard-list and dataroot errors) -> ``error: ...`` on stderr, exit code 2.

    Raises:
        SystemExit: from argparse for ``--help`` and usage errors (exit code 2).
    """
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    return 0


def image_size(text: str) -> tuple[int, int]:
    """argparse type of ``WIDTHxHEIGHT`` (the project's form, as ``python -m shards nuscenes --image-size``)."""
    from toolkit.camera.augment import parse_image_size

    try:
        return parse_image_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
