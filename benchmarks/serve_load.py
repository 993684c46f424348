"""Load on `otxlite serve` over loopback: requests/s, latency, errors and the server's memory, against offline
`otxlite predict` on the same images.

Usage: python benchmarks/serve_load.py MODEL [--images DIR] [--requests 2000] [--clients 1 4 16 64]

Two servers run in turn on 127.0.0.1, each with bounded traffic that stops by itself: batching on (the defaults:
--max-batch-size 8, --batch-wait-ms 5) and --max-batch-size 1. For each number of concurrent clients, each
sending the images (raw JPEG bodies, one keep-alive connection a client) until --requests are answered, it
prints requests/s, p50/p95/p99 latency, errors (any answer but 200) and the server's RSS before and at the end
of that level. "predict" is offline `otxlite predict`'s images/s on the same images (benchmarks/predict_speed.py's
measure: decoding included, no files written). The clients share the machine's cores with the server: their
cost is in every figure. Default images: BCCD's 72 test images (see predict_speed.py).
"""

import argparse
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
from predict_speed import batched, default_images

from otxlite.core.report import format_table
from otxlite.engine.distributed import free_port
from otxlite.inference.images import image_files


class Server:
    """`otxlite serve` in a process of its own, ready when constructed; samples its peak RSS."""

    def __init__(self, model, *options):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([sys.executable, "-m", "otxlite", "serve", "--load-weights", str(model),
                                         "--port", self.url.rsplit(":", 1)[1], *options],
                                        stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"otxlite serve exited: {self.log.read()}")
            try:
                if requests.get(self.url + "/ready", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        self.memory = psutil.Process(self.process.pid)

    def rss_mb(self):
        return self.memory.memory_info().rss / 2**20

    def stop(self):
        self.process.terminate()
        self.process.wait(60)


def load(server, bodies, clients, total):
    """Send total requests from `clients` threads; (requests/s, sorted latencies in s, errors, peak RSS MB)."""
    latencies, errors, peak, lock = [], 0, [server.rss_mb()], threading.Lock()
    sent = iter(range(total))
    done = threading.Event()

    def client(_):
        nonlocal errors
        session = requests.Session()
        while True:
            with lock:
                index = next(sent, None)
            if index is None:
                return
            started = time.perf_counter()
            try:
                answer = session.post(server.url + "/predict", data=bodies[index % len(bodies)],
                                      headers={"Content-Type": "image/jpeg"}, timeout=120)
                ok = answer.status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                latencies.append(time.perf_counter() - started)
                errors += not ok

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], server.rss_mb())

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return total / seconds, sorted(latencies), errors, peak[0]


def percentile(values, fraction):
    return values[min(int(fraction * len(values)), len(values) - 1)] * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--images", type=Path, help="a folder of images (default: see above)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per number of clients")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()
    files = image_files(args.images)[0] if args.images else default_images()
    bodies = [file.read_bytes() for file in files]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{args.model}, {len(files)} images, {args.requests} requests per level; {cpu}, "
          f"{psutil.cpu_count()} cores, {time.strftime('%Y-%m-%d')}", flush=True)

    offline = batched(args.model, files, "cpu", 8)
    print(f"offline predict: {offline:.1f} images/s", flush=True)
    rows, rates = [], {}
    for setup, options in (("batching (8, 5 ms)", []), ("--max-batch-size 1", ["--max-batch-size", "1"])):
        server = Server(args.model, *options)
        try:
            load(server, bodies, 4, 64)  # warm-up: the first requests of each size
            start_rss = server.rss_mb()
            for clients in args.clients:
                before = server.rss_mb()
                rate, latencies, errors, peak = load(server, bodies, clients, args.requests)
                rates[setup, clients] = rate
                rows.append((setup, clients, f"{rate:.1f}", f"{percentile(latencies, .5):.0f}",
                             f"{percentile(latencies, .95):.0f}", f"{percentile(latencies, .99):.0f}", errors,
                             f"{before:.0f} -> {peak:.0f}"))
                print(" | ".join(map(str, rows[-1])), flush=True)
            print(f"{setup}: RSS grew {server.rss_mb() - start_rss:+.0f} MB over the run", flush=True)
        finally:
            server.stop()
    print()
    print(format_table(("server", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "RSS MB"), rows))
    for clients in args.clients:
        batching, single = rates["batching (8, 5 ms)", clients], rates["--max-batch-size 1", clients]
        print(f"{clients} clients: batching {batching / single:.2f}x --max-batch-size 1, "
              f"{batching / offline:.0%} of offline predict ({offline:.1f} img/s)")


if __name__ == "__main__":
    main()
