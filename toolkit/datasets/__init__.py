"""Dataset readers: how each dataset is laid out on disk and how it is read, independent of any sensor model.

* :mod:`toolkit.datasets.nuscenes`: nuScenes dataroots through nuscenes-devkit (dataroot checks, LIDAR_TOP
  keyframes, ``.pcd.bin`` points); used by the LiDAR shard builder, evaluation and camera geometry alike.
* :mod:`toolkit.datasets.cilp_layout`: the CILP cubes-and-spheres folder layout (RGB images, LiDAR range
  images and beam angles), synthetic or downloaded.

Sensor geometry lives beside them in :mod:`toolkit.lidar` and :mod:`toolkit.camera`; shard writing in ``shards/``.
"""
