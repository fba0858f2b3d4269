"""Benchmarks (``kdcache bench-*``), all timed by one harness (``harness.py``: warm-up,
interleaved repeats, median and min-max, the full configuration in the JSON); each command
module imports torch only when its benchmark runs."""
