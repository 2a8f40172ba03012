"""Evaluate a trained model: ``python -m toolkit.evaluate --task NAME [options]``.

The task's family decides what evaluation means and which options exist (``--task NAME --help``
lists them). Families without their own part get the generic one (:mod:`toolkit.engine.evaluation`):
the task's validation metrics over ``--shards`` for a trained ``--run`` or ``--checkpoint``, computed
by the same evaluator as during training (whole-set metrics from gathered features included).

``--sweep MANIFEST`` evaluates every finished run of a sweep (``python -m launch --sweep``) with the
generic evaluation on each run's ``data.val`` (or ``--shards``), ``--draws`` times each, and caches each
result in ``RUN/eval/*.json``; running it again skips the cached runs (:func:`toolkit.engine.evaluation.run_sweep`).

Examples::

    python -m toolkit.evaluate --task lidar_tokenizer --run runs/lidar_tokenizer \\
        --dataroot ../shared/data/nuscenes-real-1sample --version v1.0-mini --baseline --json real.json
    python -m toolkit.evaluate --task cilp --run runs/cilp --shards 'data/shards/cilp/val-*.tar'
    python -m toolkit.evaluate --sweep runs/sweeps/token_fusion_ablation/manifest.json --draws 3
"""

from __future__ import annotations

import argparse
import sys

from toolkit.cli import main_for
from toolkit.engine import evaluation

_main = main_for("evaluate", __doc__, generic=evaluation)


def main(argv: list[str] | None = None) -> int:
    """``--sweep`` mode (:func:`toolkit.engine.evaluation.run_sweep`), else the per-task dispatch."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--sweep" or a.startswith("--sweep=") for a in argv):
        return _main(argv)
    from toolkit.cli import EXIT_BAD_INPUT, Parser

    p = Parser(prog="python -m toolkit.evaluate --sweep", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluation.add_sweep_arguments(p)
    args = p.parse_args(argv)
    try:
        return evaluation.run_sweep(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
