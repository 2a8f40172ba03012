"""Evaluate a trained model: ``python -m toolkit.evaluate --task NAME [options]``.

The task's family decides what evaluation means and which options exist (``--task NAME --help``
lists them). Families without their own part get the generic one (:mod:`toolkit.engine.evaluation`):
the task's validation metrics over ``--shards`` for a trained ``--run`` or ``--checkpoint``, computed
by the same evaluator as during training (whole-set metrics from gathered features included).

Examples::

    python -m toolkit.evaluate --task lidar_tokenizer --run runs/lidar_tokenizer \\
        --dataroot ../shared/data/nuscenes-real-1sample --version v1.0-mini --baseline --json real.json
    python -m toolkit.evaluate --task cilp --run runs/cilp --shards 'data/shards/cilp/val-*.tar'
"""

from __future__ import annotations

import sys

from toolkit.cli import main_for
from toolkit.engine import evaluation

main = main_for("evaluate", __doc__, generic=evaluation)

if __name__ == "__main__":
    sys.exit(main())
