"""The engine: one training loop on Accelerate (:mod:`toolkit.engine.trainer`) and its parts."""
