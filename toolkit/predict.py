"""Draw a trained model's predictions: ``python -m toolkit.predict --task NAME``.

Families that can draw predictions add ``toolkit/tasks/<family>/predict.py`` (``--task NAME --help`` lists its
options). Example::

    python -m toolkit.predict --task bev --run runs/bev_tiny_cam --shards 'data/shards/bev-synthetic/val-*.tar' \\
        --out outputs/bev_predictions
    python -m toolkit.predict --task bev --run runs/bev_tiny_cam --dataroot ../shared/data/nuscenes-real-1sample \\
        --out outputs/bev_real
"""

from __future__ import annotations

import sys

from toolkit.cli import main_for

main = main_for("predict", __doc__, with_json=False)

if __name__ == "__main__":
    sys.exit(main())
