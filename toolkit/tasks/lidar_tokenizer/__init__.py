"""LiDAR tokenizer post-training (Cosmos CI8x8-style continuous autoencoder on range maps)."""

from .model import RangeAutoencoderExport, RangeCodec, RangeDecoder, RangeEncoder, RangeTokenizer
from .task import LidarTokenizerConfig, LidarTokenizerTask

__all__ = ["LidarTokenizerTask", "LidarTokenizerConfig", "RangeTokenizer", "RangeCodec", "RangeEncoder",
           "RangeDecoder", "RangeAutoencoderExport"]
