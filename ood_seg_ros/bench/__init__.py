"""Benchmarks behind ``ood-seg bench``: the live node's latency and its soak run."""
