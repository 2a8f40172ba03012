"""Reconstruct inputs with a trained model and write them out: ``python -m toolkit.reconstruct --task NAME``.

Families that can reconstruct their input add ``toolkit/tasks/<family>/reconstruct.py``
(``--task NAME --help`` lists its options). Example::

    python -m toolkit.reconstruct --task lidar_tokenizer --run runs/lidar_tokenizer \\
        --dataroot ../shared/data/nuscenes-real-1sample --out outputs/reconstructions
"""

from __future__ import annotations

import sys

from toolkit.cli import main_for

main = main_for("reconstruct", __doc__, with_json=False)

if __name__ == "__main__":
    sys.exit(main())
