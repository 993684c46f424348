"""Training in several processes on CPU (gloo): the launcher, `--devices 2`, torchrun and Ray Train workers.

Every training run here is `otxlite train` in its own process with the template's default DataLoader workers.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import copy_voc, sample_ids

from otxlite.core.errors import OtxliteError
from otxlite.core.files import load_checkpoint
from otxlite.data.loader import GroupedBatchSampler
from otxlite.data.formats import Sample
from otxlite.engine import distributed
from otxlite.models.templates import resolve_template

TEMPLATE = "fasterrcnn_mobilenet_v3_large_320_fpn"
EPOCHS = 2


def test_grouped_batches_are_dealt_out_in_equal_parts_that_add_up_to_one_process_batches():
    samples = [Sample(image=None, source="", width=640 if i % 3 else 480, height=480 if i % 3 else 640)
               for i in range(11)]
    for epoch in range(3):
        whole = GroupedBatchSampler(samples, 4, seed=1)
        parts = [GroupedBatchSampler(samples, 2, seed=1, rank=r, world_size=2) for r in (0, 1)]
        for sampler in (whole, *parts):
            sampler.set_epoch(epoch)
        together = list(zip(whole, *parts))
        assert len(together) == len(whole) == len(parts[0]) == len(parts[1])
        for batch, first, second in together:
            assert len(first) == len(second) >= 2  # every rank the same number of images, never a lone one
            assert set(first) | set(second) == set(batch)  # topped up from the batch itself, nothing else


def gather_items(path):
    """Rank r holds items r, r + 2, ...; every rank gets them all back in order, rank 0 writes them to path."""
    gathered = distributed.gather_shards(list(range(7))[distributed.rank()::distributed.world_size()])
    if distributed.is_main():
        path.write_text(repr(gathered))


def fail_on_rank_one():
    if distributed.rank() == 1:
        raise OtxliteError("the data is wrong")
    distributed.barrier()


def die_on_rank_one():
    if distributed.rank() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    distributed.barrier()  # rank 0 waits for a peer that is gone


def in_group(function, *arguments):
    """function(*arguments) inside the process group that launch() describes in the environment."""
    with distributed.process_group(torch.device("cpu")):
        function(*arguments)


@pytest.mark.parametrize("function, message", [
    (fail_on_rank_one, "rank 1: the data is wrong"),
    (die_on_rank_one, "Training process of rank 1 was killed by SIGKILL; the other processes were stopped. "
                      "Continue the run with the same command and --resume.")])
def test_a_failing_or_killed_rank_stops_every_process_with_its_rank_named(function, message):
    started = time.perf_counter()
    with pytest.raises(OtxliteError) as error:
        distributed.launch(in_group, (function,), 2, torch.device("cpu"))
    assert str(error.value) == message
    assert time.perf_counter() - started < 120  # no hang on the barrier that rank 1 never reaches


def test_sharded_results_are_gathered_in_order_without_repeats(tmp_path):
    distributed.launch(in_group, (gather_items, tmp_path / "items"), 2, torch.device("cpu"))
    assert (tmp_path / "items").read_text() == repr(list(range(7)))


# ---------------------------------------------------------------- otxlite train in several processes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(template path, data.yaml): the template at a small input size with its default DataLoader workers; 8 train
    images and 3 val images (an odd count, so the ranks' shares of val differ)."""
    root = tmp_path_factory.mktemp("distributed")
    copy_voc(sample_ids("train", 8), root / "train", root / "train")
    copy_voc(sample_ids("val", 3), root / "val", root / "val")
    data = root / "data.yaml"
    data.write_text("data:\n  train: {ann-files: train}\n  val: {ann-files: val}\n")
    template = resolve_template(TEMPLATE)
    template["model"]["kwargs"].update(min_size=128, max_size=160)
    del template["path"]
    path = root / "template.yaml"
    path.write_text(yaml.safe_dump(template))
    return path, data


def otxlite_train(setup, output, *extra, launcher=("-m", "otxlite"), batch_size=2, epochs=EPOCHS, params=(),
                  wait=True):
    template, data = setup
    command = [sys.executable, *launcher, "train", str(template), "--data", str(data), "--output", str(output),
               "--no-pretrained", "--device", "cpu", "--seed", "3", *extra, "params",
               "--learning_parameters.num_iters", str(epochs), "--learning_parameters.batch_size", str(batch_size),
               "--distributed.scale_lr", "false", *params]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    _, err = process.communicate()
    return process.returncode, err


def losses(output):
    with open(output / "logs" / "metrics.csv") as file:
        return [float(row["loss"]) for row in csv.DictReader(file)]


@pytest.fixture(scope="module")
def one_process(setup, tmp_path_factory):
    """One process with batch 4: the run two processes with batch 2 each should match."""
    output = tmp_path_factory.mktemp("one") / "run"
    status, err = otxlite_train(setup, output, batch_size=4)
    assert status == 0, err
    return output


