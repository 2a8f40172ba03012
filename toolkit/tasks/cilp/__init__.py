"""CILP family (seed 003): RGB + LiDAR cube/sphere pairs in the CILP layout.

* ``fusion.py``: ``fusion`` (late / intermediate fusion classifiers and the unimodal baselines);
* ``contrastive.py``: ``cilp`` (contrastive image-LiDAR pretraining, whole-set retrieval metrics);
* ``projector.py``: ``cilp_projector``; ``rgb2lidar.py``: ``rgb2lidar`` (the staged tasks, which load
  their upstream runs with :func:`toolkit.engine.checkpoint.load_trained_model`, see ``stages.py``);
* ``data.py``: decoding of shard samples; ``models.py``: the networks; ``loss.py``: distributed InfoNCE;
  ``visuals.py``: input grids and similarity matrices; ``example.py``: tiny samples for the contract test.
"""
