"""Datasets: CamVid frames, COCO object cut-outs and synthetic OoD sets (numpy + OpenCV)."""
