"""Where an OpenVINO IR spends its time on one image: OpenVINO's own per-layer counters (PERF_COUNT), summed by
layer type, with the number of detections the image gave.

Usage: python benchmarks/ov_profile.py MODEL.xml [MODEL.xml ...] [--image IMAGE] [--runs 5]

Each IR runs as otxlite's predictors run it (CPU plugin, f32 inference precision, the image as [1, 3, H, W] in
0..1); counters are the median over --runs after one warm-up call. For a Mask R-CNN IR with masks pasted in the
graph (benchmarks/mask_paste.py writes one beside otxlite's per-box export), the `Loop` row is that pasting, one
detection at a time. Run it alone: the figures are only true when nothing else runs.
"""

import argparse
import collections
import statistics
from pathlib import Path

import openvino

from otxlite.data.formats.base import decode_image
from otxlite.inference.backends import exported_input

IMAGE = Path(__file__).resolve().parent.parent / "samples" / "bccd-mini" / "JPEGImages" / "BloodImage_00007.jpg"


def profile(xml, image, runs):
    """({layer type: median ms}, detections) of the IR on the image."""
    compiled = openvino.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                              "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer([image])
    samples = collections.defaultdict(list)
    for _ in range(runs):
        request.infer([image])
        totals = collections.Counter()
        for layer in request.profiling_info:
            totals[layer.node_type] += layer.real_time.total_seconds() * 1000
        for kind, ms in totals.items():
            samples[kind].append(ms)
    detections = len(request.get_output_tensor(1).data)
    return {kind: statistics.median(values) for kind, values in samples.items()}, detections


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    image = exported_input(decode_image(args.image))
    for xml in args.models:
        times, detections = profile(xml, image, args.runs)
        total = sum(times.values())
        print(f"{xml}: {total:.1f} ms in all, {detections} detections on {args.image.name}")
        for kind, ms in sorted(times.items(), key=lambda item: -item[1])[:8]:
            print(f"  {kind:<24} {ms:8.1f} ms  {100 * ms / total:5.1f} %")


if __name__ == "__main__":
    main()
