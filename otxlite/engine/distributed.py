"""Training in several processes with DistributedDataParallel: started by otxlite (`--devices N`), by torchrun, or by
Ray Train (`--engine ray`). Every process runs the same training code; this module starts them, tells each which
rank it is, and moves results between them.
"""

import contextlib
import datetime
import logging
import os
import signal
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException

from otxlite.core.errors import OtxliteError, setup_logging
from otxlite.core.ray_cluster import init_ray

log = logging.getLogger("otxlite")
TIMEOUT = datetime.timedelta(minutes=30)  # a collective that waits longer than this fails instead of hanging


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return rank() == 0


@contextlib.contextmanager
def process_group(device):
    """Join the process group described by the environment (torchrun's or otxlite's launcher: WORLD_SIZE > 1)
    unless one exists (Ray Train's); yields this process's device. Ranks other than 0 log errors only."""
    created = not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    if dist.is_initialized() and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    level = log.level
    if not is_main():
        log.setLevel(logging.ERROR)
    try:
        yield device
    finally:
        log.setLevel(level)
        if created:
            dist.destroy_process_group()


def wrap(model, device, sync_batchnorm):
    """model for training on every rank: DistributedDataParallel (with SyncBatchNorm when asked) in a process
    group, model itself otherwise."""
    if world_size() == 1:
        return model
    if sync_batchnorm:
        if device.type != "cuda":
            raise OtxliteError("params --distributed.sync_bn true needs GPUs: PyTorch's SyncBatchNorm does not run "
                               "on CPU. Leave it false for CPU processes.")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def gather_shards(shard):
    """The lists that rank r computed for items r, r + N, r + 2N, ... put back in item order, on every rank."""
    if world_size() == 1:
        return shard
    shards = [None] * world_size()
    dist.all_gather_object(shards, shard)
    return [shards[i % len(shards)][i // len(shards)] for i in range(sum(map(len, shards)))]


def average(tensors):
    """Replace each tensor by its mean over the ranks, in place."""
    if world_size() > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)
            tensor.div_(world_size())


def barrier():
    if world_size() > 1:
        dist.barrier()


# ---------------------------------------------------------------- starting the processes


def launch(function, arguments, devices, device):
    """Run function(*arguments) in `devices` processes on this machine, one process group (gloo on CPU, NCCL with
    one GPU each). A process that fails or is killed stops them all, with an error naming its rank."""
    if device.type == "cuda" and devices > torch.cuda.device_count():
        raise OtxliteError(f"--devices {devices}: only {torch.cuda.device_count()} GPU(s) are visible. Use at most "
                           f"that many, or --device cpu for CPU processes.")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu" and devices > cores:
        raise OtxliteError(f"--devices {devices}: this machine gives otxlite {cores} CPU core(s), and each CPU process "
                           f"(gloo) needs one. Use --devices {cores} or fewer.")
    errors = mp.get_context("spawn").SimpleQueue()
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # our error says it instead
    processes = mp.start_processes(run_rank, args=(devices, free_port(), function, arguments, errors),
                                   nprocs=devices, start_method="spawn", join=False)
    try:
        while not processes.join():  # on a failure, join stops the other processes and raises
            pass
    except ProcessException as err:
        if not errors.empty():
            raise OtxliteError(errors.get()) from None
        killed = [(index, process.exitcode) for index, process in enumerate(processes.processes)
                  if process.exitcode is not None and process.exitcode < 0 and process.exitcode != -signal.SIGTERM]
        if isinstance(err, ProcessExitedException):
            failed, code = err.error_index, err.exit_code
        elif killed:  # a rank died, and another failed first on the broken connection
            failed, code = killed[0]
        else:
            raise OtxliteError(f"Training process of rank {err.error_index} failed:\n{err}") from None
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        raise OtxliteError(f"Training process of rank {failed} {how}; the other processes were stopped. "
                           f"Continue the run with the same command and --resume.") from None


def run_rank(local_rank, devices, port, function, arguments, errors):
    """One process of launch(): the environment torchrun would set, then function; a user error goes to errors."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(devices), LOCAL_WORLD_SIZE=str(devices))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // devices))  # CPU processes share the cores
    setup_logging()
    try:
        function(*arguments)
    except OtxliteError as err:
        errors.put(f"rank {local_rank}: {err}")
        raise SystemExit(2) from None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_ray(function, arguments, workers, device, address, storage):
    """Run function(*arguments) in `workers` Ray Train workers (ray.train.torch.TorchTrainer) on the Ray cluster at
    address (a local one when None); function receives report, which passes each epoch's figures and checkpoint to
    Ray. storage: where Ray keeps its results (RunConfig.storage_path)."""
    try:
        import ray
        from ray.train import CheckpointConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        raise OtxliteError("--engine ray needs Ray Train: pip install 'otxlite[ray]' (or 'ray[train]').") from None
    use_gpu = device.type == "cuda"
    # print() stays print(): Ray's patch would log what pycocotools prints into a StringIO
    init_ray(address, runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    trainer = TorchTrainer(
        ray_worker, train_loop_config={"function": function, "arguments": arguments},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name="ray", storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)))
    try:
        trainer.fit()
    except Exception as err:  # Ray wraps the worker's error; show its last line, not Ray's traceback
        message = "".join(traceback.format_exception_only(err)).strip().splitlines()
        otxlite_error = next((line for line in message if "OtxliteError" in line), message[-1])
        raise OtxliteError(f"Ray training failed: {otxlite_error}") from None
    finally:
        ray.shutdown()


def ray_worker(config):
    import ray.train

    setup_logging()
    logging.getLogger("otxlite").propagate = False  # Ray's root handler would repeat each line

    def report(metrics, folder):
        checkpoint = ray.train.Checkpoint.from_directory(folder) if is_main() else None
        ray.train.report(metrics, checkpoint=checkpoint)

    config["function"](*config["arguments"], report=report)
