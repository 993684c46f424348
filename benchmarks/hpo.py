"""Does tuning pay? `otxlite tune` plus a training with its best values against the template's defaults, on the
same budget of epochs (docs/benchmarks.md has the figures).

Usage: python benchmarks/hpo.py [--template ssdlite320_mobilenet_v3_large] [--trials 6] [--epochs 3]
                                [--pruner median|asha|none] [--final-epochs 18] [--data DATA_YAML]
                                [--val-split SHARE] [--engine local|ray] [--output DIR]

On BCCD by default (its train and val splits for the search, test for the figures), from random weights, what a
user would run, `otxlite tune` and then `otxlite train --params-file best_params.yaml`, against the defaults:
- search: `otxlite tune` with TRIALS trials of up to EPOCHS epochs each (PRUNER stops poor ones); its best
  trial's weights.pth is a row of its own;
- tuned: the best trial's values (best_params.yaml) trained for FINAL_EPOCHS epochs (no row with 0); its minutes
  and epochs include the search's;
- defaults: the template's values trained for as many epochs as the search and the tuned training trained in all
  (its early stopping may end it sooner).
Printed for each: epochs trained, wall minutes, the val mAP@0.5 of the epoch kept and test mAP@0.5 from
`otxlite eval`'s code. Run nothing else meanwhile: the minutes are the comparison.
"""

import argparse
import csv
import time
from pathlib import Path

from otxlite.core.files import load_checkpoint
from otxlite.core.ray_cluster import ray_switch
from otxlite.core.report import format_table
from otxlite.data.specs import read_data_yaml
from otxlite.engine.evaluate import evaluate
from otxlite.engine.train import train
from otxlite.engine.tune import tune
from otxlite.models.templates import read_params_file, resolve_template

BCCD = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "bccd" / "BCCD"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3, help="most epochs of a trial")
    parser.add_argument("--pruner", default="median", help="median, asha or none")
    parser.add_argument("--final-epochs", type=int, default=18, help="epochs of the best values' training (0: none)")
    parser.add_argument("--data", type=Path, help="a data.yaml with train, val and test (default: BCCD)")
    parser.add_argument("--val-split", type=float, help="hold out this share of train as val (data without val)")
    parser.add_argument("--engine", default="local")
    parser.add_argument("--output", type=Path, default=Path("/tmp/otxlite-hpo"))
    args = parser.parse_args()
    if args.data is None:
        args.data = args.output / "bccd.yaml"
        args.output.mkdir(parents=True, exist_ok=True)
        args.data.write_text("data:\n" + "".join(f"  {s}: {{ann-files: {BCCD}, data-roots: {BCCD / 'JPEGImages'}}}\n"
                                                 for s in ("train", "val", "test")))
    specs = read_data_yaml(args.data)
    template = resolve_template(args.template)
    rows = []

    started = time.perf_counter()
    search = args.output / "search"
    weights = tune(template, specs, search, {"learning_parameters.num_iters": str(args.epochs)},
                   trials=args.trials, pruner=args.pruner, ray=ray_switch(args.engine, "tune"), pretrained=False,
                   val_split=args.val_split)
    with open(search / "trials.csv") as file:
        epochs = sum(int(row["epochs"] or 0) for row in csv.DictReader(file))
    rows.append(figures("search's best trial", weights, specs, epochs, started))

    if args.final_epochs:
        best = {**read_params_file(search / "best_params.yaml"),
                "learning_parameters.num_iters": str(args.final_epochs)}
        weights = train(template, specs, args.output / "tuned", best, pretrained=False, val_split=args.val_split)
        epochs += trained_epochs(args.output / "tuned")
        rows.append(figures("tuned: best values retrained", weights, specs, epochs, started))

    started = time.perf_counter()
    weights = train(template, specs, args.output / "defaults", {"learning_parameters.num_iters": str(epochs)},
                    pretrained=False, val_split=args.val_split)
    rows.append(figures("defaults", weights, specs, trained_epochs(args.output / "defaults"), started))
    print(format_table(("run", "epochs trained", "minutes", "val mAP@0.5 (epoch kept)", "test mAP@0.5", "values"), rows))


def trained_epochs(output):
    """Epochs a train run in output trained (its early stopping may end it before num_iters)."""
    return len(load_checkpoint(output / "checkpoints" / "last.pth")["history"])


def figures(name, weights, specs, epochs, started):
    minutes = (time.perf_counter() - started) / 60
    checkpoint = load_checkpoint(weights)
    test = evaluate(weights, {"test": specs["test"]})
    learning = checkpoint["template"]["hyper_parameters"]["learning_parameters"]
    values = ", ".join(f"{key} {learning[key]:.3g}" for key in ("learning_rate", "weight_decay", "batch_size", "warmup_iters"))
    row = (name, str(epochs), f"{minutes:.1f}", f"{checkpoint['metrics']['map_50']:.3f} (epoch {checkpoint['epoch']})",
           f"{test['map_50']:.3f}", values)
    print(row, flush=True)
    return row


if __name__ == "__main__":
    main()
