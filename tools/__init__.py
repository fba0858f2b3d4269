"""kdcache operator commands: the ``kdcache`` CLI, demo, inspection and benchmarks."""
