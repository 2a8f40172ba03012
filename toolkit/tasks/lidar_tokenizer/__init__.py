"""LiDAR tokenizer family: post-training a Cosmos CI8x8-style continuous autoencoder on range maps.

* ``task.py``: the ``lidar_tokenizer`` task (config, decode, loss, metrics, visuals, exports);
* ``autoencoder.py``: the Cosmos-style autoencoder; ``model.py``: the range codec around it and the
  export wrappers; ``metrics.py``: errors in metres and the trivial baseline; ``visuals.py``: range images;
* ``inference.py``: frames from shards, ``.pcd.bin`` files or a nuScenes dataroot, and a tokenizer from
  JIT exports or a trained run; ``evaluate.py`` / ``reconstruct.py``: the family's parts of
  ``python -m toolkit.evaluate`` and ``python -m toolkit.reconstruct``.
"""

from .model import RangeAutoencoderExport, RangeCodec, RangeDecoder, RangeEncoder, RangeTokenizer
from .task import LidarTokenizerConfig, LidarTokenizerTask

__all__ = ["LidarTokenizerTask", "LidarTokenizerConfig", "RangeTokenizer", "RangeCodec", "RangeEncoder",
           "RangeDecoder", "RangeAutoencoderExport"]
