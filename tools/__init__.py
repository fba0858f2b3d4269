"""Operator tools on top of pipeline and trainer: the ``kdcache`` CLI (``cli``), cache
inspection and verification (``cache``), benchmarks (``bench``), the demo and plots."""
