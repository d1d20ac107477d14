"""
Message edge, ROS-free: image encodings and CDR, compressed headers, topic names.

``MAX_FRAME_PIXELS`` is the default limit on input frames (width x height): raw frames
over it and compressed ones whose header declares more are refused before any copy or
decoding; the pipeline checks the same limit.
"""

MAX_FRAME_PIXELS = 4096 * 4096
