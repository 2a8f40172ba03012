"""Camera geometry: pinhole intrinsics, extrinsics (sensor and ego poses) and projections.

The camera counterpart of :mod:`toolkit.lidar`, metres and pixels, no models. Reading a dataset's tables stays
in :mod:`toolkit.datasets` (for nuScenes, the devkit's ``NuScenes`` object); the modules here turn its
calibration and poses into matrices and points into pixels:

* :mod:`toolkit.camera.geometry`: numpy float64 rigid transforms, pinhole projection, the image mask and the
  nuScenes LiDAR -> camera chain.
* :mod:`toolkit.camera.augment`: resize/crop of images with the intrinsics updated (Simple-BEV's train-time
  jitter, plain resize for validation) and JPEG decoding straight to the transformed size (Pillow).
* :mod:`toolkit.camera.voxels`: torch, batched: ego points -> pixels of every camera, and voxel centres ->
  ``grid_sample`` coordinates with a validity mask (the lifting step of Simple-BEV-style BEV models).

Frames, as in nuScenes:

* camera frame: origin at the optical centre, x right, y down, z forward (along the optical axis), so a
  point's depth is its z; pixel ``(u, v)`` = (column, row) with ``(0, 0)`` at the image's top-left corner.
* ego frame: x forward, y left, z up, origin at the rear axle's centre on the ground; one ego pose per
  sensor capture time (``ego_pose`` rows are keyed by ``sample_data`` token).
* global frame: the map frame of the log that the ego poses are given in (metres, z up).
* lidar frame (LIDAR_TOP): x to ego-right, y to ego-forward, z up (see :mod:`toolkit.lidar.range_map`).

Rigid transforms are (4, 4) homogeneous matrices ``T_a_from_b`` that map points of frame ``b`` into frame
``a``: ``p_a = T[:3, :3] @ p_b + T[:3, 3]``; quaternions are ``(w, x, y, z)`` as in the nuScenes tables.
"""
