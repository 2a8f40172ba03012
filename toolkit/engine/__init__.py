"""The engine: one training loop on Accelerate and its parts, each deciding its own timing.

``trainer.py`` (``Trainer.fit`` coordinates), ``step.py`` (one optimizer step; the window of training
scalars), ``evaluator.py`` (validation: sums and gathered features; visuals), ``checkpoint.py`` (the
checkpoint format end to end, resume, exports, ``load_trained_model``), ``evaluation.py`` (the generic
``python -m toolkit.evaluate``), ``lock.py`` (one writer per run folder), ``ema.py``, ``optim.py``,
``device.py``, ``logger.py``, ``strategy.py`` (the strategy interface and DDP), ``zero.py`` (DeepSpeed ZeRO), ``fsdp.py`` (FSDP2).
"""
