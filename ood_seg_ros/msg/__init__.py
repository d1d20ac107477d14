"""Message edge, ROS-free: image encodings and CDR, compressed headers, topic names."""
