"""The bottom layer: what every other package shares and nothing of otxlite's beneath it.

Errors and console messages (errors), files written atomically and read with one clear error (files), checkpoints,
the label schema (labels), the confidence-threshold rule (thresholds), tasks and their metric keys (tasks), COCO and
F1 figures (metrics), text tables (report), drawing (visualize) and where work runs, locally or on Ray (ray_cluster).
Modules here import only the standard library, third-party packages and each other.
"""
