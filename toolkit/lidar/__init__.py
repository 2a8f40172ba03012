"""LiDAR sensor geometry, beside :mod:`toolkit.camera`: range maps of spinning-LiDAR sweeps and back to
points (``range_map.py``), sensor specifications such as the nuScenes HDL-32E (``sensors.py``) and the
range-map shard format (``shard_format.py``). Dataset readers live in :mod:`toolkit.datasets`; the
tokenizer's metrics in its family, :mod:`toolkit.tasks.lidar_tokenizer`."""
