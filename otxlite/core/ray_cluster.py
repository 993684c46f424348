"""The Ray switch: where train, predict, select, serve and tune run. In this process (engine "local", the value None), or on
Ray (an OnRay value: workers, replicas or a cluster's address). `ray_switch` checks the choice and the options that
go with it, in one place for every command; `init_ray` joins the cluster at the address, or else starts a local Ray
instance of otxlite's own, never one that another program left running on the machine."""

import os
from dataclasses import dataclass

from otxlite.core.errors import ArgumentError

ENGINES = ("local", "ray")
# what each command says when Ray's options come without --engine ray
LOCAL_MESSAGES = {
    "train": "--workers and --ray-address are for --engine ray; train locally with --devices N.",
    "predict": "--workers, --gpus-per-worker and --ray-address go with --engine ray.",
    "select": "--workers, --gpus-per-worker and --ray-address go with --engine ray.",
    "serve": "--replicas, --min-replicas, --max-replicas, --max-queued-requests and --ray-address go with "
             "--engine ray.",
    "tune": "--ray-address is for --engine ray.",
}


@dataclass(frozen=True)
class OnRay:
    """Run on Ray. workers: Ray Train workers (train) or model actors (predict; default one per CPU of the cluster,
    or per GPU over gpus_per_worker); replicas, or min_replicas and max_replicas to autoscale, and
    max_queued_requests (serve); address: the cluster to join (default: a local Ray of otxlite's own)."""
    workers: int | None = None
    gpus_per_worker: float = 0
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    max_queued_requests: int | None = None
    address: str | None = None

    def __post_init__(self):
        if self.replicas is not None and (self.min_replicas is not None or self.max_replicas is not None):
            raise ArgumentError("give --replicas, or --min-replicas and --max-replicas for autoscaling, not both.")


def ray_switch(engine, command, devices=1, **options):
    """None to run command (train, predict, select, serve or tune) in this process, or the OnRay of its options (OnRay's
    fields; None or 0 when not given) for engine "ray". devices: train's local processes, which Ray counts as
    workers instead."""
    if engine not in ENGINES:
        raise ArgumentError(f"engine '{engine}': choose local or ray.")
    if engine == "local":
        if any(value for value in options.values()):
            raise ArgumentError(LOCAL_MESSAGES[command])
        return None
    if devices > 1:
        raise ArgumentError("With --engine ray, give the number of processes as --workers N.")
    return OnRay(**{key: value for key, value in options.items() if value is not None})


def init_ray(address=None, **options):
    """ray.init on the cluster at address, or a new local instance using every CPU of this machine."""
    import ray

    local = {"include_dashboard": False, "num_cpus": os.cpu_count()} if address is None else {}
    ray.init(address=address or "local", **local, **options)
