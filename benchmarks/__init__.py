"""platestream benchmarks: every goal is measured against a baseline in the same run (``make bench``)."""
