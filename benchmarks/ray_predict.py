"""`otxlite predict --engine ray` against `--engine local`: images/s and peak memory, on the same images.

Usage: python benchmarks/ray_predict.py MODEL [--images DIR] [--counts 576 1000 5000] [--workers 1 2]

The images (default: BCCD's 72 test images) are hard-linked over and over into a temporary folder, up to each
count. Each run is the `otxlite predict` command in a process of its own, writing Parquet shards, as a user runs
it: "wall" is the whole command, start-up included (imports, the model's compilation, and for Ray: starting a
local Ray instance and its actors). "marginal" is the images/s past the start-up: (largest count - smallest
count) / (difference of their walls). "peak MB" is the largest sum of PSS (proportional set size: shared memory,
Ray's object store included, counted once) over the command's process and every process under it, sampled
every 0.25 s. Run it with nothing else running.
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from otxlite.core.report import format_table
from otxlite.inference.images import image_files

ROOT = Path(__file__).resolve().parent.parent


def linked_images(files, count, folder):
    """count hard links to files, round and round, in folder (a fresh one)."""
    folder.mkdir(parents=True)
    for i in range(count):
        source = files[i % len(files)]
        os.link(source, folder / f"{i:06d}_{source.name}")
    return folder


def tree_pss_mb(process):
    """The PSS of process and its descendants, in MB (processes that end while being read are left out)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def timed_predict(model, images, output, options):
    """(wall seconds, peak MB) of one `otxlite predict` command."""
    peak, done = [0.0], threading.Event()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "otxlite", "predict", "--load-weights", str(model),
                                "--input", str(images), "--output", str(output), *options],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)

    def sample():
        while not done.wait(0.25):
            try:
                peak[0] = max(peak[0], tree_pss_mb(watched))
            except psutil.NoSuchProcess:
                return
    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = process.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"otxlite predict {' '.join(options)} failed:\n{err}")
    return wall, peak[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--images", type=Path, default=ROOT / "samples" / "bccd" / "JPEGImages",
                        help="a folder of images (default: BCCD's test images)")
    parser.add_argument("--counts", type=int, nargs="+", default=[576, 1000, 5000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if args.images == ROOT / "samples" / "bccd" / "JPEGImages":
        listed = (ROOT / "samples" / "bccd" / "ImageSets" / "Main" / "test.txt").read_text().split()
        files = [args.images / f"{name}.jpg" for name in listed]
    else:
        files = image_files(args.images)[0]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    print(f"{args.model}; {len(files)} distinct images; {cpu}, {psutil.cpu_count()} cores "
          f"({' '.join(f for f in ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_tile') if f in flags)}), "
          f"{time.strftime('%Y-%m-%d')}", flush=True)
    engines = [("local", [])] + [(f"ray, {n} worker{'s' if n > 1 else ''}", ["--engine", "ray", "--workers", str(n)])
                                 for n in args.workers]
    counts = sorted(args.counts)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folders = {count: linked_images(files, count, scratch / f"images-{count}") for count in counts}
        for name, options in engines:
            for count in counts:
                wall, peak = timed_predict(args.model, folders[count], scratch / f"out-{len(results)}", options)
                results[name, count] = wall, peak
                print(f"{name:>16} {count:>6} images: {wall:6.1f} s, {count / wall:6.1f} images/s, peak {peak:6.0f} MB",
                      flush=True)
    first, last = counts[0], counts[-1]
    marginal = {name: (last - first) / (results[name, last][0] - results[name, first][0]) for name, _ in engines}
    rows = [[name, *[f"{count / results[name, count][0]:.1f}" for count in counts], f"{marginal[name]:.1f}",
             f"{marginal[name] / marginal['local']:.0%}", *[f"{results[name, count][1]:.0f}" for count in counts]]
            for name, _ in engines]
    print(format_table(["engine", *[f"{c} img/s (wall)" for c in counts], "marginal img/s", "of local",
                        *[f"peak MB {c}" for c in counts]], rows))


if __name__ == "__main__":
    main()
