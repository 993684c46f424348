"""Joining Ray for `--engine ray` (train, serve, predict): the cluster at --ray-address, or else a local Ray
instance of otxlite's own, never one that another program left running on the machine."""

import os


def init_ray(address=None, **options):
    """ray.init on the cluster at address, or a new local instance using every CPU of this machine."""
    import ray

    local = {"include_dashboard": False, "num_cpus": os.cpu_count()} if address is None else {}
    ray.init(address=address or "local", **local, **options)
