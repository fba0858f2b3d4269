"""kdcache: knowledge distillation with the teacher paid once."""

__version__ = "0.1.0"
