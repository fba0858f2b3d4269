"""Consuming a cache: streaming views joined with targets (``data``), distillation losses
(``kd``) and the training loop (``run``). Import from those faces."""
