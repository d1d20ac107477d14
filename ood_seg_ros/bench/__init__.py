"""Benchmarks behind ``ood-seg bench``: network (model), pipeline and frames."""