def assert_matches_one_process(output, one_process):
    """Same epochs, losses within 2% (measured: 0.8%; each rank's BatchNorm normalises over its own half of the batch, and each
    samples its own anchors and proposals), and a run folder the later stages take."""
    assert losses(output) == pytest.approx(losses(one_process), rel=0.02)
    for name in ("weights.pth", "label_schema.json", "checkpoints/last.pth", "train_batch.jpg", "logs/metrics.csv",
                 "logs/loss.png"):
        assert (output / name).is_file(), name
    assert load_checkpoint(output / "weights.pth")["threshold_tuned"]


def test_two_processes_train_like_one_with_twice_the_batch(setup, one_process, tmp_path):
    output = tmp_path / "run"
    status, err = otxlite_train(setup, output, "--devices", "2", params=("--ema.enable", "true"))
    assert status == 0, err
    assert_matches_one_process(output, one_process)  # the weight average leaves the training losses alone
    assert load_checkpoint(output / "checkpoints" / "last.pth")["ema"]["n_averaged"] > 0
    assert err.count("epoch 1/2 ") == 1 and "Traceback" not in err  # the log comes from rank 0 only
    assert "on 2 processes (cpu, batch 2 each) for 2 epochs (batch 4," in (output / "logs" / "train.log").read_text()
    assert not list(output.rglob("*.tmp"))
    performance = tmp_path / "performance.json"
    done = subprocess.run([sys.executable, "-m", "otxlite", "eval", "--load-weights", output / "weights.pth", "--data",
                           setup[1], "--test-ann-files", setup[1].parent / "val", "--save-performance", performance],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    best = load_checkpoint(output / "weights.pth")["epoch"]
    with open(output / "logs" / "metrics.csv") as file:
        validated = float(list(csv.DictReader(file))[best - 1]["val_map_50"])
    # the val figure the two ranks computed from their shares (of the weight average) is the one a single process
    # finds on all of val with weights.pth
    assert 0 < validated == pytest.approx(json.loads(performance.read_text())["map_50"], abs=1e-3)


def test_torchrun_processes_join_its_process_group(setup, one_process, tmp_path):
    output = tmp_path / "run"
    status, err = otxlite_train(setup, output, launcher=("-m", "torch.distributed.run", "--standalone",
                                                         "--nproc-per-node", "2", "-m", "otxlite"))
    assert status == 0, err
    assert_matches_one_process(output, one_process)
    assert "on 2 processes" in (output / "logs" / "train.log").read_text()


def test_a_killed_rank_stops_the_run_and_resume_finishes_it(setup, tmp_path):
    output = tmp_path / "run"
    process = otxlite_train(setup, output, "--devices", "2", epochs=3, wait=False)
    deadline = time.time() + 300
    while not (output / "checkpoints" / "last.pth").exists() and time.time() < deadline:
        time.sleep(0.1)
    ranks = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "spawn_main"], capture_output=True,
                           text=True).stdout.split()
    assert len(ranks) == 2
    os.kill(max(map(int, ranks)), signal.SIGKILL)  # the rank started last: rank 1
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "Training process of rank 1 was killed by SIGKILL" in err and "Traceback" not in err
    epoch = load_checkpoint(output / "checkpoints" / "last.pth")["epoch"]
    assert 1 <= epoch < 3
    status, err = otxlite_train(setup, output, "--devices", "2", "--resume", epochs=3)
    assert status == 0, err
    assert f"Resuming {TEMPLATE} from epoch {epoch}" in err and len(losses(output)) == 3


def test_ray_workers_train_like_one_process(setup, one_process, tmp_path):
    pytest.importorskip("ray.train")
    output = tmp_path / "run"
    status, err = otxlite_train(setup, output, "--engine", "ray", "--workers", "2")
    assert status == 0, err
    assert_matches_one_process(output, one_process)
    assert "on 2 processes" in (output / "logs" / "train.log").read_text()


def test_sync_batchnorm_on_cpu_processes_is_a_clear_error(setup, tmp_path):
    status, err = otxlite_train(setup, tmp_path / "run", "--devices", "2", params=("--distributed.sync_bn", "true"))
    assert status == 2 and "Traceback" not in err
    assert "params --distributed.sync_bn true needs GPUs" in err


def test_engine_options_are_checked(otxlite, setup, monkeypatch):
    status, _, err = otxlite("train", TEMPLATE, "--data", setup[1], "--engine", "ray", "--devices", "2")
    assert status == 2 and "give the number of processes as --workers N" in err
    status, _, err = otxlite("train", TEMPLATE, "--data", setup[1], "--workers", "2")
    assert status == 2 and "train locally with --devices N" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(OtxliteError, match=r"pip install 'otxlite\[ray\]'"):
        distributed.launch_ray(None, (), 2, None, None, None)
