"""
Benchmarks behind ``ood-seg bench`` (JSON figures, never timed unit tests).

:mod:`.model` the network (torch and ONNX Runtime, OoD-output overhead, ``--compare-onnx``),
:mod:`.pipeline` post-processing, meta classification, end to end and size growth,
:mod:`.frames` camera-like sample frames, :mod:`.node` the live node's latency and
delivery, :mod:`.soak` the long run.
"""
