"""FP32, post-training INT8 and quantization-aware-trained INT8 side by side on BCCD (test split), as a user runs
them: otxlite train (random weights) -> optimize --method ptq -> optimize (qat), for each template.

Usage: python benchmarks/qat.py [--templates fasterrcnn_mobilenet_v3_large_320_fpn ssdlite320_mobilenet_v3_large]
       [--epochs 3 10] [--preset mixed|performance] [--qat-epochs 5] [--output /tmp/otxlite-qat]
       [--data DATA_YAML] [--subset-size N] [-- TRAIN PARAMS]

--data trains on another data.yaml (default: BCCD's train/val/test); instance-segmentation templates add mask
mAP columns (e.g. on benchmarks/ellipse_masks.py's BCCD copy). Words after `--` are passed to train's params
(e.g. `-- --model.kwargs.min_size 320`); --subset-size sets both methods' calibration images.

--epochs gives each template's training epochs (one number for all, or one per template). A run folder that
already holds weights.pth is reused. Prints mAP@0.5, mAP@[.5:.95], F1 and OpenVINO CPU latency (median of 20
runs on one image, from performance.json) and the minutes each step took. Run it alone: latencies are only true
when nothing else runs.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd" / "BCCD"


def write_bccd_yaml(path):
    """Write a data.yaml of BCCD's own train/val/test split (Pascal VOC ImageSets) to path; returns path."""
    path.write_text("data:\n" + "".join(f"  {s}: {{ann-files: {BCCD}, data-roots: {BCCD / 'JPEGImages'}}}\n"
                                        for s in ("train", "val", "test")))
    return path


def otxlite(*args):
    """Run the otxlite command; exit on failure with its output. Returns the minutes it took."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "otxlite", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"otxlite {' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return (time.perf_counter() - started) / 60


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", nargs="+",
                        default=["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"])
    parser.add_argument("--epochs", nargs="+", type=int, default=[3, 10])
    parser.add_argument("--preset", default="mixed", choices=["mixed", "performance"])
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-qat"))
    parser.add_argument("--data", type=Path)
    parser.add_argument("--subset-size", type=int)
    parser.add_argument("train_params", nargs="*", help="after --: more train params")
    args = parser.parse_args()
    epochs = args.epochs * len(args.templates) if len(args.epochs) == 1 else args.epochs
    args.output.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve() if args.data else write_bccd_yaml(args.output / "bccd.yaml")
    calibration = ["--subset-size", args.subset_size] if args.subset_size else []
    rows, compared = [], []
    for template, count in zip(args.templates, epochs):
        run = args.output / template
        weights = run / "train" / "weights.pth"
        train_minutes = 0.0
        if not weights.is_file():
            train_minutes = otxlite("train", template, "--data", data, "--output", run / "train", "--no-pretrained",
                                    "params", "--learning_parameters.num_iters", count,
                                    "--learning_parameters.enable_early_stopping", "false", *args.train_params)
        ptq_minutes = otxlite("optimize", "--load-weights", weights, "--method", "ptq", "--data", data, "--output",
                              run / "ptq", "--preset", args.preset, *calibration)
        qat_minutes = otxlite("optimize", "--load-weights", weights, "--data", data, "--output", run / "qat",
                              "--preset", args.preset, *calibration, "params", "--qat.epochs", args.qat_epochs)
        ptq = json.loads((run / "ptq" / "performance.json").read_text())
        qat = json.loads((run / "qat" / "performance.json").read_text())
        qat_settings = json.loads((run / "qat" / "config.json").read_text())["quantization"]
        for name, figures, minutes in (("FP32", ptq["comparison"]["fp32"], train_minutes),
                                       ("PTQ INT8", ptq["comparison"]["int8"], ptq_minutes),
                                       ("QAT INT8", qat["comparison"]["int8"], qat_minutes)):
            compared.append(figures)
            masks = [figures[key] for key in ("segm_map_50", "segm_map_50_95") if key in figures]
            rows.append((template, name, *masks, figures["map_50"], figures["map_50_95"], figures["f-measure"],
                         figures["latency_ms"], minutes))
        print(f"{template}: QAT stopped after {qat_settings['epochs']} epoch(s), kept epoch "
              f"{qat_settings['best_epoch']}, val drop {qat_settings['val_drop']:.4f} (FP32 val "
              f"{qat_settings['val_fp32']:.4f})", flush=True)
    print(f"\nTest split of {data}, {args.preset} preset; minutes: training for FP32 (0 when reused), the optimize "
          f"command for INT8\n")
    masks = ["mask mAP@0.5", "mask mAP@[.5:.95]", "box mAP@0.5", "box mAP@[.5:.95]"]
    with_masks = any("segm_map_50" in figures for figures in compared)
    columns = ["template", "model", *(masks if with_masks else masks[2:]), "F1",
               "latency ms", "minutes"]
    print("| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns))
    for template, name, *numbers, latency, minutes in rows:
        figures = ["-"] * (len(columns) - 4 - len(numbers)) + [f"{number:.3f}" for number in numbers]
        print(f"| {template} | {name} | {' | '.join(figures)} | {latency:.1f} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
